"""The backend-agnostic transfer interface: a receiver (decode side) and a sender (prefill side).

A request's caches move once, from one sender to one receiver:
  receiver.reserve(request_id, expected, deadline_s) -> TransferDescriptor   (decode side)
  sender.open(descriptor, deadline_s); sender.send(name, tensor) per layer;
  sender.commit(sender.manifest(first_token))                               (prefill side)
  receiver.wait_committed(request_id, timeout) -> Manifest                   (decode side)

Invariants every backend keeps:
- Bytes land only in the destinations the receiver's owner hands out, and only while the
  reservation is pending: once abort() returns, or on_expired fires, nothing writes there again.
- A reservation is reported committed only if the token and lease epoch match and every
  expected tensor arrived exactly once with its shape, dtype and checksum as the manifest says.
- Every blocking call is bounded by a deadline or timeout; nothing waits forever.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.transfer.manifest import Manifest, dtype_from_name, dtype_name


class TransferError(RuntimeError):
    """A transfer failed; nothing from it may be used."""


class TransferAborted(TransferError):
    """One side aborted the transfer (or the receiver shut down)."""


class ChecksumMismatch(TransferError):
    """The bytes received do not match the manifest's checksum."""


class StaleEpoch(TransferError):
    """A lease epoch that is no longer current: a late or duplicate commit or connection."""


class TokenRejected(TransferError):
    """The one-time token is wrong or was already used."""


class LeaseExpired(TransferError):
    """The reservation's lease ran out before a valid commit."""


class DeadlineExceeded(TransferError, TimeoutError):
    """A call ran past its deadline."""


_ERRORS_BY_KIND: dict[str, type[TransferError]] = {
    cls.__name__: cls
    for cls in (
        TransferError,
        TransferAborted,
        ChecksumMismatch,
        StaleEpoch,
        TokenRejected,
        LeaseExpired,
        DeadlineExceeded,
    )
}


def error_kind(error: TransferError) -> str:
    """The wire name of an error, for a peer to raise the same class."""
    return type(error).__name__ if type(error).__name__ in _ERRORS_BY_KIND else "TransferError"


def error_from_kind(kind: str, message: str) -> TransferError:
    return _ERRORS_BY_KIND.get(kind, TransferError)(message)


@dataclass(frozen=True)
class ExpectedTensor:
    """One tensor the receiver waits for: a layer's latents or its final state."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class TransferDescriptor:
    """Everything a sender needs to reach one reservation; plain values, so it can cross gRPC."""

    backend: str
    host: str
    port: int
    request_id: str
    lease_epoch: int
    token: str

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    @staticmethod
    def from_dict(d: dict[str, object]) -> TransferDescriptor:
        return TransferDescriptor(
            backend=str(d["backend"]),
            host=str(d["host"]),
            port=int(d["port"]),  # type: ignore[call-overload]
            request_id=str(d["request_id"]),
            lease_epoch=int(d["lease_epoch"]),  # type: ignore[call-overload]
            token=str(d["token"]),
        )


def expected_to_dict(e: ExpectedTensor) -> dict[str, object]:
    return {"name": e.name, "shape": list(e.shape), "dtype": dtype_name(e.dtype)}


def expected_from_dict(d: dict[str, object]) -> ExpectedTensor:
    shape = d["shape"]
    if not isinstance(shape, list) or not all(isinstance(x, int) and x >= 0 for x in shape):
        raise ValueError(f"bad shape {shape!r}")
    return ExpectedTensor(str(d["name"]), tuple(shape), dtype_from_name(str(d["dtype"])))


# destination(request_id, tensor_name) -> where the tensor's values go: one writable CPU tensor
# of exactly the expected shape and dtype (any strides), or a sequence of such tensors that
# split the expected tensor along dim 0 in order (e.g. the rows of each page of a paged pool).
Destination = torch.Tensor | Sequence[torch.Tensor]
DestinationFn = Callable[[str, str], Destination]
ExpiredFn = Callable[[str], None]


class TransferReceiver(ABC):
    """Decode side. Constructed with `destination` and `on_expired` callbacks."""

    @abstractmethod
    def reserve(
        self, request_id: str, expected: Sequence[ExpectedTensor], deadline_s: float
    ) -> TransferDescriptor:
        """Open a lease of `deadline_s` seconds for one request's tensors."""

    @abstractmethod
    def wait_committed(self, request_id: str, timeout: float) -> Manifest:
        """The verified manifest once committed (the reservation is then released), or the
        transfer's error: TransferAborted, ChecksumMismatch, StaleEpoch, LeaseExpired, ...
        DeadlineExceeded if `timeout` passes first (the reservation stays)."""

    @abstractmethod
    def abort(self, request_id: str) -> None:
        """Drop the reservation; when this returns nothing writes to its destinations."""

    @abstractmethod
    def pending(self) -> int:
        """Reservations still held (pending, or finished but not yet collected)."""

    @abstractmethod
    def close(self) -> None:
        """Abort everything, stop all threads and close all sockets."""


class TransferSender(ABC):
    """Prefill side, one per request transfer."""

    @abstractmethod
    def open(self, descriptor: TransferDescriptor, deadline_s: float) -> None:
        """Connect and present the token; every later call is bounded by this deadline."""

    @abstractmethod
    def send(self, name: str, tensor: torch.Tensor) -> None:
        """Send one tensor (call it as soon as a layer is done)."""

    @abstractmethod
    def manifest(self, first_token: int) -> Manifest:
        """The manifest of everything sent so far."""

    @abstractmethod
    def commit(self, manifest: Manifest) -> None:
        """Ask the receiver to verify and commit; raises the receiver's error if it refuses."""

    @abstractmethod
    def abort(self) -> None:
        """Tell the receiver (best effort) and close; safe to call at any time, twice."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (after commit, or to give up silently)."""

    def __enter__(self) -> TransferSender:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """Close after success; abort (telling the receiver) when the block raised."""
        if exc_type is None:
            self.close()
        else:
            self.abort()
