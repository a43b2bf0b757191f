"""Request validation for /v1/completions and the length rules of both endpoints: prompt
forms, context length, max_tokens defaults and limits, logprobs settings."""

import json
from pathlib import Path
from typing import Any

import pytest

from control_plane.openai_api import (
    ApiError,
    ServedModel,
    parse_chat_request,
    parse_completion_request,
)

MODEL = "ling-tiny"
USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path) -> ServedModel:
    return ServedModel.from_dir(tiny_model_dir, name=MODEL)


def chat(served: ServedModel, **fields: Any) -> Any:
    body = {"model": MODEL, "messages": USER, **fields}
    return parse_chat_request(json.dumps(body).encode(), served)


def completion(served: ServedModel, **fields: Any) -> Any:
    body = {"model": MODEL, "prompt": "Hello", **fields}
    return parse_completion_request(json.dumps(body).encode(), served)


def rejected(call: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args, **kwargs)
    return info.value


COMPLETION_BAD_FIELDS = [
    ({"prompt": None}, "prompt", "'prompt' is required."),
    ({"prompt": ""}, "prompt", "The prompt is empty"),
    ({"prompt": []}, "prompt", "The prompt is empty"),
    ({"prompt": 5}, "prompt", "expected a string, an array of token ids"),
    ({"prompt": [1, "a"]}, "prompt", "expected a string, an array of token ids"),
    ({"prompt": [1, True]}, "prompt", "expected a string, an array of token ids"),
    ({"prompt": [1, 5000]}, "prompt", "token ids must be in [0, 2048), got [5000]"),
    ({"prompt": [-1]}, "prompt", "token ids must be in [0, 2048), got [-1]"),
    ({"prompt": ["a", "b"]}, "prompt", "Batched prompts (2 prompts in one request)"),
    ({"prompt": [[1, 2], [3]]}, "prompt", "are not supported yet"),
    ({"logprobs": 21}, "logprobs", "21 is greater than the maximum of 20"),
    ({"logprobs": True}, "logprobs", "expected an integer, but got a boolean"),
    ({"echo": True}, "echo", "'echo' is not supported yet."),
    ({"best_of": 2}, "best_of", "best_of > 1 is not supported yet."),
    ({"suffix": "end"}, "suffix", "'suffix' is not supported yet."),
    ({"n": 3}, "n", "n > 1 is not supported yet."),
    ({"max_tokens": 0}, "max_tokens", "0 is less than the minimum of 1"),
]


@pytest.mark.parametrize(("fields", "param", "fragment"), COMPLETION_BAD_FIELDS)
def test_completion_bad_fields_are_400_naming_the_field(
    served: ServedModel, fields: dict[str, Any], param: str, fragment: str
) -> None:
    error = rejected(completion, served, **fields)
    assert (error.status, error.param) == (400, param)
    assert fragment in error.message


def test_prompt_longer_than_context_names_both_numbers(served: ServedModel) -> None:
    too_long = [10 + i % 1000 for i in range(served.max_context)]  # no room for one token
    error = rejected(completion, served, prompt=too_long)
    assert (error.status, error.param, error.code) == (400, "prompt", "context_length_exceeded")
    assert "maximum context length is 4096 tokens" in error.message
    assert "your prompt has 4096 tokens" in error.message
    assert completion(served, prompt=too_long[:-1]).sampling.max_tokens == 1


def test_chat_prompt_longer_than_context(served: ServedModel) -> None:
    messages = [{"role": "user", "content": "word " * 5000}]
    error = rejected(chat, served, messages=messages)
    assert (error.status, error.param, error.code) == (400, "messages", "context_length_exceeded")
    assert "maximum context length is 4096 tokens" in error.message


def test_max_tokens_beyond_the_context_is_400_with_both_numbers(served: ServedModel) -> None:
    spec = completion(served, prompt=[1, 2, 3], max_tokens=4093)
    assert spec.sampling.max_tokens == 4093  # exactly fills the context
    error = rejected(completion, served, prompt=[1, 2, 3], max_tokens=4094)
    assert (error.status, error.param, error.code) == (400, "max_tokens", "context_length_exceeded")
    assert "you requested 4097 tokens (3 in the prompt, 4094 in the completion)" in error.message
    absurd = rejected(chat, served, max_completion_tokens=10**12)
    assert absurd.param == "max_completion_tokens"
    assert "maximum context length is 4096 tokens" in absurd.message


def test_max_tokens_defaults(tiny_model_dir: Path, served: ServedModel) -> None:
    spec = chat(served)
    assert spec.sampling.max_tokens == served.max_context - spec.prompt_tokens  # fills
    capped = ServedModel.from_dir(tiny_model_dir, name=MODEL, max_tokens_cap=100)
    assert chat(capped).sampling.max_tokens == 100
    assert completion(served, prompt=[1, 2]).sampling.max_tokens == 16  # OpenAI's default
    assert completion(served, prompt=[1, 2], max_tokens=None).sampling.max_tokens == 4094
    assert chat(served, max_tokens=7, max_completion_tokens=9).sampling.max_tokens == 9
    assert chat(served, max_tokens=12.0).sampling.max_tokens == 12


def test_logprobs_settings(served: ServedModel) -> None:
    assert chat(served).logprobs is None
    assert chat(served, logprobs=True).logprobs == 0
    assert chat(served, logprobs=False, top_logprobs=None).logprobs is None
    assert completion(served, logprobs=0).logprobs == 0
    assert completion(served, logprobs=20).logprobs == 20


def test_completion_prompt_forms_agree(served: ServedModel) -> None:
    ids = tuple(served.tokenizer.encode("Hello world"))
    for prompt in ("Hello world", list(ids), ["Hello world"], [list(ids)]):
        spec = completion(served, prompt=prompt)
        assert (spec.prompt_ids, spec.endpoint) == (ids, "completion")
