"""bench/gpu_kernels.py: the table code path on tiny CPU sizes, and the no-GPU exit."""

from __future__ import annotations

import pytest
import torch

from bench import gpu_kernels


def test_dry_run_prints_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_kernels.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for row in ("ceiling: device copy", "ceiling: bf16 matmul", "Lightning decode B=3",
                "Lightning prefill T=40", "MLA decode ctx=20 B=2", "fused MoE T=5"):
        assert row in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_gpu_it_says_so_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_kernels.main([]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out
