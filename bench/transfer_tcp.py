"""tcp transfer backend throughput for Ling-2.6-flash-sized payloads, next to a raw socket copy.

Payload per request: the Lightning states (28 layers x [32, 128, 128] fp32 = 56 MiB) and the MLA
latents of a 4k-token prompt (4 layers x [4096, 576] bf16 = 18 MiB). The sender runs in a forked
child process, as a prefill worker would; the receiver (this process) places the bytes into a
state slot and a paged latent pool (64-token pages, scattered), checksums and verifies them.
The raw row moves the same bytes over a plain loopback socket into one preallocated buffer:
no framing, no checksums, no verification; it is the ceiling for this machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import threading
import time
from multiprocessing.connection import Connection

import torch

from bench.results import append_results, markdown_table
from engine.transfer.base import ExpectedTensor, TransferDescriptor
from engine.transfer.manifest import byte_view
from engine.transfer.tcp import TcpReceiver, TcpSender

LINEAR_LAYERS, HEADS, HEAD_DIM = 28, 32, 128
MLA_LAYERS, TOKENS, LATENT_DIM, PAGE = 4, 4096, 576, 64
FORK = mp.get_context("fork")


def expected() -> list[ExpectedTensor]:
    states = [
        ExpectedTensor(f"state.{i}", (HEADS, HEAD_DIM, HEAD_DIM), torch.float32)
        for i in range(LINEAR_LAYERS)
    ]
    latents = [
        ExpectedTensor(f"latent.{i}", (TOKENS, LATENT_DIM), torch.bfloat16)
        for i in range(MLA_LAYERS)
    ]
    return states + latents


def payload() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {e.name: torch.randn(e.shape, generator=gen).to(e.dtype) for e in expected()}


class DecodePools:
    """One state slot and a paged latent pool whose pages for the request are scattered."""

    def __init__(self, strided_latents: bool) -> None:
        pages = TOKENS // PAGE
        self.state = torch.zeros(LINEAR_LAYERS, HEADS, HEAD_DIM, HEAD_DIM)
        self.pool = torch.zeros(MLA_LAYERS, 2 * pages, PAGE, LATENT_DIM, dtype=torch.bfloat16)
        self.page_ids = torch.randperm(2 * pages, generator=torch.Generator().manual_seed(1))
        self.page_ids = self.page_ids[:pages].tolist()
        self.token_major = torch.zeros(TOKENS, MLA_LAYERS, LATENT_DIM, dtype=torch.bfloat16)
        self.strided_latents = strided_latents

    def destination(self, request_id: str, name: str) -> torch.Tensor | list[torch.Tensor]:
        kind, layer = name.split(".")[0], int(name.split(".")[1])
        if kind == "state":
            return self.state[layer]
        if self.strided_latents:
            return self.token_major[:, layer]  # non-contiguous: goes through staging
        return [self.pool[layer, p] for p in self.page_ids]


def _tcp_sender_child(conn: Connection, tensors: dict[str, torch.Tensor]) -> None:
    while (message := conn.recv()) is not None:
        start = time.perf_counter()
        with TcpSender() as tx:
            tx.open(TransferDescriptor.from_dict(message), 60.0)
            for name, t in tensors.items():
                tx.send(name, t)
            tx.commit(tx.manifest(first_token=0))
        conn.send(time.perf_counter() - start)


def measure_tcp(tensors: dict[str, torch.Tensor], repeats: int, strided: bool) -> list[float]:
    pools = DecodePools(strided)
    parent, child_end = FORK.Pipe()
    child = FORK.Process(target=_tcp_sender_child, args=(child_end, tensors))
    child.start()
    times = []
    with TcpReceiver(pools.destination, lambda rid: None) as rx:
        for i in range(repeats + 1):  # the first run warms up
            parent.send(rx.reserve(f"bench-{i}", expected(), 60.0).to_dict())
            elapsed = parent.recv()
            rx.wait_committed(f"bench-{i}", 10.0)
            times.append(elapsed)
    parent.send(None)
    child.join(10.0)
    check = tensors["state.27"].view(torch.uint8)
    assert torch.equal(pools.state[27].view(torch.uint8), check), "bytes did not land"
    return times[1:]


def _raw_sender_child(port: int, tensors: dict[str, torch.Tensor], conn: Connection) -> None:
    while conn.recv() is not None:
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for t in tensors.values():
                sock.sendall(byte_view(t))
            sock.recv(1)  # the receiver's ack: every byte has landed
        conn.send(time.perf_counter() - start)


def _raw_receive(server: socket.socket, buffer: memoryview, repeats: int) -> None:
    for _ in range(repeats):
        sock, _ = server.accept()
        with sock:
            got = 0
            while got < len(buffer):
                got += sock.recv_into(buffer[got:])
            sock.sendall(b"k")


def measure_raw(tensors: dict[str, torch.Tensor], repeats: int) -> list[float]:
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    buffer = memoryview(bytearray(total))
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        receiver = threading.Thread(target=_raw_receive, args=(server, buffer, repeats + 1))
        receiver.start()
        parent, child_end = FORK.Pipe()
        child = FORK.Process(target=_raw_sender_child, args=(port, tensors, child_end))
        child.start()
        times = []
        for _ in range(repeats + 1):
            parent.send(True)
            times.append(parent.recv())
        parent.send(None)
        child.join(10.0)
        receiver.join(10.0)
    return times[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; no RESULTS.md")
    args = parser.parse_args()
    tensors = payload()
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    runs = {
        "raw loopback socket copy": measure_raw(tensors, args.repeats),
        "tcp backend, paged latents (direct)": measure_tcp(tensors, args.repeats, False),
        "tcp backend, strided latents (staged)": measure_tcp(tensors, args.repeats, True),
    }
    raw_best = min(runs["raw loopback socket copy"])
    rows = []
    for name, times in runs.items():
        best, median = min(times), statistics.median(times)
        rows.append(
            [
                name,
                f"{total / 2**20:.0f}",
                f"{best * 1e3:.1f}",
                f"{median * 1e3:.1f}",
                f"{total / best / 1e9:.2f}",
                f"{raw_best / best:.2f}",
            ]
        )
    headers = ["path", "MiB", "best ms", "median ms", "GB/s (best)", "vs raw"]
    table = markdown_table(headers, rows)
    print(table)
    if not args.no_write:
        notes = (
            f"Sender in a forked process, receiver in this one, loopback; {args.repeats} runs "
            "after one warm-up. tcp = open + 32 framed tensors + crc32 on both sides + commit."
        )
        append_results("Transfer: tcp backend vs raw loopback socket", table, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
