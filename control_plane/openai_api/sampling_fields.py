"""The sampling fields both endpoints share, and the max_tokens rule.

Choices where the API leaves room:
- temperature defaults to 1.0 and top_p to 1.0, as in OpenAI's API.
- top_k (vLLM extension): -1 or 0 turn it off.
- stop: a string or an array of at most 4 non-empty strings (OpenAI's limit).
- presence_penalty / frequency_penalty: the engine has no penalties yet, so only 0 is accepted
  (clients that send the default 0 work); any other value in [-2, 2] is a 400 saying so, never
  silently ignored. repetition_penalty (vLLM extension) likewise accepts only 1.
- n: only 1; n > 1 is a 400 "n > 1 is not supported yet".
- max tokens: a given value must be >= 1 and fit: prompt + max_tokens <= context, else 400
  with both numbers (as vLLM does). When absent, chat fills to the context limit (capped by
  ServedModel.max_tokens_cap); completions default to 16 as in OpenAI's and vLLM's legacy API,
  and an explicit null there fills to the limit. min_tokens (vLLM) must be <= max_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.openai_api.errors import invalid_request
from control_plane.openai_api.fields import Fields, as_integer, out_of_range, wrong_type
from control_plane.openai_api.spec import ServedModel
from engine.sampling import SamplingError, SamplingParams

MAX_STOP_STRINGS = 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class CommonSampling:
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]
    ignore_eos: bool
    min_tokens: int


def parse_stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise wrong_type("stop", "a string or an array of strings", value)
    if len(stops) > MAX_STOP_STRINGS:
        raise out_of_range("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}.")
    if any(not s for s in stops):
        raise out_of_range("stop", "stop strings must not be empty.")
    return tuple(stops)


def _parse_token_ids(name: str, value: object, vocab_size: int) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise wrong_type(name, "an array of token ids", value)
    ids = tuple(as_integer(name, v) for v in value)
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise out_of_range(name, f"token ids must be in [0, {vocab_size}), got {bad[:5]}.")
    return ids


def _refuse_unsupported(fields: Fields) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if fields.number(name, 0.0, -2.0, 2.0) != 0.0:
            raise invalid_request(f"'{name}' is not supported yet; only 0 is accepted.", name)
    if fields.number("repetition_penalty", 1.0, 0.0, 2.0**31, open_min=True) != 1.0:
        raise invalid_request(
            "'repetition_penalty' is not supported yet; only 1 is accepted.", "repetition_penalty"
        )
    n = fields.integer("n", minimum=1)
    if n is not None and n > 1:
        raise invalid_request("n > 1 is not supported yet.", "n")


def parse_common(fields: Fields, model: ServedModel) -> CommonSampling:
    _refuse_unsupported(fields)
    top_k = fields.integer("top_k", minimum=-1)
    return CommonSampling(
        temperature=fields.number("temperature", 1.0, 0.0, 2.0),
        top_p=fields.number("top_p", 1.0, 0.0, 1.0, open_min=True),
        top_k=max(top_k or 0, 0),
        seed=fields.integer("seed", INT64_MIN, INT64_MAX),
        stop=parse_stop(fields.raw("stop")),
        stop_token_ids=_parse_token_ids(
            "stop_token_ids", fields.raw("stop_token_ids"), model.vocab_size
        ),
        ignore_eos=fields.boolean("ignore_eos", False),
        min_tokens=fields.integer("min_tokens", minimum=0) or 0,
    )


def resolve_max_tokens(
    requested: int | None, name: str, prompt_tokens: int, model: ServedModel, default: int | None
) -> int:
    """The max_tokens to run with. `requested` None means "not given": `default` if set, else
    fill to the context (capped). Raises 400 when a requested value cannot fit."""
    room = model.max_context - prompt_tokens
    if requested is None:
        fill = room if model.max_tokens_cap is None else min(room, model.max_tokens_cap)
        return fill if default is None else min(default, room)
    if requested < 1:
        raise out_of_range(name, f"{requested} is less than the minimum of 1.")
    if requested > room:
        raise invalid_request(
            f"This model's maximum context length is {model.max_context} tokens. However, you "
            f"requested {prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, "
            f"{requested} in the completion). Please reduce the prompt or '{name}'.",
            param=name,
            code="context_length_exceeded",
        )
    return requested


def build_sampling(common: CommonSampling, max_tokens: int, logprobs: int | None) -> SamplingParams:
    if common.min_tokens > max_tokens:
        raise out_of_range(
            "min_tokens", f"{common.min_tokens} is greater than max_tokens ({max_tokens})."
        )
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=common.temperature,
            top_k=common.top_k,
            top_p=common.top_p,
            seed=common.seed,
            stop_token_ids=common.stop_token_ids,
            stop=common.stop,
            ignore_eos=common.ignore_eos,
            min_tokens=common.min_tokens,
            logprobs=logprobs,
        )
    except SamplingError as exc:  # the checks above should have caught it; still a 400
        raise invalid_request(str(exc)) from None


def check_prompt_fits(prompt_tokens: int, model: ServedModel, param: str) -> None:
    """A prompt must leave room for at least one generated token."""
    if prompt_tokens + 1 > model.max_context:
        raise invalid_request(
            f"This model's maximum context length is {model.max_context} tokens. However, your "
            f"prompt has {prompt_tokens} tokens, which leaves no room to generate. Please "
            f"shorten the prompt.",
            param=param,
            code="context_length_exceeded",
        )
