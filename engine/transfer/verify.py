"""Checks a commit's manifest against the reservation and the bytes that actually arrived."""

from __future__ import annotations

from collections.abc import Mapping

from engine.transfer.base import ChecksumMismatch, ExpectedTensor, StaleEpoch, TransferError
from engine.transfer.manifest import Manifest


def verify_manifest(
    request_id: str,
    epoch: int,
    expected: Mapping[str, ExpectedTensor],
    received: Mapping[str, str],
    manifest: Manifest,
) -> TransferError | None:
    """None when the manifest is this lease's, names exactly the expected tensors with their
    shapes and dtypes, and each arrived once with the manifest's checksum; else the error."""
    where = f"request {request_id!r}"
    if manifest.request_id != request_id:
        return TransferError(f"{where}: manifest is for request {manifest.request_id!r}")
    if manifest.lease_epoch != epoch:
        return StaleEpoch(f"{where}: manifest epoch {manifest.lease_epoch}, lease epoch {epoch}")
    names = [t.name for t in manifest.tensors]
    if len(set(names)) != len(names):
        return TransferError(f"{where}: manifest lists a tensor twice: {sorted(names)}")
    missing, extra = set(expected) - set(names), set(names) - set(expected)
    if missing or extra:
        return TransferError(
            f"{where}: manifest does not match the reservation: "
            f"missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    for spec in manifest.tensors:
        exp = expected[spec.name]
        if (spec.shape, spec.dtype, spec.nbytes) != (exp.shape, exp.dtype, exp.nbytes):
            return TransferError(
                f"{where}: manifest says {spec.name!r} is {spec.shape} {spec.dtype} "
                f"{spec.nbytes} B, reserved {exp.shape} {exp.dtype} {exp.nbytes} B"
            )
    never_arrived = sorted(set(expected) - set(received))
    if never_arrived:
        return TransferError(f"{where}: tensors never arrived: {never_arrived}")
    corrupt = [t.name for t in manifest.tensors if received[t.name] != t.checksum]
    if corrupt:
        return ChecksumMismatch(f"{where}: checksum mismatch for {corrupt}")
    return None
