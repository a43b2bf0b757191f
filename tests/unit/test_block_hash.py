"""Chained block hashes and the model fingerprint: what changes them and what does not."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.cache.block_hash import FingerprintError, block_hashes, model_fingerprint

REPO = Path(__file__).resolve().parents[2]
FP = "0123456789abcdef"
BS = 4


def _model_dir(root: Path, **overrides: object) -> Path:
    """A small model directory: config.json, model.safetensors, tokenizer.json."""
    root.mkdir(parents=True)
    config = {"model_type": "bailing_hybrid", "hidden_size": 8} | overrides.get("config", {})
    (root / "config.json").write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "model.norm.weight": torch.randn(8, generator=gen),
        "lm_head.weight": torch.randn(16, 8, generator=gen),
    }
    tensors |= overrides.get("tensors", {})
    save_file(tensors, str(root / "model.safetensors"))
    (root / "tokenizer.json").write_text(str(overrides.get("tokenizer", '{"model": "bpe"}')))
    return root


def test_equal_tokens_give_equal_hashes_and_partial_blocks_have_none() -> None:
    tokens = list(range(10))  # 2 full blocks of 4 and a partial one of 2
    hashes = block_hashes(tokens, BS, FP)
    assert len(hashes) == 2 and len(set(hashes)) == 2
    assert all(len(h) == 32 and int(h, 16) >= 0 for h in hashes)
    assert block_hashes(list(tokens), BS, FP) == hashes
    assert block_hashes(tokens[:8], BS, FP) == hashes  # the partial block adds nothing
    assert block_hashes(tokens[:3], BS, FP) == []
    assert block_hashes([], BS, FP) == []


def test_a_token_change_changes_its_block_and_every_later_one_only() -> None:
    tokens = list(range(100, 124))  # 6 blocks
    base = block_hashes(tokens, BS, FP)
    for position in (0, 5, 13, 23):
        changed = list(tokens)
        changed[position] += 1
        other = block_hashes(changed, BS, FP)
        block = position // BS
        assert other[:block] == base[:block], position
        assert all(a != b for a, b in zip(other[block:], base[block:], strict=True)), position


def test_chaining_covers_the_whole_prefix_not_just_the_block() -> None:
    # Same second block after different first blocks: different hashes for block 1.
    a = block_hashes([1, 2, 3, 4, 9, 9, 9, 9], BS, FP)
    b = block_hashes([5, 6, 7, 8, 9, 9, 9, 9], BS, FP)
    assert a[1] != b[1]


def test_fingerprint_and_block_size_separate_namespaces() -> None:
    tokens = list(range(16))
    base = block_hashes(tokens, BS, FP)
    other_fp = block_hashes(tokens, BS, FP[:-1] + "0")
    assert all(a != b for a, b in zip(base, other_fp, strict=True))
    assert block_hashes(tokens, 8, FP)[0] not in base


def test_extension_keeps_the_prefix_hashes() -> None:
    turn1 = list(range(12))
    turn2 = [*turn1, 50, 51, 52, 53, 54]
    assert block_hashes(turn2, BS, FP)[:3] == block_hashes(turn1, BS, FP)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="block_size"):
        block_hashes([1, 2], 0, FP)
    with pytest.raises(ValueError, match="token ids"):
        block_hashes([1, -2, 3, 4], BS, FP)
    with pytest.raises(ValueError, match="token ids"):
        block_hashes([1, 2**32, 3, 4], BS, FP)


def test_hashes_and_fingerprint_are_stable_across_processes(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "m")
    tokens = list(range(40))
    code = (
        "import json, sys\n"
        "from engine.cache.block_hash import block_hashes, model_fingerprint\n"
        "fp = model_fingerprint(sys.argv[1])\n"
        f"print(json.dumps([fp, block_hashes({tokens}, {BS}, fp)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(model)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    fp = model_fingerprint(model)
    assert json.loads(out.stdout) == [fp, block_hashes(tokens, BS, fp)]


def test_fingerprint_ignores_location_and_json_formatting(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "a")
    fp = model_fingerprint(model)
    assert len(fp) == 16
    copy = tmp_path / "b"
    shutil.copytree(model, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config, separators=(",", ":")))
    assert model_fingerprint(copy) == fp
    assert model_fingerprint(copy / "config.json") == fp


@pytest.mark.parametrize(
    "change",
    [
        {"config": {"hidden_size": 9}},
        {"tensors": {"model.norm.weight": torch.zeros(9)}},  # shape
        {"tensors": {"model.norm.weight": torch.zeros(8, dtype=torch.bfloat16)}},  # dtype
        {"tensors": {"model.extra.weight": torch.zeros(2)}},  # a new name
        {"tokenizer": '{"model": "bpe", "merges": []}'},
    ],
)
def test_fingerprint_changes_with_config_layout_and_tokenizer(tmp_path: Path, change: dict) -> None:
    assert model_fingerprint(_model_dir(tmp_path / "a")) != model_fingerprint(
        _model_dir(tmp_path / "b", **change)
    )


def test_fingerprint_tells_apart_same_layout_different_weights(tmp_path: Path) -> None:
    base = _model_dir(tmp_path / "a")
    tuned = _model_dir(tmp_path / "b", tensors={"lm_head.weight": torch.ones(16, 8)})
    assert model_fingerprint(base) != model_fingerprint(tuned)


def test_fingerprint_reads_headers_not_the_whole_checkpoint(tmp_path: Path) -> None:
    """A 2 GiB checkpoint (sparse file) fingerprints in well under the time to read it."""
    model = _model_dir(tmp_path / "big")
    path = model / "model.safetensors"
    size = 2 * 1024**3
    header = json.dumps({"w": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]}})
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode())
        f.truncate(8 + len(header) + size)
    start = time.perf_counter()
    fp = model_fingerprint(model)
    assert time.perf_counter() - start < 0.5
    assert fp != model_fingerprint(_model_dir(tmp_path / "small"))


def test_sharded_checkpoints_and_config_mappings(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "sharded")
    (model / "model.safetensors").unlink()
    save_file({"a.weight": torch.ones(4)}, str(model / "model-00001-of-00002.safetensors"))
    save_file({"b.weight": torch.ones(2, 2)}, str(model / "model-00002-of-00002.safetensors"))
    weight_map = {"a.weight": "model-00001-of-00002.safetensors"}
    weight_map["b.weight"] = "model-00002-of-00002.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    fp = model_fingerprint(model)
    assert fp == model_fingerprint(model)
    config = json.loads((model / "config.json").read_text())
    assert model_fingerprint(config) == model_fingerprint(dict(reversed(config.items())))
    assert model_fingerprint(config) != fp


def test_missing_or_broken_files_are_fingerprint_errors(tmp_path: Path) -> None:
    with pytest.raises(FingerprintError, match=r"config\.json"):
        model_fingerprint(tmp_path)
    model = _model_dir(tmp_path / "m")
    (model / "model.safetensors").write_bytes(b"\x01")
    with pytest.raises(FingerprintError, match="safetensors"):
        model_fingerprint(model)
    (model / "model.safetensors").unlink()
    with pytest.raises(FingerprintError, match=r"no model\.safetensors"):
        model_fingerprint(model)
