"""Moving a request's caches from a prefill worker to a decode worker (see base.py)."""

from engine.transfer.base import (
    ChecksumMismatch,
    DeadlineExceeded,
    ExpectedTensor,
    LeaseExpired,
    StaleEpoch,
    TokenRejected,
    TransferAborted,
    TransferDescriptor,
    TransferError,
    TransferReceiver,
    TransferSender,
)
from engine.transfer.manifest import Manifest, TensorSpec, checksum_tensor

__all__ = [
    "ChecksumMismatch",
    "DeadlineExceeded",
    "ExpectedTensor",
    "LeaseExpired",
    "Manifest",
    "StaleEpoch",
    "TensorSpec",
    "TokenRejected",
    "TransferAborted",
    "TransferDescriptor",
    "TransferError",
    "TransferReceiver",
    "TransferSender",
    "checksum_tensor",
]
