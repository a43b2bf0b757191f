"""The GPU transfer benchmark: its payloads are the Ling-2.6-flash sizes the issue names, its
latent destinations tile the prompt, and without CUDA it skips cleanly (exit 0)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bench.gpu_transfer import PAYLOADS, expected, nbytes


def test_payloads_are_flash_sized() -> None:
    assert nbytes(expected(PAYLOADS["states"])) == 56 * 2**20  # 28 x [32, 128, 128] fp32
    assert nbytes(expected(PAYLOADS["latents 4k"])) == 18 * 2**20  # 4 x [4096, 576] bf16
    assert nbytes(expected(PAYLOADS["both"])) == 74 * 2**20


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path without CUDA")
def test_without_cuda_it_skips_and_exits_zero() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_transfer", "--no-write"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "no CUDA device" in run.stdout
