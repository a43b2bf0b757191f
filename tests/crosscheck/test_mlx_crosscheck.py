"""Our engine's greedy decode against mlx-lm's independent `bailing_hybrid` implementation.

Both load the same checkpoint (DUET_TEST_MODEL, default models/ling-tiny) in fp32 and decode
12 tokens greedily from seeded random prompts of several lengths (one token, within one
Lightning chunk, across chunk boundaries). The tokens must be identical and every chosen
token's logprob must agree within LOGPROB_TOLERANCE. mlx-lm runs in its own venv
(.venv-mlx, made by scripts/setup_mlx_venv.sh) through tests/crosscheck/mlx_runner.py.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.mlx

REPO_ROOT = Path(__file__).resolve().parents[2]
MLX_PYTHON = REPO_ROOT / ".venv-mlx" / "bin" / "python"
DUET_BIN = REPO_ROOT / ".venv" / "bin" / "duet"
MLX_RUNNER = Path(__file__).with_name("mlx_runner.py")
PROMPT_LENGTHS = (1, 5, 17, 64, 150)
MAX_TOKENS = 12
LOGPROB_TOLERANCE = 2e-3
PROMPT_SEED = 20260
RUN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def model_dir() -> Path:
    path = Path(os.environ.get("DUET_TEST_MODEL", "models/ling-tiny"))
    path = path if path.is_absolute() else REPO_ROOT / path
    if not (path / "config.json").is_file():
        pytest.fail(f"no checkpoint at {path}: run `make model` (or set DUET_TEST_MODEL)")
    return path


@pytest.fixture(scope="module")
def mlx_python() -> Path:
    if not MLX_PYTHON.is_file():
        pytest.fail(f"{MLX_PYTHON} is missing: run scripts/setup_mlx_venv.sh (or `make test`)")
    return MLX_PYTHON


def seeded_prompt(length: int, vocab_size: int) -> list[int]:
    rng = random.Random(PROMPT_SEED + length)
    return [rng.randrange(vocab_size) for _ in range(length)]


def run_concurrently(commands: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Run the commands side by side (they share 2 cores but overlap their start-up) and
    return each one's JSON; nothing is left running, whatever fails."""
    procs = {
        name: subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, cmd in commands.items()
    }
    try:
        return {name: finish_json(proc, name) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def finish_json(proc: subprocess.Popen[str], name: str) -> dict[str, Any]:
    """Wait (bounded) for one run and parse the JSON object on its last stdout line."""
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{name} ran past {RUN_TIMEOUT_S} s")
    if proc.returncode != 0:
        pytest.fail(f"{name} exited {proc.returncode}:\n{stderr[-3000:]}")
    lines = stdout.strip().splitlines()
    if not lines:
        pytest.fail(f"{name} printed nothing; stderr:\n{stderr[-3000:]}")
    return json.loads(lines[-1])


def first_divergence(ours: list[int], theirs: list[int]) -> int | None:
    for step, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a != b:
            return step
    return None if len(ours) == len(theirs) else min(len(ours), len(theirs))


def describe_mismatch(ours: dict[str, Any], theirs: dict[str, Any], step: int) -> str:
    """Says whether a divergence looks like a near-tie flip or a real disagreement."""
    margin = theirs["margins"][step] if step < len(theirs["margins"]) else float("nan")
    pairs = zip(ours["logprobs"][:step], theirs["logprobs"][:step], strict=True)
    prefix_diffs = [abs(a - b) for a, b in pairs]
    return (
        f"tokens diverge at step {step}: ours {ours['tokens']} vs mlx-lm {theirs['tokens']}; "
        f"mlx-lm's chosen token leads its runner-up there by {margin:.2e} and the logprobs of "
        f"the {step} agreeing steps before differ by at most {max(prefix_diffs, default=0):.2e} "
        f"(a lead far below {LOGPROB_TOLERANCE} with tiny prefix diffs is a near-tie flip)"
    )


@pytest.mark.parametrize("prompt_len", PROMPT_LENGTHS)
def test_greedy_tokens_and_logprobs_match_mlx_lm(
    prompt_len: int, model_dir: Path, mlx_python: Path
) -> None:
    vocab_size = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    prompt_ids = ",".join(map(str, seeded_prompt(prompt_len, vocab_size)))
    common = ["--model", str(model_dir), "--prompt-ids", prompt_ids]
    common += ["--max-tokens", str(MAX_TOKENS)]
    greedy_json = ["--temperature", "0", "--logprobs", "1", "--ignore-eos", "--json"]
    results = run_concurrently(
        {
            "duet generate": [str(DUET_BIN), "generate", *common, *greedy_json],
            "mlx_runner": [str(mlx_python), str(MLX_RUNNER), *common],
        }
    )
    ours, theirs = results["duet generate"], results["mlx_runner"]

    assert len(theirs["tokens"]) == MAX_TOKENS
    step = first_divergence(ours["tokens"], theirs["tokens"])
    assert step is None, describe_mismatch(ours, theirs, step or 0)
    diffs = [abs(a - b) for a, b in zip(ours["logprobs"], theirs["logprobs"], strict=True)]
    worst = max(range(MAX_TOKENS), key=lambda i: diffs[i])
    assert diffs[worst] <= LOGPROB_TOLERANCE, (
        f"chosen-token logprob differs by {diffs[worst]:.2e} at step {worst} "
        f"(ours {ours['logprobs'][worst]:.6f}, mlx-lm {theirs['logprobs'][worst]:.6f}); "
        f"all diffs: {[f'{d:.1e}' for d in diffs]}"
    )
