"""Streaming: exact chat.completion.chunk and text_completion chunks, include_usage, SSE
framing with [DONE] last, errors after the stream started, streamed tool calls, and the
invariant that a stream concatenates to the non-streamed response."""

import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from control_plane.openai_api import (
    SSE_DONE,
    GenerationSpec,
    ResponseAssembler,
    ResponseIdentity,
    StreamAssembler,
    TokenEvent,
    ToolChoice,
    sse_error,
)
from control_plane.openai_api.errors import invalid_request
from engine.sampling import SamplingParams
from engine.tokenizer import Tokenizer

ROLE_END = 2037
WEATHER = {"type": "function", "function": {"name": "get_weather"}}
HEAD = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 7, "model": "m"}
CMPL_HEAD = {"id": "cmpl-s", "object": "text_completion", "created": 7, "model": "m"}


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_model_dir)


def one_token(tok: Tokenizer, text: str) -> int:
    (token,) = tok.encode(text)
    return token


def call_ids() -> Callable[[], str]:
    numbers = itertools.count()
    return lambda: f"call_{next(numbers)}"


def spec(endpoint: str = "chat", **kwargs: Any) -> GenerationSpec:
    sampling = SamplingParams(
        max_tokens=100, stop=kwargs.pop("stop", ()), logprobs=kwargs.pop("logprobs", None)
    )
    return GenerationSpec(endpoint, "m", (1, 2, 3), sampling, stream=True, **kwargs)  # type: ignore[arg-type]


def identity(s: GenerationSpec) -> ResponseIdentity:
    return ResponseIdentity("chatcmpl-s" if s.endpoint == "chat" else "cmpl-s", 7, "m")


def events(ids: list[int], finish: str, logprobs: bool = False) -> list[TokenEvent]:
    return [
        TokenEvent(
            token,
            -0.5 - i if logprobs else None,
            ((token, -0.5 - i),) if logprobs else (),
            finish if i == len(ids) - 1 else None,
        )
        for i, token in enumerate(ids)
    ]


def stream(tok: Tokenizer, s: GenerationSpec, evs: list[TokenEvent]) -> list[dict[str, Any]]:
    assembler = StreamAssembler(s, tok, identity(s), call_ids())
    return [chunk for event in evs for chunk in assembler.add(event)]


def chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**HEAD, "choices": [choice], **extra}


def test_chat_chunks(tok: Tokenizer) -> None:
    ids = [one_token(tok, p) for p in ("H", "el", "lo")] + [ROLE_END]
    assert stream(tok, spec(), events(ids, "stop")) == [
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk({"content": "H"}),
        chat_chunk({"content": "el"}),
        chat_chunk({"content": "lo"}),
        chat_chunk({}, "stop"),
    ]


def test_chat_chunks_with_usage(tok: Tokenizer) -> None:
    ids = [one_token(tok, "H"), one_token(tok, "i")]
    assert stream(tok, spec(include_usage=True), events(ids, "length")) == [
        chat_chunk({"role": "assistant", "content": ""}, usage=None),
        chat_chunk({"content": "H"}, usage=None),
        chat_chunk({"content": "i"}, usage=None),
        chat_chunk({}, "length", usage=None),
        {
            **HEAD,
            "choices": [],
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 2,
                "total_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        },
    ]


def test_completion_chunks_with_logprobs(tok: Tokenizer) -> None:
    h, i = one_token(tok, "H"), one_token(tok, "i")

    def chunk(text: str, logprobs: Any, finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return {**CMPL_HEAD, "choices": [choice], "usage": None}

    s = spec("completion", logprobs=1, include_usage=True)
    assert stream(tok, s, events([h, i, ROLE_END], "stop", logprobs=True)) == [
        chunk("H", {"tokens": ["H"], "token_logprobs": [-0.5], "top_logprobs": [{"H": -0.5}],
                    "text_offset": [0]}),
        chunk("i", {"tokens": ["i"], "token_logprobs": [-1.5], "top_logprobs": [{"i": -1.5}],
                    "text_offset": [1]}),
        chunk("", {"tokens": ["<|role_end|>"], "token_logprobs": [-2.5],
                   "top_logprobs": [{"<|role_end|>": -2.5}], "text_offset": [2]}, "stop"),
        {**CMPL_HEAD, "choices": [],
         "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
                   "prompt_tokens_details": {"cached_tokens": 0}}},
    ]  # fmt: skip


def test_sse_framing(tok: Tokenizer) -> None:
    s = spec()
    assembler = StreamAssembler(s, tok, identity(s))
    first = assembler.add_sse(TokenEvent(one_token(tok, "H")))
    assert first == (
        'data: {"id":"chatcmpl-s","object":"chat.completion.chunk","created":7,"model":"m",'
        '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
        '"finish_reason":null}]}\n\n'
        'data: {"id":"chatcmpl-s","object":"chat.completion.chunk","created":7,"model":"m",'
        '"choices":[{"index":0,"delta":{"content":"H"},"logprobs":null,"finish_reason":null}]}'
        "\n\n"
    )
    last = assembler.finish_sse("length")
    assert last.endswith('"finish_reason":"length"}]}\n\n' + SSE_DONE)
    assert SSE_DONE == "data: [DONE]\n\n"


def test_error_after_stream_started() -> None:
    error = invalid_request("The worker failed.", code="worker_failed")
    assert sse_error(error) == (
        'data: {"error":{"message":"The worker failed.","type":"invalid_request_error",'
        '"param":null,"code":"worker_failed"}}\n\ndata: [DONE]\n\n'
    )


def test_held_text_sends_no_chunk_and_its_logprobs_wait(tok: Tokenizer) -> None:
    """`S` may start the stop string `STOP`: nothing is sent for it; when `x` shows it was not,
    one chunk carries both tokens' text and logprobs."""
    s = spec(stop=("STOP",), logprobs=0)
    assembler = StreamAssembler(s, tok, identity(s))
    assembler.start()
    assert assembler.add(TokenEvent(one_token(tok, "S"), -1.0)) == []
    (chunk,) = assembler.add(TokenEvent(one_token(tok, "x"), -2.0))
    choice = chunk["choices"][0]
    assert choice["delta"] == {"content": "Sx"}
    assert [e["token"] for e in choice["logprobs"]["content"]] == ["S", "x"]


def test_streamed_tool_call_deltas(tok: Tokenizer) -> None:
    s = spec(tools=(WEATHER,), tool_choice=ToolChoice("auto"))
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    chunks = stream(tok, s, events([*tok.encode("Hm." + call), ROLE_END], "stop"))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[-3:] == [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}]},
        {},
    ]
    assert "".join(d.get("content", "") for d in deltas) == "Hm."
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def merge_chat_stream(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Rebuild the non-streamed choice from chat chunks, the way a client does."""
    content, calls, logprobs, finish = "", {}, [], None
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for piece in delta.get("tool_calls", []):
                call = calls.setdefault(piece["index"], {"function": {"name": "", "arguments": ""}})
                call.update({k: piece[k] for k in ("id", "type") if k in piece})
                for key, text in piece.get("function", {}).items():
                    call["function"][key] += text
            logprobs += (choice["logprobs"] or {}).get("content", [])
            finish = choice["finish_reason"] or finish
    message = {"role": "assistant", "content": content or (None if calls else "")}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {"message": message, "logprobs": logprobs, "finish_reason": finish}


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
PIECES = ["Hi", " there", "三", "é", " STOP", "\n", CALL, CALL, "<tool_call>\n{bad}</tool_call>",
          " <tool", "_call> x", "ok"]  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_stream_concatenates_to_the_whole_response(tok: Tokenizer, seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
    ids = tok.encode(text) + ([ROLE_END] if rng.random() < 0.5 else [])
    finish = rng.choice(["stop", "length"])
    tools = {"tools": (WEATHER,), "tool_choice": ToolChoice("auto")} if seed % 2 else {}
    s = spec(stop=("STOP",) if seed % 3 == 0 else (), logprobs=1, **tools)
    evs = events(ids, finish, logprobs=True)
    whole = ResponseAssembler(s, tok, identity(s), call_ids())
    for event in evs:
        whole.add(event)
    expected = whole.response()["choices"][0]
    merged = merge_chat_stream(stream(tok, s, evs))
    assert merged["message"] == expected["message"]
    assert merged["logprobs"] == expected["logprobs"]["content"]
    assert merged["finish_reason"] == expected["finish_reason"]

    cs = spec("completion", stop=s.sampling.stop, logprobs=1)
    whole_text = ResponseAssembler(cs, tok, identity(cs))
    for event in evs:
        whole_text.add(event)
    expected_choice = whole_text.response()["choices"][0]
    chunks = stream(tok, cs, evs)
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected_choice["text"]
    offsets = [o for c in chunks if c["choices"][0]["logprobs"]
               for o in c["choices"][0]["logprobs"]["text_offset"]]  # fmt: skip
    assert offsets == expected_choice["logprobs"]["text_offset"]


def test_sse_stream_parses_as_json_lines(tok: Tokenizer) -> None:
    s = spec(include_usage=True)
    assembler = StreamAssembler(s, tok, identity(s))
    text = "".join(assembler.add_sse(e) for e in events(tok.encode("Hi 三"), "length"))
    frames = text.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    objects = [json.loads(frame.removeprefix("data: ")) for frame in frames[:-2]]
    assert all(frame.startswith("data: ") for frame in frames[:-2])
    assert objects[-1]["usage"]["completion_tokens"] == len(tok.encode("Hi 三"))
    assert all(o["usage"] is None for o in objects[:-1])
