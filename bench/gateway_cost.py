"""`make bench`: the gateway's own cost.

One local cluster (control plane + 1 prefill + 1 decode worker, tiny model, CPU) serves the
same greedy requests (token-id prompts, `ignore_eos`, temperature 0) along three paths, in the
same run: streaming `POST /v1/completions` through the HTTP gateway, `duet.v1.Generate` through
the control plane over gRPC, and the workers driven directly with `pd_client.generate`. Time to
first token and inter-token latency are taken on the client, per token, at each concurrency.

Prompts are chosen in the warm-up so that every generated token completes text (one SSE chunk
per token); otherwise the HTTP path would hold some tokens back and its per-chunk gaps would not
be inter-token latencies. Prints one table and appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc

from bench.results import append_results, markdown_table
from control_plane.launcher import Cluster, ClusterSpec
from control_plane.pd_client import WorkerPair, generate
from duet.v1 import generate_pb2 as gpb
from duet.v1 import generate_pb2_grpc as gpb_grpc
from duet.v1 import worker_pb2 as pb
from engine.sampling import SamplingParams

CANDIDATE_PROMPTS = 24  # tried in the warm-up; those with one text chunk per token are kept
LOAD_TIMEOUT_S = 120.0  # one path at one concurrency; the run fails rather than hang
REQUEST_TIMEOUT_S = 60.0
# Above the highest concurrency: a finished request frees its slot just after its last token,
# so a client that sends the next one at once must not find the pool full.
WORKER_SLOTS = 128


@dataclass(frozen=True)
class BenchConfig:
    model_dir: Path
    requests: int
    max_tokens: int
    prompt_len: int
    concurrencies: tuple[int, ...]
    write: bool


class Trace:
    """Arrival times of one request's tokens on the client, in seconds after it was sent."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.arrivals_s: list[float] = []

    def mark(self) -> None:
        self.arrivals_s.append(time.perf_counter() - self.start)

    def done(self) -> Trace:
        if not self.arrivals_s:
            raise RuntimeError("the request produced no tokens")
        return self

    @property
    def ttft_s(self) -> float:
        return self.arrivals_s[0]

    @property
    def itl_s(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.arrivals_s)]


Client = Callable[[list[int]], Awaitable[Trace]]


@contextlib.asynccontextmanager
async def http_client(port: int, model: str, max_tokens: int) -> AsyncIterator[Client]:
    url = f"http://127.0.0.1:{port}/v1/completions"
    base = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": True}

    async def one(prompt: list[int]) -> Trace:
        body = {**base, "prompt": prompt, "ignore_eos": True}
        trace = Trace()
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with session.post(url, json=body, timeout=timeout) as reply:
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}: {await reply.text()}")
            async for raw in reply.content:
                line = raw.strip()
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(f"error in stream: {chunk['error']}")
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    trace.mark()
        return trace.done()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield one


@contextlib.asynccontextmanager
async def grpc_client(port: int, max_tokens: int) -> AsyncIterator[Client]:
    sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    async def one(prompt: list[int]) -> Trace:
        request = gpb.GenerateRequest(token_ids=gpb.TokenIds(ids=prompt), sampling=sampling)
        trace = Trace()
        async for reply in stub.Generate(request, timeout=REQUEST_TIMEOUT_S):
            for _ in reply.token_ids:
                trace.mark()
        return trace.done()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gpb_grpc.GenerateStub(channel)
        yield one


@contextlib.asynccontextmanager
async def direct_client(cluster: Cluster, max_tokens: int) -> AsyncIterator[Client]:
    address = {w.role: w.address for w in cluster.workers}
    pair, channels = WorkerPair.connect(address["prefill"], address["decode"])
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    async def one(prompt: list[int]) -> Trace:
        trace = Trace()
        rid = f"bench-{uuid.uuid4().hex}"
        async for _event in generate(pair, rid, prompt, params, timeout_s=REQUEST_TIMEOUT_S):
            trace.mark()
        return trace.done()

    try:
        yield one
    finally:
        for channel in channels:
            await channel.close()


async def run_load(
    client: Client, prompts: list[list[int]], requests: int, concurrency: int
) -> list[Trace]:
    """`requests` requests (prompts in turn) with at most `concurrency` in flight."""
    indices = iter(range(requests))  # shared by the loops: each index is taken once
    traces: list[Trace] = []

    async def loop() -> None:
        for i in indices:
            traces.append(await client(prompts[i % len(prompts)]))

    await asyncio.wait_for(
        asyncio.gather(*(loop() for _ in range(concurrency))), timeout=LOAD_TIMEOUT_S
    )
    return traces


def candidate_prompts(model_dir: Path, count: int, length: int) -> list[list[int]]:
    """Random ids below the first special token (bos/eos/pad sit at the top of the vocab)."""
    config = json.loads((model_dir / "config.json").read_text())
    eos = config["eos_token_id"]
    specials = [config["bos_token_id"], *(eos if isinstance(eos, list) else [eos])]
    rng = random.Random(0)
    return [[rng.randrange(min(specials)) for _ in range(length)] for _ in range(count)]


PATHS = ("HTTP gateway (SSE)", "gRPC Generate", "direct to workers")
ROUNDS = len(PATHS)  # at each concurrency; every path goes first, second and last once
Results = dict[tuple[str, int], list[Trace]]


async def warm_up(clients: dict[str, Client], cfg: BenchConfig) -> list[list[int]]:
    """Runs every path; returns the candidate prompts whose HTTP stream had one text chunk per
    token (all of them if none had)."""
    candidates = candidate_prompts(cfg.model_dir, CANDIDATE_PROMPTS, cfg.prompt_len)
    traces = await asyncio.gather(*(clients[PATHS[0]](p) for p in candidates))
    kept = [
        p for p, t in zip(candidates, traces, strict=True) if len(t.arrivals_s) == cfg.max_tokens
    ]
    widest = max(cfg.concurrencies)  # the workers meet the largest batch here first
    for name in PATHS[1:]:
        await run_load(clients[name], kept or candidates, widest, widest)
    print(f"warm-up done; {len(kept)} of {len(candidates)} prompts kept", flush=True)
    return kept or candidates


async def measure(cluster: Cluster, cfg: BenchConfig) -> tuple[Results, int]:
    """Traces per (path, concurrency), and the number of prompts used. The paths take turns in
    rotated order, so drift on the machine is shared among them."""
    async with contextlib.AsyncExitStack() as stack:
        enter = stack.enter_async_context
        clients = {
            PATHS[0]: await enter(
                http_client(cluster.http_port, cfg.model_dir.resolve().name, cfg.max_tokens)
            ),
            PATHS[1]: await enter(grpc_client(cluster.grpc_port, cfg.max_tokens)),
            PATHS[2]: await enter(direct_client(cluster, cfg.max_tokens)),
        }
        prompts = await warm_up(clients, cfg)
        results: Results = {(name, c): [] for name in PATHS for c in cfg.concurrencies}
        for concurrency in cfg.concurrencies:
            per_round = max(math.ceil(cfg.requests / ROUNDS), concurrency)
            start = time.perf_counter()
            for turn in range(ROUNDS):
                for name in PATHS[turn:] + PATHS[:turn]:
                    traces = await run_load(clients[name], prompts, per_round, concurrency)
                    results[name, concurrency] += traces
            took = time.perf_counter() - start
            print(f"concurrency {concurrency}: {per_round * ROUNDS} requests a path, {took:.1f}s")
        return results, len(prompts)


@dataclass(frozen=True)
class Summary:
    ttft_p50: float
    ttft_p99: float
    itl_p50: float
    itl_p99: float

    @staticmethod
    def of(traces: list[Trace]) -> Summary:
        # Cut points of linear interpolation between closest ranks (numpy's default).
        ttft = statistics.quantiles([t.ttft_s for t in traces], n=100, method="inclusive")
        itl = statistics.quantiles([x for t in traces for x in t.itl_s], n=100, method="inclusive")
        return Summary(ttft[49], ttft[98], itl[49], itl[98])


HEADERS = ["path", "concurrency", "requests", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms"]
HEADERS += ["ITL p99 ms", "TTFT p50 vs direct", "ITL p50 vs direct"]


def _versus(value: float, base: float) -> str:
    return f"{(value - base) * 1e3:+.1f} ms ({(value / base - 1) * 100:+.0f}%)"


def table_rows(results: Results, concurrencies: tuple[int, ...]) -> list[list[str]]:
    rows = []
    for concurrency in concurrencies:
        base = Summary.of(results[PATHS[2], concurrency])
        for name in PATHS:
            traces = results[name, concurrency]
            s = Summary.of(traces)
            times = [f"{t * 1e3:.1f}" for t in (s.ttft_p50, s.ttft_p99, s.itl_p50, s.itl_p99)]
            versus = [_versus(s.ttft_p50, base.ttft_p50), _versus(s.itl_p50, base.itl_p50)]
            if name == PATHS[2]:
                versus = ["baseline", "baseline"]
            rows.append([name, str(concurrency), str(len(traces)), *times, *versus])
    return rows


def notes_for(results: Results, cfg: BenchConfig, prompts: int) -> str:
    short = sum(len(t.arrivals_s) < cfg.max_tokens for traces in results.values() for t in traces)
    return (
        f"1 prefill + 1 decode worker, tiny model, CPU fp32, all on 127.0.0.1. {prompts} prompts "
        f"of {cfg.prompt_len} token ids (kept of {CANDIDATE_PROMPTS} in the warm-up: one SSE "
        f"chunk per token), max_tokens {cfg.max_tokens}, temperature 0, ignore_eos. TTFT and ITL "
        f"are taken on the client; the paths take turns in {ROUNDS} rounds per concurrency. "
        f"Streams with fewer chunks than tokens: {short}. The client shares the cores with the "
        f"control plane and the workers: where they are saturated (concurrency 64 on few cores), "
        f"the differences are mostly CPU scheduling."
    )


def parse_args() -> BenchConfig:
    parser = argparse.ArgumentParser(
        description="The gateway's own cost: TTFT and inter-token latency through the HTTP "
        "gateway and gRPC Generate against calling the workers directly, same cluster, same run."
    )
    parser.add_argument("--model", type=Path, default=Path("models/ling-tiny"))
    parser.add_argument(
        "--requests",
        type=int,
        default=48,
        help=f"requests per path and concurrency, at least {ROUNDS}x the concurrency "
        "(default: %(default)s)",
    )
    parser.add_argument("--max-tokens", type=int, default=16, help="(default: %(default)s)")
    parser.add_argument("--prompt-len", type=int, default=32, help="(default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only; no RESULTS.md")
    args = parser.parse_args()
    if args.requests < 1 or args.max_tokens < 2 or args.prompt_len < 1:
        parser.error("--requests and --prompt-len must be >= 1, --max-tokens >= 2")
    return BenchConfig(
        args.model, args.requests, args.max_tokens, args.prompt_len, (1, 64), not args.no_write
    )


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`, which stops the cluster


def main() -> int:
    cfg = parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    slots = ("--num-slots", str(WORKER_SLOTS))
    cluster = Cluster(ClusterSpec(cfg.model_dir, 1, 1, http_port=0, grpc_port=0, worker_args=slots))
    try:
        cluster.start()
        results, prompts = asyncio.run(measure(cluster, cfg))
    finally:
        cluster.stop()
    table = markdown_table(HEADERS, table_rows(results, cfg.concurrencies))
    notes = notes_for(results, cfg, prompts)
    print(table)
    print(notes)
    if cfg.write:
        append_results(
            "Gateway cost: HTTP and gRPC gateway vs workers called directly", table, notes
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
