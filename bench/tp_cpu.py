"""`make bench`: what tensor parallelism costs on the CPU, where it cannot pay off.

The tiny model with one rank and with two (gloo over loopback, each rank with half the
threads), same prompts, in one run: the ratio is the price of the per-step command to the
follower and two all-reduces per layer. On GPUs (NCCL) the split is what lets a 104B model fit;
this table only shows the control path's overhead. Appends to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.cpu_engine import measure
from bench.results import append_results, markdown_table
from engine.config import load_config
from engine.parallel.group import follower_store, init_dist_group, leader_store
from engine.parallel.launch import load_model_ranks

BATCHES = (1, 16)
PROBES = 300


def _all_reduce_probe(rank: int, port: int, hidden: int, out: Path) -> None:
    """Rank `rank` of a bare two-process gloo group: time all-reduces of one token's hidden."""
    torch.set_num_threads(1)
    init_dist_group(rank, 2, follower_store(port, 2, 60.0), "cpu", 60.0)
    t = torch.randn(1, hidden)
    for _ in range(20):
        dist.all_reduce(t)
    start = time.perf_counter()
    for _ in range(PROBES):
        dist.all_reduce(t)
    if rank == 0:
        out.write_text(str((time.perf_counter() - start) / PROBES))
    dist.destroy_process_group()


def all_reduce_ms(hidden: int) -> float:
    store = leader_store(3, 60.0)  # served from here; both probe ranks join as clients
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seconds"
        mp.spawn(_all_reduce_probe, args=(store.port, hidden, out), nprocs=2)
        return 1000 * float(out.read_text())


def _run(model_dir: Path, world: int, prompt_len: int, steps: int) -> list[tuple[float, float]]:
    threads = torch.get_num_threads()
    model, ranks = load_model_ranks(str(model_dir), "float32", "cpu", world, timeout_s=60)
    try:
        return [measure(model, b, prompt_len, steps, ranks) for b in BATCHES]
    finally:
        if ranks is not None:
            ranks.close()
            dist.destroy_process_group()
        torch.set_num_threads(threads)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Tensor-parallel overhead on the CPU (tiny model)."
    )
    parser.add_argument("--model", type=Path, default=Path("models/ling-tiny"))
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    one = _run(args.model, 1, args.prompt_len, args.decode_steps)
    two = _run(args.model, 2, args.prompt_len, args.decode_steps)
    rows = []
    for b, (p1, d1), (p2, d2) in zip(BATCHES, one, two, strict=True):
        rows.append([str(b), "1", f"{p1:,.0f}", f"{1000 * b / d1:.2f}", ""])
        rows.append([str(b), "2", f"{p2:,.0f}", f"{1000 * b / d2:.2f}", f"{d1 / d2:.2f}x"])
    headers = ["batch", "ranks", "prefill tok/s", "decode step ms", "step time 2 / 1"]
    table = markdown_table(headers, rows)
    print(table)
    cfg = load_config(args.model)
    probe = all_reduce_ms(cfg.hidden_size)
    per_step = 2 * cfg.num_hidden_layers * probe
    note = (
        f"Prompts of {args.prompt_len} tokens, {args.decode_steps} decode steps; fp32; two "
        f"ranks = two processes sharing the same cores. One gloo all-reduce of a token's "
        f"hidden state between two processes here: {probe:.2f} ms; a step does two per layer, "
        f"{per_step:.1f} ms for {cfg.num_hidden_layers} layers, which is most of the gap."
    )
    print(note)
    if not args.no_write:
        append_results("Tensor parallelism on the CPU: one rank vs two", table, note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
