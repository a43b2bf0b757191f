"""`duet generate`: offline generation on one process, streaming text or printing JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate offline from a prompt (no cluster)",
        description="Load a Ling-2.6 checkpoint and generate from one prompt in this process. "
        "Text is streamed as it is generated; with --json one JSON object is printed: "
        '{"tokens": [...], "logprobs": [...], "top_logprobs": [[{"token": id, "logprob": x}]]}.',
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-ids", help="prompt as comma-separated token ids, e.g. 1,2,3")
    p.add_argument(
        "--model",
        type=Path,
        default=Path("models/ling-tiny"),
        help="model directory (default: %(default)s)",
    )
    p.add_argument(
        "--chat", action="store_true", help="wrap --prompt as one user turn of the chat template"
    )
    p.add_argument("--system", help="system message (with --chat)")
    p.add_argument(
        "--max-tokens", type=int, default=64, help="tokens to generate (default: %(default)s)"
    )
    p.add_argument(
        "--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)"
    )
    p.add_argument(
        "--top-p", type=float, default=1.0, help="nucleus sampling mass (default: %(default)s)"
    )
    p.add_argument(
        "--top-k", type=int, default=0, help="top-k sampling, 0 = off (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, help="sampling seed (reproducible output)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument(
        "--ignore-eos", action="store_true", help="keep generating past end-of-sequence tokens"
    )
    p.add_argument(
        "--logprobs", type=int, help="report the chosen token's logprob and the top-N (0-20)"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object instead of streaming text"
    )
    p.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="run dtype (default: %(default)s)"
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="device (default: %(default)s)"
    )
    p.add_argument(
        "--tensor-parallel-size",
        type=int,
        choices=(1, 2, 4, 8),
        default=1,
        help="ranks sharing the model, as a worker runs them (cuda: one GPU each; "
        "default: %(default)s)",
    )
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    sys.stderr.write(f"duet generate: error: {message}\n")
    return 2


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"--prompt-ids must be comma-separated integers ({exc})") from None
    if not ids:
        raise ValueError("--prompt-ids is empty")
    return ids


def run(args: argparse.Namespace) -> int:
    from duet.generate_run import GenerateJob
    from engine.parallel.rank_link import RankLost

    try:
        job = GenerateJob.from_args(args)
    except (ValueError, OSError, RankLost) as exc:
        return _fail(str(exc))
    try:
        result = job.run(stream=None if args.json else sys.stdout)
    except ValueError as exc:
        return _fail(str(exc))
    finally:
        if job.ranks is not None:
            job.ranks.close()
    if args.json:
        print(json.dumps(result))
    return 0


def top_logprobs_json(top: list[tuple[int, float]]) -> list[dict[str, Any]]:
    return [{"token": t, "logprob": lp} for t, lp in top]
