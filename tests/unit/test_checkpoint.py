"""Checkpoint loading: round trips, shards, dtypes, and one error listing every problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.config import ConfigError, load_config
from engine.model.checkpoint import CheckpointError, load_state_dict, save_checkpoint
from engine.model.ling import LingModel
from engine.model_builder.tiny_model import TINY_CONFIG, random_weights, write_model_dir

PROMPT = [5, 99, 1000, 7, 42, 1500, 3]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    write_model_dir(d, TINY_CONFIG, seed=5)
    return d


def _copy_with(
    src: Path, dst: Path, tensors: dict[str, torch.Tensor], config: dict | None = None
) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(
        json.dumps(config or json.loads((src / "config.json").read_text()))
    )
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_save_then_load_gives_same_logits(ckpt: Path, tmp_path: Path) -> None:
    a = LingModel.from_pretrained(ckpt).forward_full(PROMPT)[0]
    tensors = load_file(str(ckpt / "model.safetensors"))
    b_dir = tmp_path / "resaved"
    (b_dir).mkdir()
    (b_dir / "config.json").write_text((ckpt / "config.json").read_text())
    save_checkpoint(tensors, b_dir)
    b = LingModel.from_pretrained(b_dir).forward_full(PROMPT)[0]
    assert torch.equal(a, b)


def test_sharded_checkpoint_loads_to_same_logits(ckpt: Path, tmp_path: Path) -> None:
    tensors = load_file(str(ckpt / "model.safetensors"))
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text((ckpt / "config.json").read_text())
    files = save_checkpoint(tensors, d, max_shard_bytes=2_000_000)
    assert len(files) > 2 and (d / "model.safetensors.index.json").is_file()
    assert not (d / "model.safetensors").exists()
    a = LingModel.from_pretrained(ckpt).forward_full(PROMPT)[0]
    assert torch.equal(a, LingModel.from_pretrained(d).forward_full(PROMPT)[0])


def test_bf16_file_loads_converted_to_fp32(ckpt: Path, tmp_path: Path) -> None:
    tensors = {
        k: v.to(torch.bfloat16) for k, v in load_file(str(ckpt / "model.safetensors")).items()
    }
    d = _copy_with(ckpt, tmp_path / "bf16", tensors)
    cfg = load_config(d)
    loaded = load_state_dict(d, cfg, torch.float32)
    assert all(t.dtype == torch.float32 for t in loaded.values())


def test_every_problem_is_reported_at_once(ckpt: Path, tmp_path: Path) -> None:
    tensors = load_file(str(ckpt / "model.safetensors"))
    del tensors["model.layers.2.attention.g_proj.weight"]
    tensors["model.layers.3.attention.kv_b_proj.weight"] = torch.zeros(3, 3)
    tensors["model.layers.0.attention.surprise.weight"] = torch.zeros(2)
    d = _copy_with(ckpt, tmp_path / "broken", tensors)
    with pytest.raises(CheckpointError) as err:
        LingModel.from_pretrained(d)
    text = str(err.value)
    assert "missing: model.layers.2.attention.g_proj.weight" in text
    assert "wrong shape: model.layers.3.attention.kv_b_proj.weight is [3, 3]" in text
    assert "unexpected: model.layers.0.attention.surprise.weight" in text


def test_alias_and_ignored_names_load(ckpt: Path, tmp_path: Path) -> None:
    tensors = load_file(str(ckpt / "model.safetensors"))
    name = "model.layers.1.mlp.gate.expert_bias"
    tensors[name.replace("expert_bias", "e_score_correction_bias")] = tensors.pop(name)
    tensors["model.layers.0.attention.slope"] = torch.zeros(4)
    d = _copy_with(ckpt, tmp_path / "alias", tensors)
    a = LingModel.from_pretrained(ckpt).forward_full(PROMPT)[0]
    assert torch.equal(a, LingModel.from_pretrained(d).forward_full(PROMPT)[0])


def test_checkpoint_without_mtp_loads(ckpt: Path, tmp_path: Path) -> None:
    tensors = {
        k: v
        for k, v in load_file(str(ckpt / "model.safetensors")).items()
        if not k.startswith("model.layers.8.")
    }
    model = LingModel.from_pretrained(_copy_with(ckpt, tmp_path / "nomtp", tensors))
    assert model.mtp is None
    assert LingModel.from_pretrained(ckpt).mtp is not None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model_type": "llama"}, "model_type"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
        ({"quantization_config": {"quant_method": "awq"}}, "quantization_config"),
        ({"hidden_size": "256"}, "hidden_size"),
        ({"num_experts": 15}, "n_group"),
        ({"score_function": "softmax"}, "score_function"),
    ],
)
def test_unsupported_config_names_the_field(tmp_path: Path, change: dict, field: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG | change))
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        load_config(tmp_path)


def test_missing_required_field_is_named(tmp_path: Path) -> None:
    cfg = dict(TINY_CONFIG)
    del cfg["kv_lora_rank"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="field 'kv_lora_rank' is required"):
        load_config(tmp_path)


def test_random_weights_are_seeded() -> None:
    a, b = random_weights(TINY_CONFIG, 3), random_weights(TINY_CONFIG, 3)
    assert all(torch.equal(a[k], b[k]) for k in a)
