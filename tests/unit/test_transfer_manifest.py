"""Manifest, checksum, descriptor and destination checks of the transfer layer (no sockets)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.transfer.base import (
    ChecksumMismatch,
    ExpectedTensor,
    StaleEpoch,
    TransferDescriptor,
    TransferError,
    error_from_kind,
    error_kind,
    expected_from_dict,
    expected_to_dict,
)
from engine.transfer.destinations import as_segments
from engine.transfer.manifest import (
    Manifest,
    TensorSpec,
    byte_view,
    checksum_bytes,
    checksum_tensor,
)
from engine.transfer.verify import verify_manifest

LATENT = ExpectedTensor("mla.7.latent", (5, 576), torch.bfloat16)
STATE = ExpectedTensor("lightning.0.state", (2, 4, 4), torch.float32)


def spec_of(name: str, t: torch.Tensor) -> TensorSpec:
    nbytes = t.numel() * t.element_size()
    return TensorSpec(name, tuple(t.shape), t.dtype, nbytes, checksum_tensor(t))


def test_manifest_round_trips_through_bytes() -> None:
    lat, st = torch.randn(5, 576).bfloat16(), torch.randn(2, 4, 4)
    m = Manifest("req-1", 17, (spec_of(LATENT.name, lat), spec_of(STATE.name, st)), first_token=9)
    back = Manifest.from_bytes(m.to_bytes())
    assert back == m
    assert back.spec(LATENT.name) == m.tensors[0] and back.spec("nope") is None


@pytest.mark.parametrize(
    "data",
    [b"not json", b"{}", b'{"version": 2, "checksum_algo": "crc32"}', b'{"version": 1}'],
)
def test_malformed_manifest_is_rejected(data: bytes) -> None:
    with pytest.raises(ValueError):
        Manifest.from_bytes(data)


def test_checksum_sees_one_flipped_byte_and_ignores_layout() -> None:
    t = torch.randn(64, 32)
    raw = bytearray(byte_view(t.contiguous()))
    original = checksum_bytes(raw)
    raw[1000] ^= 0x01
    assert checksum_bytes(raw) != original
    transposed_copy = t.t().contiguous().t()  # same values, column-major strides
    assert not transposed_copy.is_contiguous()
    assert checksum_tensor(transposed_copy) == checksum_tensor(t) == original


def test_byte_view_writes_through_to_the_tensor() -> None:
    t = torch.zeros(4, dtype=torch.bfloat16)
    view = byte_view(t)
    assert len(view) == 8
    view[0:2] = byte_view(torch.tensor([1.5], dtype=torch.bfloat16))
    assert t[0].item() == 1.5
    with pytest.raises(ValueError):
        byte_view(torch.zeros(4, 4).t())


def test_descriptor_and_expected_round_trip_as_plain_values() -> None:
    d = TransferDescriptor("tcp", "10.0.0.7", 5555, "req", 3, "ab" * 16)
    assert TransferDescriptor.from_dict(d.to_dict()) == d
    assert expected_from_dict(expected_to_dict(LATENT)) == LATENT
    with pytest.raises(ValueError):
        expected_from_dict({"name": "x", "shape": [-1], "dtype": "float32"})
    with pytest.raises(ValueError):
        expected_from_dict({"name": "x", "shape": [1], "dtype": "not_a_dtype"})


def test_errors_cross_the_wire_as_their_class() -> None:
    err = error_from_kind(error_kind(ChecksumMismatch("bad")), "bad")
    assert type(err) is ChecksumMismatch and str(err) == "bad"
    assert type(error_from_kind("SomethingElse", "x")) is TransferError


def test_destination_segments_are_checked() -> None:
    pool = torch.zeros(4, 2, 576, dtype=torch.bfloat16)
    assert len(as_segments([pool[0], pool[1], pool[2, :1]], LATENT)) == 3
    strided = torch.zeros(5, 3, 576, dtype=torch.bfloat16)[:, 1]
    assert as_segments(strided, LATENT) == [strided]
    bad = {
        "too few rows": [pool[0], pool[1]],
        "wrong dtype": torch.zeros(5, 576),
        "wrong shape": torch.zeros(5, 575, dtype=torch.bfloat16),
        "wrong tail": [torch.zeros(5, 64, dtype=torch.bfloat16)],
        "not a tensor": [b"xx"],
    }
    for why, dest in bad.items():
        with pytest.raises(TransferError):
            as_segments(dest, LATENT)  # type: ignore[arg-type]
            pytest.fail(why)


def test_verify_manifest_names_each_problem() -> None:
    lat, st = torch.randn(5, 576).bfloat16(), torch.randn(2, 4, 4)
    expected = {LATENT.name: LATENT, STATE.name: STATE}
    good = Manifest("r", 5, (spec_of(LATENT.name, lat), spec_of(STATE.name, st)), 1)
    received = {t.name: t.checksum for t in good.tensors}
    assert verify_manifest("r", 5, expected, received, good) is None

    def check(manifest: Manifest, got: dict[str, str], cls: type, words: str) -> None:
        err = verify_manifest("r", 5, expected, got, manifest)
        assert type(err) is cls and words in str(err), err

    check(dataclasses.replace(good, lease_epoch=4), received, StaleEpoch, "epoch")
    check(dataclasses.replace(good, request_id="q"), received, TransferError, "request 'q'")
    check(dataclasses.replace(good, tensors=good.tensors[:1]), received, TransferError, "missing")
    wrong_shape = dataclasses.replace(good.tensors[1], shape=(4, 2, 4))
    check(
        dataclasses.replace(good, tensors=(good.tensors[0], wrong_shape)),
        received,
        TransferError,
        "manifest says",
    )
    check(good, {LATENT.name: received[LATENT.name]}, TransferError, "never arrived")
    check(good, {**received, STATE.name: "00000000"}, ChecksumMismatch, STATE.name)
