"""Destinations on a GPU for the device backends, and where they sit inside exported pools.

A destination (see base.Destination) is one tensor of the expected shape or a list of
segments splitting it along dim 0; for the device backends every segment lives on the
receiver's GPU. For cuda_ipc a segment is described to the sender as a `SegmentPlace`: which
exported pool storage holds it, and its offset, shape and strides in elements of its dtype,
so the sender can build the very same view over its own mapping of that storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.transfer.base import Destination, ExpectedTensor, TransferError


def device_segments(
    dest: Destination, expected: ExpectedTensor, device: torch.device
) -> list[torch.Tensor]:
    """Tensors on `device` that, concatenated along dim 0 in order, have exactly the expected
    shape and dtype; TransferError otherwise (same rules as destinations.as_segments)."""
    segments = [dest] if isinstance(dest, torch.Tensor) else list(dest)
    where = f"destination for {expected.name!r}"
    for seg in segments:
        if not isinstance(seg, torch.Tensor):
            raise TransferError(f"{where}: {type(seg).__name__} is not a tensor")
        if seg.device != device or seg.dtype != expected.dtype:
            raise TransferError(
                f"{where}: {seg.dtype} on {seg.device}, expected {expected.dtype} on {device}"
            )
    if isinstance(dest, torch.Tensor):
        if tuple(dest.shape) != expected.shape:
            raise TransferError(f"{where}: shape {tuple(dest.shape)}, expected {expected.shape}")
        return segments
    if not expected.shape:
        raise TransferError(f"{where}: a 0-d tensor cannot be split into segments")
    tail = expected.shape[1:]
    if any(s.dim() != len(expected.shape) or tuple(s.shape[1:]) != tail for s in segments):
        raise TransferError(f"{where}: every segment must be [rows, *{tail}]")
    rows = sum(s.shape[0] for s in segments)
    if rows != expected.shape[0]:
        raise TransferError(f"{where}: segments hold {rows} rows, expected {expected.shape[0]}")
    return segments


def split_like(src: torch.Tensor, segments: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`src` cut along dim 0 into pieces with the segments' row counts (views, no copies)."""
    if len(segments) == 1:
        return [src]
    return list(src.split([s.shape[0] for s in segments], dim=0))


def gather(segments: Sequence[torch.Tensor]) -> torch.Tensor:
    """The segments' values as one tensor (a copy only when there is more than one)."""
    return segments[0] if len(segments) == 1 else torch.cat(list(segments), dim=0)


@dataclass(frozen=True)
class SegmentPlace:
    """A strided view of one exported pool storage, in elements of the tensor's dtype."""

    pool: int
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "pool": self.pool,
            "offset": self.offset,
            "shape": list(self.shape),
            "stride": list(self.stride),
        }

    @staticmethod
    def from_dict(d: object) -> SegmentPlace:
        """Parse a place sent by a peer; TransferError on anything malformed."""
        bad = TransferError(f"malformed segment place {d!r}")
        if not isinstance(d, dict) or set(d) != {"pool", "offset", "shape", "stride"}:
            raise bad
        pool, offset, shape, stride = d["pool"], d["offset"], d["shape"], d["stride"]
        if not (_nonneg_int(pool) and _nonneg_int(offset)):
            raise bad
        if not (isinstance(shape, list) and isinstance(stride, list)) or len(shape) != len(stride):
            raise bad
        if not all(map(_nonneg_int, shape + stride)):
            raise bad
        return SegmentPlace(pool, offset, tuple(shape), tuple(stride))


def _nonneg_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def place_in_pools(seg: torch.Tensor, pool_ptrs: Sequence[int]) -> SegmentPlace | None:
    """Where `seg` lies among the exported pool storages (by their base addresses), or None
    when it is not a view of any of them."""
    base = seg.untyped_storage().data_ptr()
    if base not in pool_ptrs:
        return None
    return SegmentPlace(
        pool=list(pool_ptrs).index(base),
        offset=seg.storage_offset(),
        shape=tuple(seg.shape),
        stride=tuple(seg.stride()),
    )


def view_in_pool(
    storage: torch.UntypedStorage, place: SegmentPlace, dtype: torch.dtype
) -> torch.Tensor:
    """The view `place` describes over an opened pool storage. A place that reaches past the
    storage fails (an opened IPC storage is not resizable), so nothing lands out of bounds."""
    view = torch.empty(0, dtype=dtype, device=storage.device)
    try:
        return view.set_(storage, place.offset, place.shape, place.stride)
    except RuntimeError as e:
        raise TransferError(f"segment {place} does not fit its pool: {e}") from e
