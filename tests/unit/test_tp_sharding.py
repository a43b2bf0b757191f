"""Tensor-parallel slicing: the ranks' slices put back together are the whole tensor, split
along the dimension each layer needs (heads, MLP columns), and a model that cannot be split
evenly is refused with the reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from engine.config import load_config
from engine.parallel.sharding import RankShard, shard_weight, shardability_problems


def _slices(name: str, t: torch.Tensor, world: int) -> list[torch.Tensor]:
    return [shard_weight(name, t, RankShard(r, world)) for r in range(world)]


@pytest.mark.parametrize("world", [2, 4])
def test_fused_qkv_splits_each_of_q_k_v_by_heads(world: int) -> None:
    heads, dim, hidden = 8, 4, 6
    qkv = torch.randn(3 * heads * dim, hidden)
    per = heads // world
    for r, part in enumerate(
        _slices("model.layers.0.attention.query_key_value.weight", qkv, world)
    ):
        want = qkv.view(3, heads, dim, hidden)[:, r * per : (r + 1) * per].reshape(-1, hidden)
        assert torch.equal(part, want)


@pytest.mark.parametrize(
    ("name", "dim"),
    [
        ("model.layers.0.attention.g_proj.weight", 0),
        ("model.layers.0.attention.g_norm.weight", 0),
        ("model.layers.7.attention.q_b_proj.weight", 0),
        ("model.layers.7.attention.kv_b_proj.weight", 0),
        ("model.layers.7.attention.dense.weight", 1),
        ("model.layers.0.attention.dense.weight", 1),
        ("model.layers.0.mlp.gate_proj.weight", 0),
        ("model.layers.3.mlp.experts.12.up_proj.weight", 0),
        ("model.layers.3.mlp.shared_experts.gate_proj.weight", 0),
        ("model.layers.3.mlp.experts.0.down_proj.weight", 1),
        ("model.layers.3.mlp.shared_experts.down_proj.weight", 1),
    ],
)
def test_split_tensors_concatenate_back_to_the_whole(name: str, dim: int) -> None:
    t = torch.randn(16, 8) if name.count("norm") == 0 else torch.randn(16)
    parts = _slices(name, t, 4)
    assert all(p.shape[dim] == t.shape[dim] // 4 for p in parts)
    assert torch.equal(torch.cat(parts, dim=dim), t)
    assert all(p.is_contiguous() and p.untyped_storage().nbytes() < t.nbytes for p in parts)


@pytest.mark.parametrize(
    "name",
    [
        "model.word_embeddings.weight",
        "lm_head.weight",
        "model.layers.3.mlp.gate.weight",
        "model.layers.3.mlp.gate.expert_bias",
        "model.layers.7.attention.kv_a_proj_with_mqa.weight",
        "model.layers.7.attention.q_a_proj.weight",
        "model.layers.0.attention.query_layernorm.weight",
        "model.layers.0.input_layernorm.weight",
    ],
)
def test_replicated_tensors_are_whole_on_every_rank(name: str) -> None:
    t = torch.randn(8, 4)
    assert all(p is t for p in _slices(name, t, 2))


def test_a_model_that_cannot_split_evenly_names_every_reason(tiny_model_dir: Path) -> None:
    tiny_cfg = load_config(tiny_model_dir)
    assert shardability_problems(tiny_cfg, 2) == []
    odd = dataclasses.replace(tiny_cfg, moe_intermediate_size=96, intermediate_size=510)
    assert shardability_problems(odd, 4) == [
        "group_norm_size=2 is not divisible by 4",
        "intermediate_size=510 is not divisible by 4",
    ]
