"""`make bench-gpu`: the device transfer backends for Ling-2.6-flash-sized payloads, next to a
device-to-device copy of the same bytes measured in the same run (the ceiling on this GPU).

Payloads: the Lightning states of one request (28 layers x [32, 128, 128] fp32 = 56 MiB), the
MLA latents of a 4k-token prompt (4 layers x [4096, 576] bf16 = 18 MiB, into scattered 64-token
pages), and both. The sender runs in a spawned process on the same GPU, as a prefill worker on
the same node would; the receiver (this process) owns the pools, as a decode worker does. A
transfer's time is the sender's open + sends + commit (the commit returns once the receiver
has verified the checksums). nccl runs too when CuPy is installed: two processes on one GPU
pose as two hosts (NCCL_HOSTID), i.e. the cross-node path over loopback sockets.
Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from bench.results import append_results, markdown_table
from engine.transfer.base import ExpectedTensor, TransferDescriptor
from engine.transfer.select import make_receiver, make_sender

LINEAR_LAYERS, HEADS, HEAD_DIM = 28, 32, 128
MLA_LAYERS, TOKENS, LATENT_DIM, PAGE = 4, 4096, 576, 64
SPAWN = mp.get_context("spawn")
DEADLINE_S = 120.0
NCCL_ENV = {"NCCL_SOCKET_IFNAME": "lo", "NCCL_IB_DISABLE": "1"}


def expected(kinds: tuple[str, ...]) -> list[ExpectedTensor]:
    out = []
    if "state" in kinds:
        shape = (HEADS, HEAD_DIM, HEAD_DIM)
        out += [ExpectedTensor(f"state.{i}", shape, torch.float32) for i in range(LINEAR_LAYERS)]
    if "latent" in kinds:
        shape = (TOKENS, LATENT_DIM)
        out += [ExpectedTensor(f"latent.{i}", shape, torch.bfloat16) for i in range(MLA_LAYERS)]
    return out


PAYLOADS = {"states": ("state",), "latents 4k": ("latent",), "both": ("state", "latent")}


def nbytes(specs: list[ExpectedTensor]) -> int:
    return sum(torch.Size(e.shape).numel() * torch.empty(0, dtype=e.dtype).element_size()
               for e in specs)  # fmt: skip


class DecodePools:
    """A state pool slot and a paged latent pool on the GPU, pages scattered."""

    def __init__(self) -> None:
        pages = TOKENS // PAGE
        self.states = torch.zeros(2, LINEAR_LAYERS, HEADS, HEAD_DIM, HEAD_DIM, device="cuda")
        self.latents = torch.zeros(
            MLA_LAYERS, 2 * pages, PAGE, LATENT_DIM, dtype=torch.bfloat16, device="cuda"
        )
        order = torch.randperm(2 * pages, generator=torch.Generator().manual_seed(1))
        self.page_ids = order[:pages].tolist()

    def pools(self) -> list[torch.Tensor]:
        return [self.latents, self.states]

    def destination(self, request_id: str, name: str) -> torch.Tensor | list[torch.Tensor]:
        kind, layer = name.split(".")
        if kind == "state":
            return self.states[1, int(layer)]
        return [self.latents[int(layer), p] for p in self.page_ids]


def _sender(backend: str, env: dict[str, str], jobs: mp.Queue, results: mp.Queue) -> None:
    os.environ.update(env)
    torch.cuda.set_device(0)
    gen = torch.Generator().manual_seed(0)
    tensors = {
        e.name: torch.randn(e.shape, generator=gen).to(e.dtype).cuda()
        for e in expected(("state", "latent"))
    }
    while (job := jobs.get(timeout=600)) is not None:
        tx = make_sender(backend)
        try:
            torch.cuda.synchronize()
            start = time.perf_counter()
            tx.open(TransferDescriptor.from_dict(job["descriptor"]), DEADLINE_S)
            for name in job["names"]:
                tx.send(name, tensors[name])
            tx.commit(tx.manifest(first_token=0))
            results.put(("ok", time.perf_counter() - start))
        except Exception as exc:
            tx.abort()
            results.put((f"{type(exc).__name__}: {exc}", 0.0))
        finally:
            tx.close()


def measure_backend(backend: str, repeats: int, env: dict[str, str]) -> dict[str, list[float]]:
    """Seconds per transfer for each payload (first run of each is a warm-up)."""
    pools = DecodePools()
    options: dict[str, object] = {"pools": pools.pools()} if backend == "cuda_ipc" else {}
    if backend == "nccl":
        options["device"] = torch.device("cuda", 0)
    jobs, results = SPAWN.Queue(), SPAWN.Queue()
    child = SPAWN.Process(target=_sender, args=(backend, env, jobs, results))
    child.start()
    times: dict[str, list[float]] = {}
    try:
        with make_receiver(backend, pools.destination, lambda rid: None, **options) as rx:
            for label, kinds in PAYLOADS.items():
                specs = expected(kinds)
                for i in range(repeats + 1):
                    rid = f"{backend}-{label}-{i}"
                    desc = rx.reserve(rid, specs, DEADLINE_S)
                    jobs.put({"descriptor": desc.to_dict(), "names": [e.name for e in specs]})
                    outcome, seconds = results.get(timeout=DEADLINE_S)
                    if outcome != "ok":
                        raise RuntimeError(f"{backend} transfer failed: {outcome}")
                    rx.wait_committed(rid, DEADLINE_S)
                    if i:
                        times.setdefault(label, []).append(seconds)
    finally:
        jobs.put(None)
        child.join(60)
        if child.is_alive():
            child.kill()
    return times


def copy_seconds(size: int, repeats: int) -> float:
    """Median seconds of one device-to-device copy of `size` bytes (CUDA events)."""
    src = torch.empty(size, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    samples = []
    for _ in range(max(repeats, 5)):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end) / 1e3)
    return statistics.median(samples)


def _row(label: str, backend: str, size: int, seconds: float, ceiling: float) -> list[str]:
    return [
        label,
        f"{size / 2**20:.0f}",
        backend,
        f"{seconds * 1e3:.2f}",
        f"{size / seconds / 1e9:.1f}",
        f"{ceiling / seconds:.1%}",
    ]


def run(repeats: int, backends: list[str]) -> tuple[list[list[str]], list[str]]:
    rows, notes = [], []
    sizes = {label: nbytes(expected(kinds)) for label, kinds in PAYLOADS.items()}
    ceilings = {label: copy_seconds(size, repeats) for label, size in sizes.items()}
    for label, size in sizes.items():
        rows.append(_row(label, "d2d copy (ceiling)", size, ceilings[label], ceilings[label]))
    measured: dict[str, dict[str, list[float]]] = {}
    for backend in backends:
        env_setup: Callable[[], dict[str, str]] = _nccl_env if backend == "nccl" else dict
        try:
            measured[backend] = measure_backend(backend, repeats, env_setup())
        except Exception as exc:  # a backend that cannot run here is reported, not fatal
            notes.append(f"{backend} not measured: {type(exc).__name__}: {exc}")
    for label, size in sizes.items():
        for backend, times in measured.items():
            rows.append(
                _row(label, backend, size, statistics.median(times[label]), ceilings[label])
            )
    return rows, notes


def _nccl_env() -> dict[str, str]:
    """This process poses as the decode host; the returned env makes the sender another."""
    import cupy  # noqa: F401 - raises ImportError when CuPy is missing

    os.environ.update({**NCCL_ENV, "NCCL_HOSTID": "duet-bench-decode"})
    return {**NCCL_ENV, "NCCL_HOSTID": "duet-bench-prefill"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--backends", default="cuda_ipc,nccl", help="comma-separated")
    parser.add_argument("--no-write", action="store_true", help="print only; no RESULTS.md")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.gpu_transfer: no CUDA device here; skipped (run it on a GPU machine)")
        return 0
    rows, notes = run(args.repeats, [b for b in args.backends.split(",") if b])
    headers = ["payload", "MiB", "path", "median ms", "GB/s", "of d2d copy"]
    table = markdown_table(headers, rows)
    print(table, *notes, sep="\n")
    if not args.no_write:
        text = (
            f"{torch.cuda.get_device_name(0)}; sender spawned on the same GPU; "
            f"{args.repeats} runs after one warm-up per payload. " + " ".join(notes)
        )
        append_results("Transfer: device backends vs device-to-device copy", table, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
