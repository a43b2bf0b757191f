"""`make bench`: offline prefill and decode throughput of the tiny model on this CPU.

Prints one table and appends it to bench/RESULTS.md. A baseline for the serving benchmarks.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.results import append_results, markdown_table
from engine.model.ling import LingModel
from engine.parallel.rank_link import RankLink
from engine.runner import ModelRunner, PrefillItem


def _timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(
    model: LingModel,
    batch: int,
    prompt_len: int,
    decode_steps: int,
    ranks: RankLink | None = None,
) -> tuple[float, float]:
    """(prefill tokens/s, decode tokens/s) for `batch` prompts of `prompt_len` tokens
    (`ranks`: the followers of a tensor-parallel `model`)."""
    pages = batch * ((prompt_len + decode_steps + 17) // 16 + 1)
    runner = ModelRunner(model, num_pages=pages, page_size=16, num_slots=batch, ranks=ranks)
    gen = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(0, model.cfg.vocab_size, (prompt_len,), generator=gen).tolist()
        for _ in range(batch)
    ]

    def prefill_once() -> list:  # type: ignore[type-arg]
        seqs = [runner.new_sequence(prompt_len + decode_steps + 1) for _ in prompts]
        runner.prefill([PrefillItem(s, p) for s, p in zip(seqs, prompts, strict=True)])
        return seqs

    def prefill_and_release() -> None:
        for s in prefill_once():
            runner.release(s)

    prefill_s = _timed(prefill_and_release, repeats=3)
    seqs = prefill_once()
    try:
        tokens = [1] * batch
        runner.decode(seqs, tokens)  # warm-up
        start = time.perf_counter()
        for _ in range(decode_steps):
            runner.decode(seqs, tokens)
        decode_s = (time.perf_counter() - start) / decode_steps
    finally:
        for s in seqs:
            runner.release(s)
    runner.check_integrity()
    return batch * prompt_len / prefill_s, batch / decode_s


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Offline prefill/decode throughput of the tiny model on the CPU."
    )
    parser.add_argument("--model", type=Path, default=Path("models/ling-tiny"))
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument(
        "--no-write", action="store_true", help="print only; do not append to RESULTS.md"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    model = LingModel.from_pretrained(args.model)
    rows = []
    for batch in (1, 16):
        prefill_tps, decode_tps = measure(model, batch, args.prompt_len, args.decode_steps)
        rows.append([str(batch), str(args.prompt_len), f"{prefill_tps:,.0f}", f"{decode_tps:,.1f}"])
        print(
            f"batch {batch}: prefill {prefill_tps:,.0f} tok/s, decode {decode_tps:,.1f} tok/s",
            flush=True,
        )
    table = markdown_table(["batch", "prompt tokens", "prefill tok/s", "decode tok/s"], rows)
    print(table)
    if not args.no_write:
        append_results("Offline engine, tiny model, CPU fp32 (reference twins)", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
