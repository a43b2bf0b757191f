"""`duet build-tiny-model`: write the tiny default model (what `make model` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-tiny-model",
        help="write the tiny Ling-2.6 model (random weights, trained tokenizer)",
        description="Write the tiny default model: real config fields and tensor names, the "
        "architecture scaled down, seeded random weights, a byte-level BPE tokenizer trained "
        "on text in this repository, and the Ling chat template.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("models/ling-tiny"),
        help="output directory (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="weight seed (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.model_builder.tiny_model import build_tiny_model

    build_tiny_model(args.out, args.seed)
    print(f"tiny model written to {args.out}")
    return 0
