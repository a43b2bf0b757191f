"""Greedy generation with mlx-lm's independent `bailing_hybrid` model, for cross-checking.

Runs only in .venv-mlx (scripts/setup_mlx_venv.sh), never imports torch, never touches a hub:

    .venv-mlx/bin/python tests/crosscheck/mlx_runner.py --model DIR --prompt-ids 1,2,3 \
        --max-tokens N

Prints one JSON object: {"tokens": [...], "logprobs": [...], "margins": [...]} where
logprobs[i] is the log-softmax of the fp32 logits at step i, taken at the chosen (argmax)
token, and margins[i] is how far that token leads the runner-up (diagnostics only). The prompt is
prefilled in one call (mlx-lm's chunked Lightning path and expanded MLA), every later token
is one decode call (recurrent Lightning step and absorbed MLA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import load_model


def load_fp32_model(model_dir: Path) -> nn.Module:
    """Load weights only, strictly: every checkpoint name must map onto mlx-lm's model.

    load_model runs the model's sanitize (stacks per-expert weights, renames
    mlp.gate.weight, splits kv_b_proj, drops the MTP layer) and keeps the stored dtype.
    """
    model, config = load_model(model_dir, lazy=False, strict=True)
    if config.get("model_type") != "bailing_hybrid":
        kind = config.get("model_type")
        raise SystemExit(f"{model_dir}: model_type {kind!r} is not bailing_hybrid")
    model.set_dtype(mx.float32)
    return model


def greedy_step(logits: mx.array) -> tuple[int, float, float]:
    """Greedy token (first index among ties), its fp32 log-softmax value, and its margin
    over the runner-up (a margin near 0 is a near-tie that rounding may legitimately flip)."""
    logits = logits.astype(mx.float32)
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    token = int(mx.argmax(logprobs).item())
    best_two = mx.topk(logprobs, 2)
    margin = float((mx.max(best_two) - mx.min(best_two)).item())
    return token, float(logprobs[token].item()), margin


def greedy_generate(model: nn.Module, prompt: list[int], max_tokens: int) -> dict[str, list]:
    """Exactly max_tokens greedy tokens: no end-of-sequence stop (compare with --ignore-eos)."""
    cache = model.make_cache()
    logits = model(mx.array([prompt], dtype=mx.int32), cache=cache)[0, -1]
    tokens: list[int] = []
    logprobs: list[float] = []
    margins: list[float] = []
    for step in range(max_tokens):
        token, logprob, margin = greedy_step(logits)
        tokens.append(token)
        logprobs.append(logprob)
        margins.append(margin)
        if step + 1 < max_tokens:
            logits = model(mx.array([[token]], dtype=mx.int32), cache=cache)[0, -1]
    return {"tokens": tokens, "logprobs": logprobs, "margins": margins}


def parse_ids(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Greedy decode with mlx-lm bailing_hybrid")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--prompt-ids", type=parse_ids, required=True, help="e.g. 1,2,3")
    parser.add_argument("--max-tokens", type=int, required=True)
    args = parser.parse_args(argv)
    if not args.prompt_ids or args.max_tokens < 1:
        parser.error("need at least one prompt id and --max-tokens >= 1")
    mx.set_default_device(mx.cpu)
    model = load_fp32_model(args.model)
    result = greedy_generate(model, args.prompt_ids, args.max_tokens)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
