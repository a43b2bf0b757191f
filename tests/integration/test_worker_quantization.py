"""Workers check DUET_QUANTIZATION against the checkpoint and the tensor-parallel size against
the model: a mismatch or an unsupported value fails the start with a message (never a silent
fallback), and an FP8 checkpoint serves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.model_builder.fp8_copy import write_fp8_copy
from tests.integration.procs import start_worker


def _start_fails(model_dir: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "duet", "prefill-worker", "--model", str(model_dir)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    return proc.stderr


@pytest.fixture(scope="module")
def fp8_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ling-tiny-fp8")
    write_fp8_copy(tiny_model_dir, out, block=(64, 64))
    return out


def test_a_declared_quantization_must_match_the_checkpoint(
    tiny_model_dir: Path, fp8_dir: Path
) -> None:
    err = _start_fails(tiny_model_dir, {"DUET_QUANTIZATION": "fp8"})
    assert "DUET_QUANTIZATION=fp8" in err and "declares no quantization_config" in err
    err = _start_fails(fp8_dir, {"DUET_QUANTIZATION": "none"})
    assert "declares an fp8 quantization_config" in err
    assert "supported values" in _start_fails(tiny_model_dir, {"DUET_QUANTIZATION": "int4"})


def test_a_tensor_parallel_size_the_model_cannot_split_fails_the_start(
    tiny_model_dir: Path,
) -> None:
    err = _start_fails(tiny_model_dir, {"DUET_TENSOR_PARALLEL_SIZE": "4"})
    assert "tensor parallel size 4: group_norm_size=2 is not divisible by 4" in err
    err = _start_fails(tiny_model_dir, {"DUET_TENSOR_PARALLEL_SIZE": "8"})
    assert "num_attention_heads=4 is not divisible by 8" in err
    err = _start_fails(tiny_model_dir, {"DUET_TENSOR_PARALLEL_SIZE": "3"})
    assert "--tensor-parallel-size must be one of (1, 2, 4, 8)" in err


def test_an_fp8_checkpoint_serves(fp8_dir: Path) -> None:
    worker = start_worker("prefill", fp8_dir, env={"DUET_QUANTIZATION": "fp8"})
    try:
        load = worker.load()
        assert load.role == "prefill" and load.integrity_ok
    finally:
        worker.stop()
