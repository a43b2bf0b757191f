"""Shared fixtures: the tiny model (built by `make model`, or here when missing) and a
checkpoint-only copy with random weights for loader tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny default model with tokenizer (DUET_TEST_MODEL overrides the path)."""
    path = Path(os.environ.get("DUET_TEST_MODEL", REPO / "models" / "ling-tiny"))
    if not (path / "model.safetensors").is_file():
        from engine.model_builder.tiny_model import build_tiny_model

        build_tiny_model(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from engine.model.ling import LingModel

    return LingModel.from_pretrained(tiny_model_dir)
