"""kernels.api dispatch: Triton for CUDA tensors unless DUET_KERNELS=ref, the twins otherwise."""

from __future__ import annotations

import pytest
import torch

from kernels import api, norm_ref
from kernels import triton_common as tc


def test_cpu_tensors_use_the_twins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DUET_KERNELS", raising=False)
    x = torch.randn(3, 8)
    assert api.backend_for(x) == "ref"
    weight = torch.randn(8)
    assert torch.equal(api.rms_norm(x, weight, 1e-6), norm_ref.rms_norm_ref(x, weight, 1e-6))


def test_unknown_backend_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUET_KERNELS", "cuda")
    with pytest.raises(ValueError, match="DUET_KERNELS"):
        api.backend_for(torch.zeros(1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_use_triton_unless_ref(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(3, 8, device="cuda")
    monkeypatch.delenv("DUET_KERNELS", raising=False)
    assert api.backend_for(x) == "triton"
    monkeypatch.setenv("DUET_KERNELS", "ref")
    assert api.backend_for(x) == "ref"


def test_triton_wrappers_refuse_cpu_tensors_outside_the_interpreter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="need CUDA tensors"):
        tc.check_device({"x": torch.zeros(1)})


def test_mixed_devices_are_rejected() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a second device kind")
    with pytest.raises(ValueError, match="share one device"):
        tc.check_device({"x": torch.zeros(1), "y": torch.zeros(1, device="cuda")})

