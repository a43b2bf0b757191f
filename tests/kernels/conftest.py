"""Kernel tests: on a machine without CUDA the Triton kernels run in the interpreter on CPU.

TRITON_INTERPRET must be set before any Triton kernel is decorated, i.e. before the kernel
modules (kernels.lightning_prefill, ...) are imported. This conftest is imported before the test
modules of this folder, and kernels.api imports kernel modules only for CUDA tensors, so setting
it here works in a whole-suite run too.
"""

from __future__ import annotations

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def fresh_seed(request: pytest.FixtureRequest) -> int:
    """Every test case draws its own inputs, reproducibly (seeded from its node id)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    return seed
