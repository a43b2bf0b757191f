"""FP8 checkpoints: per-tensor, per-channel and per-block scales dequantize exactly; an FP8
copy of the tiny model loads to the dequantized weights and stays close to the original;
malformed FP8 checkpoints fail with a message that names the tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.config import ConfigError, load_config
from engine.model.checkpoint import CheckpointError, load_state_dict
from engine.model.fp8 import Fp8Error, dequantize, quantize_blockwise
from engine.model.ling import LingModel
from engine.model_builder.fp8_copy import write_fp8_copy

E4M3 = torch.float8_e4m3fn


def test_each_scale_granularity_dequantizes_exactly() -> None:
    values = (torch.randn(6, 10) * 4).to(E4M3)
    base = values.float()
    assert torch.equal(dequantize("w", values, torch.tensor(0.5), None), base * 0.5)
    rows = torch.arange(1.0, 7.0)
    assert torch.equal(dequantize("w", values, rows, None), base * rows[:, None])
    assert torch.equal(dequantize("w", values, rows[:, None], None), base * rows[:, None])
    grid = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # blocks of 4 x 4, ragged edges
    want = base * grid.repeat_interleave(4, 0)[:6].repeat_interleave(4, 1)[:, :10]
    assert torch.equal(dequantize("w", values, grid, (4, 4)), want)
    with pytest.raises(Fp8Error, match="weight_block_size"):  # 4 x 4 or 3 x 4? ambiguous
        dequantize("w", values, grid, None)
    big = torch.zeros(200, 300).to(E4M3)  # without a configured block, 128 x 128 is assumed
    assert dequantize("w", big, torch.ones(2, 3), None).shape == (200, 300)


def test_blockwise_quantization_round_trips_within_fp8_precision() -> None:
    w = torch.randn(300, 200)
    values, scale = quantize_blockwise(w, (128, 128))
    assert values.dtype == E4M3 and scale.shape == (3, 2)
    back = dequantize("w", values, scale, (128, 128))
    assert ((back - w).abs() / w.abs().clamp(min=0.05)).median() < 0.04


def test_bad_scales_are_rejected() -> None:
    values = torch.zeros(6, 10).to(E4M3)
    with pytest.raises(Fp8Error, match="does not tile"):
        dequantize("w", values, torch.ones(5, 5), (4, 4))
    with pytest.raises(Fp8Error, match="not float8"):
        dequantize("w", torch.zeros(6, 10), torch.ones(1), None)


@pytest.fixture(scope="module")
def fp8_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ling-tiny-fp8")
    assert write_fp8_copy(tiny_model_dir, out, block=(64, 64)) > 0
    return out


def test_an_fp8_copy_loads_to_its_dequantized_weights(
    fp8_dir: Path, tiny_model_dir: Path, tiny_model: LingModel
) -> None:
    cfg = load_config(fp8_dir)
    loaded = load_state_dict(fp8_dir, cfg, torch.float32)
    raw = load_file(str(fp8_dir / "model.safetensors"))
    name = "model.layers.0.attention.query_key_value.weight"
    assert raw[name].dtype == E4M3 and f"{name}_scale_inv" not in loaded
    assert torch.equal(
        loaded[name], dequantize(name, raw[name], raw[f"{name}_scale_inv"], (64, 64))
    )
    original = load_state_dict(tiny_model_dir, load_config(tiny_model_dir), torch.float32)
    for key, weight in loaded.items():  # every weight within fp8 precision of the original
        mine = original.get(key)
        if mine is not None and mine.dim() == 2:
            assert ((weight - mine).norm() / mine.norm()).item() < 0.05, key
    fp8 = LingModel.from_pretrained(fp8_dir)
    logits = fp8.forward_full(list(range(5, 45)))[0]
    assert logits.shape == (40, tiny_model.cfg.vocab_size) and logits.isfinite().all()


def test_malformed_fp8_checkpoints_name_the_tensor(fp8_dir: Path, tmp_path: Path) -> None:
    tensors = load_file(str(fp8_dir / "model.safetensors"))
    name = "model.layers.0.attention.dense.weight"
    del tensors[f"{name}_scale_inv"]
    for f in fp8_dir.iterdir():
        if f.suffix != ".safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"{name}: float8 weight without a weight_scale"):
        load_state_dict(tmp_path, load_config(tmp_path), torch.float32)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="awq"):
        load_config(tmp_path)
