"""Reading and writing safetensors checkpoints (single file or sharded with an index)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.config import ModelConfig
from engine.model.fp8 import FP8_DTYPES, Fp8Error, Fp8Scheme, dequantize, scale_target
from engine.model.tensor_names import alias_name, expected_tensor_shapes, is_ignored

log = logging.getLogger(__name__)
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
LOADABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class CheckpointError(ValueError):
    """The checkpoint's files or tensors do not match what the config describes."""


def checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from exc
        files = sorted({model_dir / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}")
        return files
    single = model_dir / SINGLE_FILE
    if single.is_file():
        return [single]
    raise CheckpointError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}")


def iter_tensors(model_dir: Path) -> Iterator[tuple[str, Path, str]]:
    """(canonical name, file, name in file) for every tensor in the checkpoint."""
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield alias_name(key), path, key


def _describe_problems(
    found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> list[str]:
    problems = [
        f"missing: {n} (expected shape {list(s)})" for n, s in expected.items() if n not in found
    ]
    problems += [
        f"unexpected: {n} (shape {list(s)})" for n, s in found.items() if n not in expected
    ]
    problems += [
        f"wrong shape: {n} is {list(found[n])}, expected {list(s)}"
        for n, s in expected.items()
        if n in found and tuple(found[n]) != tuple(s)
    ]
    return problems


def _scan(
    model_dir: Path,
) -> tuple[dict[Path, list[tuple[str, str]]], dict[str, tuple[Path, str]]]:
    """(file -> [(weight name, key)], weight name -> (file, key) of its FP8 scale)."""
    by_file: dict[Path, list[tuple[str, str]]] = {}
    scales: dict[str, tuple[Path, str]] = {}
    for name, path, key in iter_tensors(model_dir):
        target = scale_target(name)
        if target is not None:
            scales[target] = (path, key)
        elif not is_ignored(name):
            by_file.setdefault(path, []).append((name, key))
    return by_file, scales


def _read_scales(scales: dict[str, tuple[Path, str]]) -> dict[str, torch.Tensor]:
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for weight, (path, key) in scales.items():
        by_file.setdefault(path, []).append((weight, key))
    out = {}
    for path, entries in by_file.items():
        with safe_open(str(path), framework="pt", device="cpu") as f:
            out |= {weight: f.get_tensor(key) for weight, key in entries}
    return out


def load_state_dict(
    model_dir: str | Path,
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    keep: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """All checkpoint tensors converted to `dtype` (norms and router stay fp32; FP8 weights are
    dequantized with their scales), after checking in one pass that names and shapes are
    exactly what the config implies. MTP is optional. `keep(name, tensor)` picks what to hold
    of each tensor (a tensor-parallel rank's slice) before it moves to `device`."""
    model_dir = Path(model_dir)
    try:
        scheme = Fp8Scheme.from_config(cfg.raw)
    except Fp8Error as exc:
        raise CheckpointError(f"{model_dir}: {exc}") from exc
    by_file, scale_keys = _scan(model_dir)
    shapes: dict[str, tuple[int, ...]] = {}
    for path, entries in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            shapes |= {name: tuple(f.get_slice(key).get_shape()) for name, key in entries}
    has_mtp = any(n.startswith(f"model.layers.{cfg.num_hidden_layers}.") for n in shapes)
    expected = expected_tensor_shapes(cfg, include_mtp=cfg.has_mtp and has_mtp)
    problems = _describe_problems(shapes, expected)
    problems += [f"unexpected: a scale for {w}, which is not loaded" for w in scale_keys
                 if w not in shapes]  # fmt: skip
    if problems:
        listing = "\n  ".join(problems)
        raise CheckpointError(f"{model_dir}: checkpoint does not match config.json:\n  {listing}")
    scales = _read_scales(scale_keys)
    tensors: dict[str, torch.Tensor] = {}
    start, loaded_bytes = time.monotonic(), 0
    for i, (path, entries) in enumerate(by_file.items(), 1):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name, key in entries:
                t = _weight_values(name, f.get_tensor(key), scales.get(name), scheme)
                if keep is not None:
                    t = keep(name, t)
                tensors[name] = t.to(device=device, dtype=storage_dtype(name, dtype))
                loaded_bytes += tensors[name].numel() * tensors[name].element_size()
        log.info(
            "loaded %s (%d/%d files, %.1f GiB so far, %.0f s)",
            path.name, i, len(by_file), loaded_bytes / 2**30, time.monotonic() - start,
        )  # fmt: skip
    return tensors


def _weight_values(
    name: str, t: torch.Tensor, scale: torch.Tensor | None, scheme: Fp8Scheme | None
) -> torch.Tensor:
    """The tensor as stored, or dequantized when it is an FP8 weight."""
    if t.dtype in FP8_DTYPES or scale is not None:
        if scheme is None:
            raise CheckpointError(
                f"{name}: float8 weights, but config.json has no fp8 quantization_config"
            )
        if scale is None:
            raise CheckpointError(f"{name}: float8 weight without a weight_scale tensor")
        try:
            return dequantize(name, t, scale, scheme.block)
        except Fp8Error as exc:
            raise CheckpointError(str(exc)) from exc
    if t.dtype not in LOADABLE_DTYPES:
        raise CheckpointError(f"{name}: dtype {t.dtype} not supported (fp32, bf16, fp16, fp8)")
    return t


def storage_dtype(name: str, run_dtype: torch.dtype) -> torch.dtype:
    """Routing and norm weights are kept in fp32: the spec computes them in fp32."""
    if name.endswith(("layernorm.weight", "norm.weight", ".mlp.gate.weight", "expert_bias")):
        return torch.float32
    return run_dtype


def save_checkpoint(
    tensors: dict[str, torch.Tensor], model_dir: str | Path, max_shard_bytes: int | None = None
) -> list[Path]:
    """Write tensors as one model.safetensors, or as shards plus an index when they exceed
    `max_shard_bytes`. Returns the written files."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if max_shard_bytes is None:
        save_file(contiguous, str(model_dir / SINGLE_FILE), metadata={"format": "pt"})
        return [model_dir / SINGLE_FILE]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in contiguous.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    files, weight_map = [], {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(model_dir / fname), metadata={"format": "pt"})
        files.append(model_dir / fname)
        weight_map |= dict.fromkeys(shard, fname)
    total = sum(t.numel() * t.element_size() for t in contiguous.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (model_dir / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return files
