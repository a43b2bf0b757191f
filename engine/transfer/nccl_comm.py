"""A small, bounded wrapper over CuPy's NCCL bindings (`cupy.cuda.nccl`) for the nccl backend.

CuPy is imported only when the backend is used, and a missing CuPy is a BackendUnavailable
naming the package to install. Nothing here waits on NCCL without a deadline:
- ncclCommInitRank (blocking in CuPy) runs on a helper thread that the caller waits for with a
  timeout; an init whose peer never arrives is abandoned, and aborted if it ever returns.
- send/recv are enqueued on the communicator's own stream and completion is polled with a
  deadline while watching ncclCommGetAsyncError; on a timeout or an async error the
  communicator is aborted (ncclCommAbort, which makes its kernels exit) and marked broken, so
  the owner drops it and builds a new one: a peer that restarted can never freeze us.
Bytes move as NCCL_UINT8, so every dtype (bf16, fp8, ...) is carried bit for bit.
"""

from __future__ import annotations

import logging
import threading
import time
from types import ModuleType

import torch

from engine.transfer.base import DeadlineExceeded, TransferError
from engine.transfer.framing import Deadline
from engine.transfer.select import BackendUnavailable

log = logging.getLogger(__name__)
CUPY_PACKAGE = "cupy-cuda12x"
UNIQUE_ID_BYTES = 128
_ABORT_WAIT_S = 5.0
_DRAIN_AFTER_ABORT_S = 2.0


def load_nccl() -> ModuleType:
    """`cupy.cuda.nccl`, or BackendUnavailable saying what is missing."""
    try:
        from cupy.cuda import nccl
    except Exception as e:  # ImportError, or CuPy failing to find the CUDA driver
        raise BackendUnavailable(
            f"the nccl transfer backend needs CuPy's NCCL bindings (cupy.cuda.nccl): install "
            f"{CUPY_PACKAGE} (`pip install duet[gpu]`, or the cupy-cudaXXx wheel matching your "
            f"CUDA major version); importing it failed: {e!r}"
        ) from e
    if not getattr(nccl, "available", False):
        raise BackendUnavailable(
            "CuPy is installed but cannot load the NCCL library (libnccl.so.2); install NCCL "
            "(e.g. the nvidia-nccl-cu12 wheel) next to CuPy"
        )
    return nccl


def new_unique_id() -> bytes:
    """A fresh ncclUniqueId (it names a bootstrap listener in this process)."""
    raw = load_nccl().get_unique_id()
    return bytes(b & 0xFF for b in raw)


def _comm_id(uid: bytes) -> tuple[int, ...]:
    """CuPy's form of a unique id: 128 C chars as signed ints."""
    if len(uid) != UNIQUE_ID_BYTES:
        raise TransferError(f"an NCCL unique id has {UNIQUE_ID_BYTES} bytes, got {len(uid)}")
    return tuple(b - 256 if b > 127 else b for b in uid)


class Communicator:
    """This process's rank in one NCCL communicator on one device. Not thread-safe: hold `lock`
    around a matched sequence of operations (a peer must see them in the same order)."""

    def __init__(self, comm: object, device: torch.device, rank: int, nranks: int) -> None:
        self._comm = comm
        self.device, self.rank, self.nranks = device, rank, nranks
        self.lock = threading.Lock()
        self.stream = torch.cuda.Stream(device)
        self.broken = False
        self._kept: list[torch.Tensor] = []  # buffers an aborted operation may still touch

    @staticmethod
    def create(
        nranks: int,
        uid: bytes,
        rank: int,
        device: torch.device,
        timeout_s: float,
        connect: tuple[str, int] | None = None,
    ) -> Communicator:
        """Join communicator `uid` as `rank`; with `connect` = ("send" | "recv", peer), also open
        that direction to the peer with a 1-byte exchange. NCCL connects peers lazily, and its
        first operation blocks in the host until the peer takes part; doing it here keeps that
        wait under the same timeout. Every rank must take part within `timeout_s`."""
        comm = _join_bounded(load_nccl(), _comm_id(uid), nranks, rank, device, timeout_s, connect)
        return Communicator(comm, device, rank, nranks)

    def send(self, tensor: torch.Tensor, peer: int) -> None:
        self._post("send", tensor, peer)

    def recv(self, tensor: torch.Tensor, peer: int) -> None:
        self._post("recv", tensor, peer)

    def send_recv(self, src: torch.Tensor, dst: torch.Tensor, peer: int) -> None:
        """A send and a receive as one NCCL group (e.g. to oneself on a single-rank comm)."""
        nccl = load_nccl()
        nccl.groupStart()
        try:
            self._post("send", src, peer)
            self._post("recv", dst, peer)
        finally:
            nccl.groupEnd()

    def _post(self, op: str, tensor: torch.Tensor, peer: int) -> None:
        if self.broken:
            raise TransferError("the NCCL communicator was aborted")
        if tensor.device != self.device or not tensor.is_contiguous():
            raise TransferError(f"NCCL {op} needs a contiguous tensor on {self.device}")
        nbytes = tensor.numel() * tensor.element_size()
        try:
            with torch.cuda.device(self.device):
                getattr(self._comm, op)(
                    tensor.data_ptr(), nbytes, load_nccl().NCCL_UINT8, peer, self.stream.cuda_stream
                )
        except Exception as e:  # cupy's NcclError
            self.abort()
            raise TransferError(f"NCCL {op} of {nbytes} B to rank {peer} failed: {e}") from e

    def wait(self, deadline: Deadline, what: str, buffers: tuple[torch.Tensor, ...] = ()) -> None:
        """Return once the operations posted so far are done. On a timeout or an NCCL async
        error, abort the communicator (it is broken from then on) and raise; `buffers` are then
        kept alive in case a cancelled kernel still touches them."""
        event = torch.cuda.Event()
        event.record(self.stream)
        pause = 20e-6
        while not event.query():
            failure = self._async_error()
            if failure is None and deadline.expired():
                failure = DeadlineExceeded(f"{what}: NCCL did not finish before the deadline")
            if failure is not None:
                self.abort()
                self._drain(event, buffers)
                raise failure
            time.sleep(pause)
            pause = min(pause * 2, 2e-3)
        if self.broken:  # aborted from another thread: its kernels exited without finishing
            raise TransferError(f"{what}: the NCCL communicator was aborted")

    def _async_error(self) -> TransferError | None:
        try:
            self._comm.check_async_error()  # type: ignore[attr-defined]
        except Exception as e:
            return TransferError(f"NCCL reported an error (the peer may be gone): {e}")
        return None

    def _drain(self, event: torch.cuda.Event, buffers: tuple[torch.Tensor, ...]) -> None:
        deadline = Deadline(_DRAIN_AFTER_ABORT_S)
        while not event.query() and not deadline.expired():
            time.sleep(1e-3)
        if not event.query():
            log.error("an aborted NCCL operation is still running; keeping its buffers")
            self._kept.extend(buffers)

    def abort(self) -> None:
        """Abort the communicator (bounded; idempotent). It cannot be used again."""
        if self.broken:
            return
        self.broken = True
        _abort_bounded(self._comm)


def _join_bounded(
    nccl: ModuleType,
    comm_id: tuple[int, ...],
    nranks: int,
    rank: int,
    device: torch.device,
    timeout_s: float,
    connect: tuple[str, int] | None,
) -> object:
    """ncclCommInitRank (+ the first exchange) on a helper thread, waited for `timeout_s`. A
    communicator that is not ready by then is aborted (which also ends a stuck exchange); an
    init still waiting for its peer inside NCCL is abandoned, and aborted if it ever returns."""
    lock, state = threading.Lock(), {}

    def join() -> None:
        try:
            torch.cuda.set_device(device)
            comm = nccl.NcclCommunicator(nranks, comm_id, rank)
            with lock:
                state["comm"], late = comm, "gave_up" in state
            if late:
                _abort_quietly(comm)
                return
            if connect is not None:
                _first_exchange(nccl, comm, device, *connect)
            state["ready"] = True
        except Exception as e:
            state["error"] = e

    thread = threading.Thread(target=join, name="duet-nccl-init", daemon=True)
    thread.start()
    thread.join(timeout_s)
    with lock:
        state["gave_up"] = True
        comm = state.get("comm")
    if state.get("ready"):
        return comm
    if comm is not None:
        _abort_bounded(comm)
    if "error" in state:
        raise TransferError(f"NCCL communicator init (rank {rank}) failed: {state['error']}")
    log.warning("NCCL init (rank %d): no peer after %.1fs; abandoned", rank, timeout_s)
    raise DeadlineExceeded(f"NCCL communicator init: the peer did not join within {timeout_s}s")


def _first_exchange(
    nccl: ModuleType, comm: object, device: torch.device, op: str, peer: int
) -> None:
    byte = torch.zeros(1, dtype=torch.uint8, device=device)
    stream = torch.cuda.Stream(device)
    getattr(comm, op)(byte.data_ptr(), 1, nccl.NCCL_UINT8, peer, stream.cuda_stream)
    stream.synchronize()  # on the helper thread: the caller's wait is bounded


def _abort_bounded(comm: object) -> None:
    thread = threading.Thread(
        target=_abort_quietly, args=(comm,), name="duet-nccl-abort", daemon=True
    )
    thread.start()
    thread.join(_ABORT_WAIT_S)
    if thread.is_alive():
        log.warning("ncclCommAbort did not return within %.1fs", _ABORT_WAIT_S)


def _abort_quietly(comm: object) -> None:
    try:
        comm.abort()  # type: ignore[attr-defined]
    except Exception as e:
        log.debug("ncclCommAbort: %r", e)
