"""`duet generate` as a user runs it: a real subprocess on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.generation import GenerationRequest, OfflineEngine
from engine.model.ling import LingModel
from engine.sampling import SamplingParams
from tests.integration.near_ties import tie_free_prompts


def _duet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_json_output_matches_in_process_greedy(tiny_model_dir: Path, tiny_model: LingModel) -> None:
    ids = [5, 17, 300, 9, 1024, 77]
    proc = _duet(
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompt-ids",
        ",".join(map(str, ids)),
        "--max-tokens",
        "6",
        "--logprobs",
        "3",
        "--json",
        "--ignore-eos",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["tokens"]) == len(out["logprobs"]) == len(out["top_logprobs"]) == 6
    assert all(len(top) == 3 for top in out["top_logprobs"])
    # Greedy: each chosen token is the top-1 of its step, and the sequence equals the full forward.
    assert all(
        top[0]["token"] == tok for top, tok in zip(out["top_logprobs"], out["tokens"], strict=True)
    )
    seq = list(ids)
    for tok in out["tokens"]:
        assert int(tiny_model.forward_full(seq)[0][-1].argmax()) == tok
        seq.append(tok)


def test_text_prompt_streams_text(tiny_model_dir: Path) -> None:
    proc = _duet(
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompt",
        "Hello there",
        "--chat",
        "--max-tokens",
        "8",
        "--ignore-eos",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_seeded_sampling_is_reproducible(tiny_model_dir: Path) -> None:
    args = (
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompt-ids",
        "1,2,3",
        "--max-tokens",
        "8",
        "--temperature",
        "1.0",
        "--seed",
        "42",
        "--json",
        "--ignore-eos",
    )
    first, second = _duet(*args), _duet(*args)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["tokens"] == json.loads(second.stdout)["tokens"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt-ids", "1,x"], "comma-separated integers"),
        (["--prompt-ids", "1", "--max-tokens", "0"], "--max-tokens must be >= 1"),
        (["--prompt-ids", "999999"], "out of range"),
        (["--prompt-ids", "1", "--temperature", "-1"], "temperature"),
        (["--prompt-ids", "1", "--device", "cuda"], "CUDA"),
        ([], "one of the arguments --prompt --prompt-ids is required"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(
    tiny_model_dir: Path, args: list[str], message: str
) -> None:
    proc = _duet("generate", "--model", str(tiny_model_dir), *args)
    if message == "CUDA" and proc.returncode == 0:
        pytest.skip("a CUDA device is present")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_bad_model_directories_exit_2(tmp_path: Path) -> None:
    proc = _duet("generate", "--model", str(tmp_path / "missing"), "--prompt-ids", "1")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    proc = _duet("generate", "--model", str(tmp_path), "--prompt-ids", "1")
    assert (
        proc.returncode == 2
        and "model_type" in proc.stderr
        and len(proc.stderr.strip().splitlines()) == 1
    )


def test_stop_tokens_min_tokens_and_max_tokens(tiny_model: LingModel) -> None:
    engine = OfflineEngine(tiny_model, eos_ids=(), num_pages=32, num_slots=4)
    prompt = [3, 4, 5, 6]
    base = [
        o.sampled.token
        for o in engine.generate(
            [GenerationRequest(prompt, SamplingParams(max_tokens=6, temperature=0))]
        )
    ]
    assert len(base) == 6
    stop_at = base[2]
    params = SamplingParams(max_tokens=6, temperature=0, stop_token_ids=(stop_at,))
    outs = list(engine.generate([GenerationRequest(prompt, params)]))
    first = base.index(stop_at)
    assert [o.sampled.token for o in outs] == base[: first + 1] and outs[-1].finish_reason == "stop"
    params = SamplingParams(max_tokens=6, temperature=0, stop_token_ids=(base[0],), min_tokens=3)
    outs = list(engine.generate([GenerationRequest(prompt, params)]))
    assert len(outs) >= 3 and base[0] not in [o.sampled.token for o in outs[:3]]
    engine.runner.check_integrity()
    assert engine.runner.latents.num_free == 32 and engine.runner.states.num_free == 4


def test_abandoned_generation_frees_its_cache(tiny_model: LingModel) -> None:
    engine = OfflineEngine(tiny_model, num_pages=32, num_slots=4)
    stream = engine.generate(
        [GenerationRequest([1, 2, 3], SamplingParams(max_tokens=20, ignore_eos=True))] * 3
    )
    next(stream)
    stream.close()  # a client that goes away mid-generation
    assert engine.runner.latents.num_free == 32 and engine.runner.states.num_free == 4


def test_two_ranks_generate_what_one_does(tiny_model_dir: Path, tiny_model: LingModel) -> None:
    """`--tensor-parallel-size 2`: the worker's tensor-parallel path, from the command line."""
    ((prompt, want),) = tie_free_prompts(tiny_model, [20], 6, seed=5)
    ask = ("--prompt-ids", ",".join(map(str, prompt)), "--max-tokens", "6", "--ignore-eos",
           "--logprobs", "1", "--json")  # fmt: skip
    one = _duet("generate", "--model", str(tiny_model_dir), *ask)
    two = _duet("generate", "--model", str(tiny_model_dir), "--tensor-parallel-size", "2", *ask)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a["tokens"] == b["tokens"] == want
    assert max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"], strict=True)) < 1e-4
    bad = _duet("generate", "--model", str(tiny_model_dir), "--tensor-parallel-size", "4", *ask)
    assert bad.returncode == 2 and "group_norm_size=2 is not divisible by 4" in bad.stderr
