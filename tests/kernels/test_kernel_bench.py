"""bench/gpu_kernels.py: the table code path on tiny CPU sizes, and the no-GPU exit."""

from __future__ import annotations

import pytest
import torch

from bench import gpu_kernels


def test_dry_run_prints_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_kernels.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for row in ("ceiling: device copy", "ceiling: bf16 matmul", "Lightning decode B=3",
                "Lightning prefill T=40", "MLA decode ctx=20 B=2", "fused MoE T=5",
                "decode step, 8 layers, B=64"):
        assert row in out


def test_decode_step_bytes_match_a_hand_count_for_flash_shapes() -> None:
    """B=1: lm_head 1.29 GB, 7 Lightning layers of ~168 MB, one MLA layer of ~78 MB, 8 x
    (8 routed + 1 shared) experts of 25 MB: about 4.4 GB; more sequences touch more experts."""
    from bench.decode_step import FLASH_8, step_bytes
    from engine.config_parse import parse_config

    cfg = parse_config(dict(FLASH_8))
    one = step_bytes(cfg, 1, 1024, torch.bfloat16)
    assert 4.2e9 < one < 4.7e9
    sixteen, sixty_four = (step_bytes(cfg, b, 1024, torch.bfloat16) for b in (16, 64))
    assert one < sixteen < sixty_four


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_gpu_it_says_so_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_kernels.main([]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out
