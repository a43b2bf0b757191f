"""An FP8 copy of a model directory: every linear weight stored as float8 e4m3 with per-block
scales (`.weight_scale_inv`), config.json declaring `quant_method: fp8`; embeddings, lm_head,
norms and the router stay as they are (as FP8 releases keep them). For tests and for trying
the FP8 load path without a real FP8 checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.model.checkpoint import checkpoint_files, save_checkpoint
from engine.model.fp8 import quantize_blockwise

KEPT = ("word_embeddings.weight", "lm_head.weight", "norm.weight", ".mlp.gate.weight")


def is_quantized_name(name: str, t: torch.Tensor) -> bool:
    return name.endswith(".weight") and t.dim() == 2 and not name.endswith(KEPT)


def write_fp8_copy(src: Path, dst: Path, block: tuple[int, int] = (128, 128)) -> int:
    """Writes the copy; returns how many weights were quantized."""
    tensors: dict[str, torch.Tensor] = {}
    for path in checkpoint_files(src):
        tensors |= load_file(str(path))
    out: dict[str, torch.Tensor] = {}
    quantized = 0
    for name, t in tensors.items():
        if is_quantized_name(name, t):
            values, scale = quantize_blockwise(t, block)
            out[name], out[name + "_scale_inv"] = values, scale
            quantized += 1
        else:
            out[name] = t
    dst.mkdir(parents=True, exist_ok=True)
    for extra in src.iterdir():
        weights = extra.suffix == ".safetensors" or extra.name == "model.safetensors.index.json"
        if extra.is_file() and not weights:
            shutil.copy2(extra, dst / extra.name)
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": list(block),
    }
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_checkpoint(out, dst)
    return quantized
