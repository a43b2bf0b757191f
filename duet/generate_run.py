"""The work behind `duet generate`: load, tokenize, generate, stream or collect."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from engine.generation import GenerationRequest, OfflineEngine
from engine.model.ling import LingModel
from engine.parallel.launch import load_model_ranks
from engine.parallel.rank_link import RankLink
from engine.sampling import SamplingParams


def _device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    return name


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise ValueError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: not a model directory")


@dataclass
class GenerateJob:
    model: LingModel
    tokenizer: Any  # engine.tokenizer.Tokenizer, or None for --prompt-ids without tokenizer files
    prompt_ids: list[int]
    params: SamplingParams
    ranks: RankLink | None = None  # the followers of a tensor-parallel model

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerateJob:
        from duet.generate_cmd import _parse_ids

        _check_model_dir(args.model)
        if args.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
        device = _device(args.device)
        tokenizer = _load_tokenizer(args.model, required=args.prompt is not None or bool(args.stop))
        ids = _parse_ids(args.prompt_ids) if args.prompt_ids else _encode_prompt(tokenizer, args)
        params = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            stop=tuple(args.stop),
            ignore_eos=args.ignore_eos,
            logprobs=args.logprobs,
        )
        model, ranks = load_model_ranks(str(args.model), args.dtype, device,
                                        args.tensor_parallel_size)  # fmt: skip
        bad = [i for i in ids if not 0 <= i < model.cfg.vocab_size]
        if bad:
            if ranks is not None:
                ranks.close()
            raise ValueError(f"token ids out of range [0, {model.cfg.vocab_size}): {bad[:5]}")
        return cls(model, tokenizer, ids, params, ranks)

    def run(self, stream: TextIO | None) -> dict[str, Any]:
        from engine.detokenizer import IncrementalDetokenizer, StopStringMatcher

        detok = IncrementalDetokenizer(self.tokenizer) if self.tokenizer is not None else None
        matcher = StopStringMatcher(list(self.params.stop)) if self.params.stop else None
        state = {"stopped": False}

        def on_token(token: int) -> bool:
            if detok is None:
                return False
            text = detok.add(token)
            if matcher is not None:
                text, state["stopped"] = _feed_matcher(matcher, text)
            if stream is not None and text:
                stream.write(text)
                stream.flush()
            return state["stopped"]

        engine = OfflineEngine(self.model, _eos_ids(self.model, self.tokenizer), ranks=self.ranks)
        request = GenerationRequest(self.prompt_ids, self.params, stop_check=on_token)
        tokens, logprobs, tops = [], [], []
        for out in engine.generate([request]):
            tokens.append(out.sampled.token)
            logprobs.append(out.sampled.logprob)
            tops.append([{"token": t, "logprob": lp} for t, lp in out.sampled.top])
        if stream is not None:
            tail = _flush(detok, matcher, state["stopped"])
            stream.write(tail + "\n")
        engine.runner.check_integrity()
        return {"tokens": tokens, "logprobs": logprobs, "top_logprobs": tops}


def _feed_matcher(matcher: Any, text: str) -> tuple[str, bool]:
    result = matcher.feed(text)
    return result.emit, result.stopped


def _flush(detok: Any, matcher: Any, stopped: bool) -> str:
    if detok is None or stopped:
        return ""
    text = detok.flush()
    if matcher is None:
        return text
    emitted, stopped = _feed_matcher(matcher, text)
    return emitted if stopped else emitted + matcher.flush()


def _load_tokenizer(model_dir: Path, required: bool) -> Any:
    from engine.tokenizer import Tokenizer

    if not (model_dir / "tokenizer.json").is_file():
        if required:
            raise ValueError(f"{model_dir} has no tokenizer.json (needed for --prompt and --stop)")
        return None
    return Tokenizer.from_dir(model_dir)


def _encode_prompt(tokenizer: Any, args: argparse.Namespace) -> list[int]:
    text = args.prompt
    if args.chat:
        from engine.chat_template import render_chat

        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": text}
        ]
        text = render_chat(tokenizer, messages, add_generation_prompt=True)
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
    return ids


def _eos_ids(model: LingModel, tokenizer: Any) -> tuple[int, ...]:
    if model.cfg.eos_token_ids:
        return model.cfg.eos_token_ids
    return tuple(tokenizer.eos_ids) if tokenizer is not None else ()
