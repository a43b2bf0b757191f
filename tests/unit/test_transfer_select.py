"""Choosing a pair's transfer backend, and the factories (tcp end to end here; the device
backends' clear refusals where they cannot run)."""

from __future__ import annotations

import sys

import pytest
import torch

from engine.transfer.base import ExpectedTensor
from engine.transfer.nccl_comm import CUPY_PACKAGE, load_nccl
from engine.transfer.select import (
    BackendUnavailable,
    PeerCaps,
    choose_backend,
    has_cupy_nccl,
    local_caps,
    make_receiver,
    make_sender,
    missing_for,
)
from engine.transfer.tcp import TcpReceiver, TcpSender

GPU_A, GPU_B = "GPU-aaaaaaaa-0000", "GPU-bbbbbbbb-1111"


def caps(node: str, cuda: bool = True, cupy: bool = True, gpus: tuple[str, ...] = ()) -> PeerCaps:
    return PeerCaps(node, has_cuda=cuda, has_cupy_nccl=cupy, gpu_uuids=gpus if cuda else ())


@pytest.mark.parametrize(
    ("local", "remote", "chosen"),
    [
        # one node, both processes see the same GPU(s): CUDA IPC
        (caps("n1", gpus=(GPU_A, GPU_B)), caps("n1", gpus=(GPU_A, GPU_B)), "cuda_ipc"),
        (caps("n1", cupy=False, gpus=(GPU_A,)), caps("n1", cupy=False, gpus=(GPU_A,)), "cuda_ipc"),
        # one node, each pod given its own GPU: IPC handles cannot be opened, NCCL can
        (caps("n1", gpus=(GPU_A,)), caps("n1", gpus=(GPU_B,)), "nccl"),
        # two nodes with GPUs and CuPy on both
        (caps("n1", gpus=(GPU_A,)), caps("n2", gpus=(GPU_B,)), "nccl"),
        # GPUs but CuPy missing on one side: tcp
        (caps("n1", gpus=(GPU_A,)), caps("n2", cupy=False, gpus=(GPU_B,)), "tcp"),
        (caps("n1", gpus=(GPU_A,)), caps("n1", cupy=False, gpus=(GPU_B,)), "tcp"),
        # a CPU worker on either side: tcp, even on one node
        (caps("n1", cuda=False), caps("n1", gpus=(GPU_A,)), "tcp"),
        (caps("n1", gpus=(GPU_A,)), caps("n2", cuda=False), "tcp"),
        (caps("n1", cuda=False, cupy=False), caps("n1", cuda=False, cupy=False), "tcp"),
    ],
)
def test_the_selection_table(local: PeerCaps, remote: PeerCaps, chosen: str) -> None:
    assert choose_backend(local, remote) == chosen
    assert choose_backend(remote, local) == chosen  # the rule is symmetric
    assert choose_backend(local, remote, forced="auto") == chosen


def test_a_forced_backend_that_can_work_is_used() -> None:
    same_gpu = caps("n1", gpus=(GPU_A,))
    assert choose_backend(same_gpu, same_gpu, forced="tcp") == "tcp"
    assert choose_backend(same_gpu, same_gpu, forced="nccl") == "nccl"
    assert choose_backend(caps("n1", cuda=False), caps("n2", cuda=False), forced="tcp") == "tcp"


@pytest.mark.parametrize(
    ("forced", "local", "remote", "words"),
    [
        ("cuda_ipc", caps("n1", gpus=(GPU_A,)), caps("n2", gpus=(GPU_A,)), "different nodes"),
        ("cuda_ipc", caps("n1", gpus=(GPU_A,)), caps("n1", gpus=(GPU_B,)), "no GPU in common"),
        ("cuda_ipc", caps("n1", cuda=False), caps("n1", gpus=(GPU_A,)), r"this worker .* no CUDA"),
        ("nccl", caps("n1", gpus=(GPU_A,)), caps("n2", cuda=False), r"the peer .* no CUDA GPU"),
        ("nccl", caps("n1", gpus=(GPU_A,)), caps("n2", cupy=False, gpus=(GPU_B,)), CUPY_PACKAGE),
    ],
)
def test_a_forced_backend_that_cannot_work_says_what_is_missing(
    forced: str, local: PeerCaps, remote: PeerCaps, words: str
) -> None:
    with pytest.raises(BackendUnavailable, match=f"{forced}.*forced.*{words}"):
        choose_backend(local, remote, forced=forced)


def test_every_missing_piece_is_named_at_once() -> None:
    missing = missing_for("nccl", caps("a", cuda=False, cupy=False), caps("b", cupy=False))
    assert len(missing) == 3, missing  # no GPU on one side, no CuPy on either


def test_unknown_backends_are_rejected() -> None:
    peer = caps("n1", gpus=(GPU_A,))
    with pytest.raises(ValueError, match="unknown transfer backend 'rdma'"):
        choose_backend(peer, peer, forced="rdma")
    with pytest.raises(ValueError, match="unknown transfer backend"):
        make_sender("rdma")
    with pytest.raises(ValueError, match="unknown transfer backend"):
        make_receiver("rdma", lambda rid, name: torch.zeros(1), lambda rid: None)


def test_caps_round_trip_through_plain_values() -> None:
    peer = caps("node-7", gpus=(GPU_A, GPU_B))
    assert PeerCaps.from_dict(peer.to_dict()) == peer
    assert PeerCaps.from_dict({"node": "x"}) == PeerCaps("x")
    with pytest.raises(ValueError, match="gpu_uuids"):
        PeerCaps.from_dict({"node": "x", "gpu_uuids": "GPU-a"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_local_caps_of_this_cpu_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUET_NODE_NAME", "k8s-node-3")
    here = local_caps()
    assert here == PeerCaps("k8s-node-3", has_cuda=False, has_cupy_nccl=False, gpu_uuids=())
    monkeypatch.delenv("DUET_NODE_NAME")
    assert local_caps().node and local_caps(node="given").node == "given"
    assert choose_backend(here, here) == "tcp"


def test_factories_make_a_working_tcp_pair() -> None:
    slot = torch.zeros(4, 8)
    expected = [ExpectedTensor("state.0", (4, 8), torch.float32)]
    rx = make_receiver("tcp", lambda rid, name: slot, lambda rid: None)
    try:
        assert isinstance(rx, TcpReceiver)
        desc = rx.reserve("req", expected, 5.0)
        tx = make_sender(desc.backend)
        assert isinstance(tx, TcpSender)
        src = torch.arange(32, dtype=torch.float32).view(4, 8)
        with tx:
            tx.open(desc, 5.0)
            tx.send("state.0", src)
            tx.commit(tx.manifest(first_token=5))
        assert rx.wait_committed("req", 5.0).first_token == 5
        assert torch.equal(slot, src) and rx.pending() == 0
    finally:
        rx.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("backend", ["cuda_ipc", "nccl"])
def test_device_backends_refuse_to_start_without_cuda(backend: str) -> None:
    with pytest.raises(BackendUnavailable, match=f"{backend} transfer backend.*no CUDA GPU"):
        make_sender(backend)
    with pytest.raises(BackendUnavailable, match=f"{backend} transfer backend.*no CUDA GPU"):
        make_receiver(backend, lambda rid, name: torch.zeros(1), lambda rid: None)


def test_nccl_without_cupy_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("cupy", "cupy.cuda", "cupy.cuda.nccl"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import cupy` fail, as if absent
    with pytest.raises(BackendUnavailable, match=f"install {CUPY_PACKAGE}"):
        load_nccl()
    with pytest.raises(BackendUnavailable, match=f"nccl transfer backend.*{CUPY_PACKAGE}"):
        make_sender("nccl")
    with pytest.raises(BackendUnavailable, match=CUPY_PACKAGE):
        make_receiver("nccl", lambda rid, name: torch.zeros(1), lambda rid: None)
    assert not has_cupy_nccl()
