"""The prefill engine with its prefix cache: a hit at any block boundary sends the same caches
(every layer's latents and final state, the last hidden state) as a prefill without the cache,
computes only the uncached suffix, and leaves pools and pins at zero."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine.model.ling import LingModel
from engine.prefix_config import PrefixCacheConfig
from engine.transfer.tcp import TcpReceiver
from engine.transfer_layout import expected_tensors
from engine.worker_config import WorkerConfig
from prefill_worker.engine import PrefillEngine, PrefillResult
from prefill_worker.prefix_cache import WorkerPrefixCache

BS = 64
BLOCKS = 5
LONG = [random.Random(7).randrange(3, 2000) for _ in range(BLOCKS * BS + 10)]


class Harness:
    """One engine and a TCP receiver that keeps every request's tensors."""

    def __init__(self, model_dir: Path, model: LingModel, cache: WorkerPrefixCache | None):
        self.model, self.cache = model, cache
        self.buffers: dict[tuple[str, str], torch.Tensor] = {}
        self.receiver = TcpReceiver(self._destination, on_expired=lambda _rid: None)
        cfg = WorkerConfig(role="prefill", model_dir=model_dir, prefill_chunk=96)
        self.engine = PrefillEngine(cfg, model, prefix_cache=cache)
        self._shapes: dict[str, dict[str, torch.Size]] = {}

    def _destination(self, request_id: str, name: str) -> torch.Tensor:
        e = self._expected[request_id][name]
        return self.buffers.setdefault((request_id, name), torch.empty(e.shape, dtype=e.dtype))

    def run(self, rid: str, prompt: list[int]) -> PrefillResult:
        expected = expected_tensors(self.model.cfg, len(prompt), self.model.dtype)
        self._expected = getattr(self, "_expected", {})
        self._expected[rid] = {e.name: e for e in expected}
        descriptor = self.receiver.reserve(rid, expected, 30.0)
        result = self.engine.submit(rid, prompt, descriptor, 30.0).result(timeout=60)
        self.receiver.wait_committed(rid, 30.0)
        return result

    def tensors(self, rid: str) -> dict[str, torch.Tensor]:
        return {name: t for (r, name), t in self.buffers.items() if r == rid}

    def close(self) -> None:
        self.engine.close()
        self.receiver.close()


@pytest.fixture
def pair(tiny_model_dir: Path, tiny_model: LingModel) -> Iterator[tuple[Harness, Harness]]:
    cache = WorkerPrefixCache(PrefixCacheConfig(snapshots="every"), tiny_model_dir, "cpu")
    cached, plain = (
        Harness(tiny_model_dir, tiny_model, cache),
        Harness(tiny_model_dir, tiny_model, None),
    )
    try:
        yield cached, plain
    finally:
        cached.close()
        plain.close()


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        err = ((a[name] - b[name]).abs() / (1 + b[name].abs())).max().item()
        assert err < 1e-4, (name, err)  # fp32: only the summation order differs


def test_hits_at_every_block_boundary_send_the_same_caches(
    pair: tuple[Harness, Harness],
) -> None:
    cached, plain = pair
    first = cached.run("long", LONG)
    assert first.computed_tokens == len(LONG)
    prompts = {
        f"cut{k}": [*LONG[: k * BS], 11 + k, 22, 33, 44 + k, 55] for k in range(1, BLOCKS + 1)
    }
    prompts["exact"] = LONG[: 2 * BS]  # ends on a boundary: its last block is recomputed
    expected_hit = {**{f"cut{k}": k * BS for k in range(1, BLOCKS + 1)}, "exact": BS}
    for rid, prompt in prompts.items():
        got = cached.run(rid, prompt)
        plain.run(rid, prompt)
        assert got.computed_tokens == len(prompt) - expected_hit[rid], rid
        _assert_same(cached.tensors(rid), plain.tensors(rid))
    load = cached.engine.load()
    prefix = load["prefix_cache"]
    assert isinstance(prefix, dict)
    assert prefix["hits"] == len(prompts) and prefix["pinned_blocks"] == 0
    assert prefix["hit_tokens"] == sum(expected_hit.values())
    assert load["free_pages"] == load["total_pages"] and load["integrity_ok"]


def test_a_follow_up_turn_resumes_after_the_first_turn(pair: tuple[Harness, Harness]) -> None:
    cached, plain = pair
    turn1 = LONG[: 3 * BS + 20]
    cached.run("turn1", turn1)
    turn2 = turn1 + [7, 8, 9] * 30  # the answer and the next question
    got = cached.run("turn2", turn2)
    plain.run("turn2", turn2)
    assert got.computed_tokens == len(turn2) - 3 * BS  # every:1 kept all three full blocks
    _assert_same(cached.tensors("turn2"), plain.tensors("turn2"))


@pytest.mark.gpu
def test_on_cuda_l1_lives_on_the_device_and_hits_match(tiny_model_dir: Path) -> None:
    model = LingModel.from_pretrained(tiny_model_dir, torch.float32, "cuda")
    cache = WorkerPrefixCache(PrefixCacheConfig(snapshots="every"), tiny_model_dir, "cuda")
    cached, plain = Harness(tiny_model_dir, model, cache), Harness(tiny_model_dir, model, None)
    try:
        cached.run("long", LONG)
        prompt = [*LONG[: 3 * BS], 9, 8, 7]
        assert cached.run("hit", prompt).computed_tokens == 3
        plain.run("hit", prompt)
        _assert_same(cached.tensors("hit"), plain.tensors("hit"))
        found = cache.lookup(prompt)
        assert found.handle is not None and found.handle.latents.device.type == "cuda"
        cache.finished(found, len(prompt))
        assert cache.load()["l1_bytes"] > 0 and cache.load()["pinned_blocks"] == 0
    finally:
        cached.close()
        plain.close()


def test_a_bf16_model_resumes_with_its_own_latent_dtype(tiny_model_dir: Path) -> None:
    """The GPU's default dtype, on the CPU: bf16 latents in L1, fp32 snapshots."""
    model = LingModel.from_pretrained(tiny_model_dir, torch.bfloat16)
    cache = WorkerPrefixCache(PrefixCacheConfig(snapshots="every"), tiny_model_dir, "cpu")
    cached, plain = Harness(tiny_model_dir, model, cache), Harness(tiny_model_dir, model, None)
    try:
        cached.run("long", LONG)
        prompt = [*LONG[: 2 * BS], 4, 5, 6]
        assert cached.run("hit", prompt).computed_tokens == 3
        plain.run("hit", prompt)
        for name, got in cached.tensors("hit").items():
            want = plain.tensors("hit")[name]
            assert got.dtype == want.dtype, name
            # bf16: chunking changes rounding, not results; elementwise maxima of a few bf16
            # ulps vary by CPU, so compare norms (a wrong resume point is off by ~100%)
            err = ((got.float() - want.float()).norm() / (1 + want.float().norm())).item()
            assert err < 5e-2, (name, err)
        found = cache.lookup(prompt)
        assert found.handle is not None and found.handle.latents.dtype == torch.bfloat16
        assert found.handle.state.dtype == torch.float32
        cache.finished(found, len(prompt))
    finally:
        cached.close()
        plain.close()
