"""What a validated request asks for (`GenerationSpec`) and what the server serves
(`ServedModel`): the values both the request parser and the response builders read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.sampling import SamplingParams
from engine.tokenizer import Tokenizer

Endpoint = Literal["chat", "completion"]
ToolMode = Literal["none", "auto", "required", "function"]


@dataclass(frozen=True)
class ServedModel:
    """The one model this gateway serves. `name` is canonical; `aliases` are accepted too."""

    name: str
    tokenizer: Tokenizer
    max_context: int  # max_position_embeddings: prompt + generated tokens
    vocab_size: int  # token ids in prompts must be below this
    aliases: tuple[str, ...] = ()
    # When a chat request gives no max_tokens it may generate up to the context limit,
    # capped by this when set.
    max_tokens_cap: int | None = None

    def __post_init__(self) -> None:
        if self.max_context < 2:
            raise ValueError(f"max_context must be >= 2, got {self.max_context}")
        if self.max_tokens_cap is not None and self.max_tokens_cap < 1:
            raise ValueError(f"max_tokens_cap must be >= 1, got {self.max_tokens_cap}")

    def serves(self, model: str) -> bool:
        return model == self.name or model in self.aliases

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        name: str | None = None,
        aliases: tuple[str, ...] = (),
        max_tokens_cap: int | None = None,
    ) -> ServedModel:
        """Tokenizer and limits from a model directory; the name defaults to the folder name."""
        directory = Path(model_dir)
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_dir(directory)
        vocab = min(int(config.get("vocab_size") or tokenizer.vocab_size), tokenizer.vocab_size)
        return cls(
            name=name or directory.name,
            tokenizer=tokenizer,
            max_context=int(config["max_position_embeddings"]),
            vocab_size=vocab,
            aliases=aliases,
            max_tokens_cap=max_tokens_cap,
        )


@dataclass(frozen=True)
class ToolChoice:
    """`mode` "function" forces the tool `name`; "required" forces some tool call."""

    mode: ToolMode = "none"
    name: str | None = None

    @property
    def parses_calls(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True)
class GenerationSpec:
    """One validated generation request, ready for the router and the response builders.

    Invariants: 1 <= len(prompt_ids) < model context; len(prompt_ids) + sampling.max_tokens <=
    model context; `tool_prefix` is non-empty only for a forced tool choice, in which case the
    prompt text ends with it and the response side parses `tool_prefix + generated text`.
    """

    endpoint: Endpoint
    model: str  # as the client named it; echoed in responses
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    return_tokens_as_token_ids: bool = False
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    tool_prefix: str = ""
    n: int = 1
    user: str | None = None

    @property
    def logprobs(self) -> int | None:
        """None: no logprobs; N: the chosen token's logprob plus the top N."""
        return self.sampling.logprobs

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)
