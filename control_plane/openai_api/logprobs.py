"""Logprobs in the two OpenAI formats.

Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
"bytes"}, ...]}, ...]}` with exactly top_logprobs alternatives per token.
Completions: `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, parallel lists;
each top_logprobs item is a dict token -> logprob holding the top N and, as OpenAI documents,
always the sampled token too (so up to N + 1 entries; tokens whose strings coincide share a key).

A token is shown as its exact bytes decoded as UTF-8 with U+FFFD for an incomplete or invalid
sequence (a byte-level token may hold part of a character), and `bytes` are the token's exact
bytes; with return_tokens_as_token_ids the token is shown as `token_id:N` (bytes stay exact).
There is one entry per generated token, special tokens (eos) included, so the number of entries
equals usage.completion_tokens. `text_offset` is the character offset in the generated text at
which the token's text starts. A logprob of -inf (not JSON) is reported as -9999.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

FLOOR_LOGPROB = -9999.0


class TokenBytes(Protocol):
    def token_bytes(self, token_id: int) -> bytes: ...


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]
    text_offset: int


def json_logprob(value: float) -> float:
    return value if math.isfinite(value) else FLOOR_LOGPROB


class TokenNames:
    """How token ids are shown in logprobs."""

    def __init__(self, tokenizer: TokenBytes, as_token_ids: bool = False) -> None:
        self._tokenizer = tokenizer
        self._as_ids = as_token_ids

    def name(self, token_id: int) -> str:
        if self._as_ids:
            return f"token_id:{token_id}"
        return self._tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")

    def byte_list(self, token_id: int) -> list[int]:
        return list(self._tokenizer.token_bytes(token_id))


def _chat_alternative(names: TokenNames, token_id: int, logprob: float) -> dict[str, Any]:
    return {
        "token": names.name(token_id),
        "logprob": json_logprob(logprob),
        "bytes": names.byte_list(token_id),
    }


def chat_logprob_entries(
    records: Sequence[TokenLogprob], names: TokenNames
) -> list[dict[str, Any]]:
    return [
        {
            **_chat_alternative(names, r.token_id, r.logprob),
            "top_logprobs": [_chat_alternative(names, t, lp) for t, lp in r.top],
        }
        for r in records
    ]


def chat_logprobs(records: Sequence[TokenLogprob], names: TokenNames) -> dict[str, Any]:
    return {"content": chat_logprob_entries(records, names)}


def _top_dict(record: TokenLogprob, names: TokenNames) -> dict[str, float]:
    top = {names.name(t): json_logprob(lp) for t, lp in record.top}
    top.setdefault(names.name(record.token_id), json_logprob(record.logprob))
    return top


def completion_logprobs(records: Sequence[TokenLogprob], names: TokenNames) -> dict[str, Any]:
    return {
        "tokens": [names.name(r.token_id) for r in records],
        "token_logprobs": [json_logprob(r.logprob) for r in records],
        "top_logprobs": [_top_dict(r, names) for r in records],
        "text_offset": [r.text_offset for r in records],
    }
