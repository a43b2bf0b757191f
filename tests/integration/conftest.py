from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.procs import WorkerProc, start_worker, wait_pools_empty


@pytest.fixture(scope="module")
def pair(tiny_model_dir: Path) -> Iterator[tuple[WorkerProc, WorkerProc]]:
    """One prefill and one decode worker shared by a module's scenarios; each test must leave
    both pools empty (checked again at teardown)."""
    prefill = start_worker(
        "prefill", tiny_model_dir, "--prefill-chunk", "32", "--max-batch-tokens", "512"
    )
    decode = start_worker("decode", tiny_model_dir, "--num-pages", "512", "--num-slots", "64")
    try:
        yield prefill, decode
        wait_pools_empty(prefill)
        wait_pools_empty(decode)
    finally:
        prefill.stop()
        decode.stop()
