"""The device transfer backends (cuda_ipc, nccl).

The pure parts (the device checksum, segment places, malformed peer input) run everywhere.
The `gpu` tests move real bytes between two real processes on one GPU (spawned: CUDA cannot be
forked) and are skipped without CUDA; the NCCL ones also need CuPy. Two NCCL ranks on one GPU
are refused by NCCL's duplicate-GPU check unless each process gets its own NCCL_HOSTID, which
makes them look like two hosts talking over sockets on loopback: the cross-node path.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from engine.transfer.base import (
    ExpectedTensor,
    TransferDescriptor,
    TransferError,
    TransferReceiver,
)
from engine.transfer.cuda_ipc_checksum import device_checksum
from engine.transfer.cuda_ipc_handles import open_pools
from engine.transfer.cuda_ipc_segments import (
    SegmentPlace,
    device_segments,
    place_in_pools,
    view_in_pool,
)
from engine.transfer.framing import Deadline
from engine.transfer.nccl_peers import parse_identity
from engine.transfer.select import make_receiver, make_sender

TOKENS, PAGE, DIM, LAYERS, H, D = 37, 16, 576, 2, 4, 16
DEADLINE_S = 60.0
SPAWN = mp.get_context("spawn")
NCCL_ENV = {"NCCL_SOCKET_IFNAME": "lo", "NCCL_IB_DISABLE": "1"}


def reference_checksum(t: torch.Tensor) -> str:
    """pos64 straight from its definition, in Python integers."""
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    words = np.frombuffer(raw + bytes(-len(raw) % 4), dtype="<i4").tolist()
    s1 = sum(words) % 2**64
    s2 = sum((k + 1) * w for k, w in enumerate(words)) % 2**64
    return f"pos64:{s1:016x}{s2:016x}"


@pytest.mark.parametrize("nbytes", [0, 1, 3, 4 * 4096 - 1, 4 * 4096, 4 * 4096 * 3 + 5])
def test_device_checksum_matches_its_definition(nbytes: int) -> None:
    gen = torch.Generator().manual_seed(nbytes)
    t = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen)
    assert device_checksum(t) == reference_checksum(t)


def test_device_checksum_of_views_dtypes_and_extremes() -> None:
    gen = torch.Generator().manual_seed(0)
    latent = torch.randn(TOKENS, DIM, generator=gen).bfloat16()
    for view in (latent, latent[:, 1:], latent.t(), latent[3], torch.tensor(2.5)):
        assert device_checksum(view) == reference_checksum(view)
    for extreme in (2**31 - 1, -(2**31)):  # row sums must not overflow
        t = torch.full((4096 * 5,), extreme, dtype=torch.int32)
        assert device_checksum(t) == reference_checksum(t)


def test_device_checksum_sees_one_flipped_byte_and_swapped_pages() -> None:
    state = torch.randn(H, D, D, generator=torch.Generator().manual_seed(1))
    base = device_checksum(state)
    for index in (0, 1, 777, state.numel() * 4 - 1):
        flipped = state.clone()
        flipped.view(-1).view(torch.uint8)[index] ^= 0xFF
        assert device_checksum(flipped) != base, index
    assert device_checksum(state[[1, 0, 2, 3]]) != base


def test_segment_places_round_trip_and_land_in_the_pool() -> None:
    pool = torch.zeros(LAYERS, 8, PAGE, DIM, dtype=torch.bfloat16)
    seg = pool[1, 5, :7]
    place = place_in_pools(seg, [12345, pool.untyped_storage().data_ptr()])
    assert place is not None and place.pool == 1
    assert SegmentPlace.from_dict(place.to_dict()) == place
    assert place_in_pools(torch.zeros(3), [pool.untyped_storage().data_ptr()]) is None
    view_in_pool(pool.untyped_storage(), place, torch.bfloat16).fill_(3.0)
    assert bool((pool[1, 5, :7] == 3.0).all()) and int(pool.count_nonzero()) == 7 * DIM


def test_segment_places_from_a_peer_are_checked() -> None:
    fixed = torch.frombuffer(bytearray(64), dtype=torch.uint8).untyped_storage()  # not resizable
    with pytest.raises(TransferError, match="does not fit"):
        view_in_pool(fixed, SegmentPlace(0, 10, (10,), (1,)), torch.float32)
    good = {"pool": 0, "offset": 0, "shape": [2], "stride": [1]}
    for bad in ([], {**good, "pool": -1}, {**good, "offset": True}, {**good, "stride": []}):
        with pytest.raises(TransferError, match="malformed segment place"):
            SegmentPlace.from_dict(bad)


def test_device_segments_enforce_shape_dtype_and_device() -> None:
    exp = ExpectedTensor("latent.0", (TOKENS, DIM), torch.bfloat16)
    rows = [torch.zeros(16, DIM, dtype=torch.bfloat16) for _ in range(2)]
    cpu = torch.device("cpu")
    tail = torch.zeros(TOKENS - 32, DIM, dtype=torch.bfloat16)
    assert len(device_segments([*rows, tail], exp, cpu)) == 3
    with pytest.raises(TransferError, match="segments hold 32 rows"):
        device_segments(rows, exp, cpu)
    with pytest.raises(TransferError, match=r"expected torch\.bfloat16 on meta"):
        device_segments([*rows, tail], exp, torch.device("meta"))
    with pytest.raises(TransferError, match="shape"):
        device_segments(torch.zeros(TOKENS, DIM + 1, dtype=torch.bfloat16), exp, cpu)


def test_malformed_peer_input_is_refused() -> None:
    with pytest.raises(TransferError, match="malformed cuda_ipc export"):
        open_pools({"device_uuid": "GPU-x", "pools": "not a list"})
    if not torch.cuda.is_available():
        with pytest.raises(TransferError, match="not visible to this process"):
            open_pools({"device_uuid": "GPU-x", "pools": []})
    with pytest.raises(TransferError, match="malformed nccl peer identity"):
        parse_identity({"host": "h"})


# -- real transfers between two processes on one GPU ----------------------------------------


def expected_tensors() -> list[ExpectedTensor]:
    latent = [ExpectedTensor(f"latent.{i}", (TOKENS, DIM), torch.bfloat16) for i in range(LAYERS)]
    state = [ExpectedTensor(f"state.{i}", (H, D, D), torch.float32) for i in range(LAYERS)]
    return [*latent, *state, ExpectedTensor("hidden", (64,), torch.bfloat16)]


def payload(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {e.name: torch.randn(e.shape, generator=gen).to(e.dtype) for e in expected_tensors()}


class GpuDecodeSide:
    """Decode-side pools on the GPU: latents land in scattered pages (segments), states in a
    slot of the state pool, `hidden` in a tensor outside both pools (cuda_ipc grants it inline)."""

    def __init__(self) -> None:
        self.latent_pool = torch.zeros(LAYERS, 8, PAGE, DIM, dtype=torch.bfloat16, device="cuda")
        self.state_pool = torch.zeros(4, LAYERS, H, D, D, device="cuda")
        self.hidden = torch.zeros(64, dtype=torch.bfloat16, device="cuda")
        self.pages, self.slot = [5, 2, 7], 3
        self.expired: list[str] = []

    def pools(self) -> list[torch.Tensor]:
        return [self.latent_pool, self.state_pool]

    def destination(self, request_id: str, name: str) -> torch.Tensor | list[torch.Tensor]:
        if name == "hidden":
            return self.hidden
        kind, layer = name.split(".")
        if kind == "state":
            return self.state_pool[self.slot, int(layer)]
        rows = [self.latent_pool[int(layer), p] for p in self.pages]
        return [*rows[:-1], rows[-1][: TOKENS - PAGE * (len(rows) - 1)]]

    def assert_holds(self, src: dict[str, torch.Tensor]) -> None:
        for name in src:
            dest = self.destination("", name)
            got = torch.cat(dest) if isinstance(dest, list) else dest
            assert torch.equal(got.cpu().view(torch.uint8), src[name].view(torch.uint8)), name


def _sender_process(backend: str, env: dict[str, str], jobs: mp.Queue, results: mp.Queue) -> None:
    os.environ.update(env)
    torch.cuda.set_device(0)
    while (job := jobs.get(timeout=600)) is not None:
        desc = TransferDescriptor.from_dict(job["descriptor"])
        tx = make_sender(backend, corrupt_tensor=job["corrupt"])
        try:
            tx.open(desc, DEADLINE_S)
            for name, t in payload(job["seed"]).items():
                tx.send(name, t.cuda())
            tx.commit(tx.manifest(first_token=job["seed"]))
            outcome = ("ok", "")
        except Exception as e:
            tx.abort()
            outcome = (type(e).__name__, str(e))
        finally:
            tx.close()
        results.put((*outcome, _communicators_built(backend)))


def _communicators_built(backend: str) -> int:
    if backend != "nccl":
        return 0
    from engine.transfer.nccl_peers import SENDER_LINKS

    return SENDER_LINKS.built


class SenderProcess:
    """A prefill-side process that runs one transfer per call, keeping its state in between."""

    def __init__(self, backend: str, env: dict[str, str] | None = None) -> None:
        self.jobs, self.results = SPAWN.Queue(), SPAWN.Queue()
        self.proc = SPAWN.Process(
            target=_sender_process, args=(backend, env or {}, self.jobs, self.results)
        )
        self.proc.start()

    def transfer(
        self, desc: TransferDescriptor, seed: int, corrupt: str | None = None
    ) -> tuple[str, str, int]:
        self.jobs.put({"descriptor": desc.to_dict(), "seed": seed, "corrupt": corrupt})
        return self.results.get(timeout=300)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            self.jobs.put(None)
        self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def run_transfer(
    rx: TransferReceiver, sender: SenderProcess, rid: str, seed: int, corrupt: str | None = None
) -> tuple[str, str, int]:
    """(sender outcome, receiver outcome, sender's communicators built)."""
    outcome, message, built = sender.transfer(
        rx.reserve(rid, expected_tensors(), DEADLINE_S), seed, corrupt
    )
    try:
        manifest = rx.wait_committed(rid, DEADLINE_S)
        assert manifest.first_token == seed
        received = "ok"
    except TransferError as e:
        received = f"{type(e).__name__}: {e}"
    assert rx.pending() == 0
    return (outcome if outcome == "ok" else f"{outcome}: {message}"), received, built


@pytest.fixture(scope="module")
def ipc_sender() -> Iterator[SenderProcess]:
    sender = SenderProcess("cuda_ipc")
    yield sender
    sender.stop()


@pytest.mark.gpu
def test_cuda_ipc_two_processes_exact_bytes_and_corruption(ipc_sender: SenderProcess) -> None:
    side = GpuDecodeSide()
    with make_receiver("cuda_ipc", side.destination, side.expired.append, pools=side.pools()) as rx:
        for seed in (1, 2):  # the second transfer reuses the mapped pools
            assert run_transfer(rx, ipc_sender, f"r{seed}", seed)[:2] == ("ok", "ok")
            side.assert_holds(payload(seed))
        for name in ("latent.1", "state.0", "hidden"):  # paged, single, inline
            sent, received, _ = run_transfer(rx, ipc_sender, f"bad-{name}", 3, corrupt=name)
            assert sent.startswith("ChecksumMismatch") and name in sent, sent
            assert received.startswith("ChecksumMismatch") and name in received, received
        assert rx.pending() == 0 and side.expired == []


@pytest.mark.gpu
def test_cuda_ipc_sender_reopens_after_the_receiver_restarts(ipc_sender: SenderProcess) -> None:
    old = GpuDecodeSide()
    rx = make_receiver("cuda_ipc", old.destination, old.expired.append, pools=old.pools())
    assert run_transfer(rx, ipc_sender, "before", 4)[:2] == ("ok", "ok")
    port = rx.port  # type: ignore[attr-defined]
    rx.close()
    new = GpuDecodeSide()  # new pools behind the same address: stale handles would miss them
    with make_receiver(
        "cuda_ipc", new.destination, new.expired.append, pools=new.pools(), port=port
    ) as rx:
        assert run_transfer(rx, ipc_sender, "after", 5)[:2] == ("ok", "ok")
    new.assert_holds(payload(5))
    old.assert_holds(payload(4))


@pytest.fixture
def nccl_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """NCCL settings (set before this process's first NCCL init, which caches them): this
    process poses as the decode host; the returned environment makes a sender another host."""
    pytest.importorskip("cupy")
    for key, value in {**NCCL_ENV, "NCCL_HOSTID": "duet-test-decode"}.items():
        monkeypatch.setenv(key, value)
    return {**NCCL_ENV, "NCCL_HOSTID": "duet-test-prefill"}


@pytest.mark.gpu
def test_nccl_self_send_recv_round_trip(nccl_env: dict[str, str]) -> None:
    from engine.transfer.nccl_comm import Communicator, new_unique_id

    comm = Communicator.create(1, new_unique_id(), 0, torch.device("cuda", 0), timeout_s=60)
    src = torch.randn(1000, 3, device="cuda").bfloat16()
    dst = torch.zeros_like(src)
    comm.send_recv(src, dst, peer=0)
    comm.wait(Deadline(30), "self send/recv")
    assert torch.equal(src.view(torch.uint8), dst.view(torch.uint8))
    comm.abort()


@pytest.mark.gpu
def test_nccl_two_processes_reuse_rebuild_and_detect_corruption(nccl_env: dict[str, str]) -> None:
    side = GpuDecodeSide()
    rx = make_receiver("nccl", side.destination, side.expired.append, device=0)
    first = SenderProcess("nccl", nccl_env)
    second = None
    try:
        assert run_transfer(rx, first, "r1", 1) == ("ok", "ok", 1)
        side.assert_holds(payload(1))
        assert run_transfer(rx, first, "r2", 2) == ("ok", "ok", 1)  # the communicator is reused
        sent, received, _ = run_transfer(rx, first, "r3", 3, corrupt="latent.0")
        assert "ChecksumMismatch" in sent and "ChecksumMismatch" in received
        assert rx.communicators_built() == 1  # type: ignore[attr-defined]
        first.stop(kill=True)  # the prefill worker dies; a new one starts
        second = SenderProcess("nccl", nccl_env)
        assert run_transfer(rx, second, "r4", 4) == ("ok", "ok", 1)
        assert (rx.communicators_built(), rx.communicators()) == (2, 1)  # type: ignore[attr-defined]
        port = rx.port  # type: ignore[attr-defined]
        rx.close()  # the decode worker restarts on the same address
        rx = make_receiver("nccl", side.destination, side.expired.append, device=0, port=port)
        assert run_transfer(rx, second, "r5", 5) == ("ok", "ok", 2)
        side.assert_holds(payload(5))
    finally:
        first.stop(kill=True)
        if second is not None:
            second.stop()
        rx.close()
