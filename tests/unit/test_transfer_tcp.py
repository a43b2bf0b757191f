"""The tcp transfer backend over real loopback sockets: round trips, verification, refusals."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator

import pytest
import torch

from engine.transfer.base import (
    ChecksumMismatch,
    ExpectedTensor,
    StaleEpoch,
    TokenRejected,
    TransferAborted,
    TransferDescriptor,
    TransferError,
)
from engine.transfer.tcp import CORRUPT_ENV, TcpReceiver, TcpSender

DEADLINE_S = 5.0
TOKENS, PAGE, LATENT_DIM = 37, 16, 576  # latent = kv_lora_rank 512 + qk_rope_head_dim 64
MLA_LAYERS, LINEAR_LAYERS, H, D = 3, 4, 4, 16


class DecodeSide:
    """A stand-in decode worker: a paged latent pool, a token-major latent buffer (to get a
    non-contiguous single-tensor destination) and a state slot, plus the on_expired record."""

    def __init__(self) -> None:
        self.pages = [5, 2, 9]  # scattered on purpose
        self.latent_pool = torch.zeros(MLA_LAYERS, 12, PAGE, LATENT_DIM, dtype=torch.bfloat16)
        self.token_major = torch.zeros(TOKENS, MLA_LAYERS, LATENT_DIM, dtype=torch.bfloat16)
        self.state_slot = torch.zeros(LINEAR_LAYERS, H, D, D)
        self.expired: list[str] = []

    def destination(self, request_id: str, name: str) -> torch.Tensor | list[torch.Tensor]:
        kind, layer = name.split(".")[0], int(name.split(".")[1])
        if kind == "state":
            return self.state_slot[layer]
        if layer == 0:
            return self.token_major[:, 0]  # strided: not contiguous
        rows = [self.latent_pool[layer, p] for p in self.pages]
        rows[-1] = rows[-1][: TOKENS - PAGE * (len(rows) - 1)]
        return rows

    def latent(self, layer: int) -> torch.Tensor:
        if layer == 0:
            return self.token_major[:, 0]
        return torch.cat([self.latent_pool[layer, p] for p in self.pages])[:TOKENS]


def expected() -> list[ExpectedTensor]:
    lat = [ExpectedTensor(f"latent.{i}", (TOKENS, LATENT_DIM), torch.bfloat16) for i in range(3)]
    st = [ExpectedTensor(f"state.{i}", (H, D, D), torch.float32) for i in range(LINEAR_LAYERS)]
    return lat + st


def payload(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {e.name: torch.randn(e.shape, generator=gen).to(e.dtype) for e in expected()}


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


@pytest.fixture
def side() -> DecodeSide:
    return DecodeSide()


@pytest.fixture
def receiver(side: DecodeSide) -> Iterator[TcpReceiver]:
    rx = TcpReceiver(side.destination, side.expired.append)
    yield rx
    left_behind = rx.pending()
    rx.close()
    assert left_behind == 0, "a reservation was left in the receiver's table"
    assert rx.connections() == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("duet-") and t.is_alive()]


def send_all(desc: TransferDescriptor, tensors: dict[str, torch.Tensor], **kw: str) -> TcpSender:
    tx = TcpSender(**kw)
    tx.open(desc, DEADLINE_S)
    for name, t in tensors.items():
        tx.send(name, t)
    return tx


def test_round_trip_lands_exact_bytes_in_every_destination(
    receiver: TcpReceiver, side: DecodeSide
) -> None:
    src = payload()
    desc = receiver.reserve("req-1", expected(), DEADLINE_S)
    with send_all(desc, src) as tx:
        tx.commit(tx.manifest(first_token=123))
    manifest = receiver.wait_committed("req-1", timeout=DEADLINE_S)
    assert manifest.first_token == 123 and manifest.lease_epoch == desc.lease_epoch
    assert {t.name for t in manifest.tensors} == set(src)
    for i in range(MLA_LAYERS):
        assert same_bytes(side.latent(i), src[f"latent.{i}"]), i
    for i in range(LINEAR_LAYERS):
        assert same_bytes(side.state_slot[i], src[f"state.{i}"]), i
    assert side.latent_pool[1, 9, TOKENS - 2 * PAGE :].count_nonzero() == 0  # tail untouched
    assert side.expired == []


def test_several_requests_in_flight_at_once(receiver: TcpReceiver) -> None:
    descs = [receiver.reserve(f"r{i}", expected(), DEADLINE_S) for i in range(3)]
    senders = [send_all(d, payload(i)) for i, d in enumerate(descs)]
    for tx in reversed(senders):
        tx.commit(tx.manifest(0))
        tx.close()
    assert [receiver.wait_committed(f"r{i}", DEADLINE_S).request_id for i in range(3)] == [
        "r0",
        "r1",
        "r2",
    ]


@pytest.mark.parametrize("via_env", [False, True])
def test_corrupted_byte_fails_both_sides_and_commits_nothing(
    receiver: TcpReceiver, monkeypatch: pytest.MonkeyPatch, via_env: bool
) -> None:
    if via_env:
        monkeypatch.setenv(CORRUPT_ENV, "state.2")
    kw = {} if via_env else {"corrupt_tensor": "state.2"}
    desc = receiver.reserve("req", expected(), DEADLINE_S)
    with send_all(desc, payload(), **kw) as tx, pytest.raises(ChecksumMismatch, match=r"state\.2"):
        tx.commit(tx.manifest(0))
    with pytest.raises(ChecksumMismatch, match=r"state\.2"):
        receiver.wait_committed("req", DEADLINE_S)


def test_stale_epoch_from_an_earlier_lease_is_rejected(receiver: TcpReceiver) -> None:
    old = receiver.reserve("req", expected(), DEADLINE_S)
    receiver.abort("req")
    new = receiver.reserve("req", expected(), DEADLINE_S)
    assert new.lease_epoch > old.lease_epoch
    with pytest.raises(StaleEpoch):
        TcpSender().open(old, DEADLINE_S)
    with send_all(new, payload()) as tx, pytest.raises(StaleEpoch):
        # a manifest from the old lease fails the request
        tx.commit(dataclasses.replace(tx.manifest(0), lease_epoch=old.lease_epoch))
    with pytest.raises(StaleEpoch):
        receiver.wait_committed("req", DEADLINE_S)


def test_duplicate_commit_is_stale_and_keeps_the_first(receiver: TcpReceiver) -> None:
    desc = receiver.reserve("req", expected(), DEADLINE_S)
    with send_all(desc, payload()) as tx:
        tx.commit(tx.manifest(7))
        with pytest.raises(StaleEpoch, match="already committed"):
            tx.commit(tx.manifest(8))
    with pytest.raises(StaleEpoch):
        TcpSender().open(desc, DEADLINE_S)
    assert receiver.wait_committed("req", DEADLINE_S).first_token == 7


def test_wrong_or_reused_token_is_rejected(receiver: TcpReceiver) -> None:
    desc = receiver.reserve("req", expected(), DEADLINE_S)
    with pytest.raises(TokenRejected, match="wrong token"):
        TcpSender().open(dataclasses.replace(desc, token="0" * 32), DEADLINE_S)
    with send_all(desc, payload()) as tx:  # a wrong token does not burn the right one
        with pytest.raises(TokenRejected, match="already used"):
            TcpSender().open(desc, DEADLINE_S)
        tx.commit(tx.manifest(0))
    receiver.wait_committed("req", DEADLINE_S)


def test_receiver_abort_forgets_and_stops_writes(receiver: TcpReceiver, side: DecodeSide) -> None:
    src = payload()
    desc = receiver.reserve("req", expected(), DEADLINE_S)
    tx = TcpSender()
    tx.open(desc, DEADLINE_S)
    tx.send("state.0", src["state.0"])
    tx.send("state.1", src["state.1"])
    receiver.abort("req")
    assert receiver.pending() == 0
    side.state_slot.fill_(-1.0)  # the owner reuses the slot at once
    with pytest.raises(TransferError):
        for name in ["state.2", "state.3", "latent.0", "latent.1", "latent.2"]:
            tx.send(name, src[name])
        tx.commit(tx.manifest(0))
    assert bool((side.state_slot == -1.0).all()), "a write landed after abort() returned"
    with pytest.raises(TransferError, match="no reservation"):
        receiver.wait_committed("req", 0.1)
    assert side.expired == []


def test_sender_abort_fails_the_request_at_once(receiver: TcpReceiver) -> None:
    desc = receiver.reserve("req", expected(), DEADLINE_S)
    tx = TcpSender()
    tx.open(desc, DEADLINE_S)
    tx.send("state.0", payload()["state.0"])
    tx.abort()
    tx.abort()  # idempotent
    with pytest.raises(TransferAborted, match="sender aborted"):
        receiver.wait_committed("req", timeout=2.0)


@pytest.mark.parametrize(
    ("mangle", "words"),
    [
        (lambda src: {**src, "extra": torch.zeros(2)}, "unexpected tensor 'extra'"),
        (lambda src: {**src, "state.1": torch.zeros(H, D, D + 1)}, "reserved"),
        (lambda src: {**src, "state.1": src["state.1"].double()}, "reserved"),
        (lambda src: {k: v for k, v in src.items() if k != "latent.1"}, "missing"),
    ],
)
def test_refused_tensors_fail_the_request(
    receiver: TcpReceiver, mangle: Callable[[dict[str, torch.Tensor]], dict], words: str
) -> None:
    desc = receiver.reserve("req", expected(), DEADLINE_S)
    tx = TcpSender()
    tx.open(desc, DEADLINE_S)
    with pytest.raises(TransferError, match=words):
        for name, t in mangle(payload()).items():
            tx.send(name, t)
        tx.commit(tx.manifest(0))
    tx.close()
    with pytest.raises(TransferError, match=words):
        receiver.wait_committed("req", DEADLINE_S)


def test_tensor_sent_twice_fails_the_request(receiver: TcpReceiver) -> None:
    desc = receiver.reserve("req", expected(), DEADLINE_S)
    src = payload()
    with send_all(desc, src) as tx, pytest.raises(TransferError, match="sent twice"):
        tx.send("latent.0", src["latent.0"])
        tx.commit(tx.manifest(0))
    with pytest.raises(TransferError, match="sent twice"):
        receiver.wait_committed("req", DEADLINE_S)


def test_destination_callback_failure_fails_the_request() -> None:
    def broken(request_id: str, name: str) -> torch.Tensor:
        raise KeyError(name)

    with TcpReceiver(broken, lambda rid: None) as rx:
        desc = rx.reserve("req", expected(), DEADLINE_S)
        with pytest.raises(TransferError, match="destination"), send_all(desc, payload()) as tx:
            tx.commit(tx.manifest(0))
        with pytest.raises(TransferError, match="KeyError"):
            rx.wait_committed("req", DEADLINE_S)
        assert rx.pending() == 0


def test_reserve_checks_its_arguments(receiver: TcpReceiver) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        receiver.reserve("req", expected() + expected()[:1], DEADLINE_S)
    with pytest.raises(ValueError, match="positive"):
        receiver.reserve("req", expected(), 0)
    receiver.reserve("req", expected(), DEADLINE_S)
    with pytest.raises(ValueError, match="already reserved"):
        receiver.reserve("req", expected(), DEADLINE_S)
    receiver.abort("req")
    with pytest.raises(ValueError, match="cannot use"):
        TcpSender().open(TransferDescriptor("nccl", "h", 1, "r", 1, "t"), DEADLINE_S)
