"""Non-streaming chat.completion and text_completion objects, compared with literal expected
dicts: message and text, usage, both logprobs formats (token_id:N included), stop strings,
tool calls (auto and forced), finish reasons."""

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from control_plane.openai_api import (
    GenerationSpec,
    ResponseAssembler,
    ResponseIdentity,
    TokenEvent,
    ToolChoice,
)
from engine.sampling import SamplingParams
from engine.tokenizer import Tokenizer

IDENTITY = ResponseIdentity("chatcmpl-test", 1700000000, "ling-tiny")
CMPL_IDENTITY = ResponseIdentity("cmpl-test", 1700000000, "ling-tiny")
ROLE_END = 2037  # <|role_end|>, an eos id of the tiny model
WEATHER = {"type": "function", "function": {"name": "get_weather"}}
FORCED = '<tool_call>\n{"name": "get_weather", "arguments": '


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
        max_tokens=kwargs.pop("max_tokens", 50),
        stop=kwargs.pop("stop", ()),
        logprobs=kwargs.pop("logprobs", None),
    )
    return GenerationSpec(endpoint, "ling-tiny", (1, 2, 3), sampling, **kwargs)  # type: ignore[arg-type]


def run(
    tok: Tokenizer, s: GenerationSpec, ids: list[int], finish: str = "stop", **event: Any
) -> dict[str, Any]:
    identity = IDENTITY if s.endpoint == "chat" else CMPL_IDENTITY
    assembler = ResponseAssembler(s, tok, identity, call_ids())
    for i, token in enumerate(ids):
        last = i == len(ids) - 1
        assembler.add(TokenEvent(token, finish_reason=finish if last else None, **event))
    return assembler.response()


def test_chat_completion_object(tok: Tokenizer) -> None:
    ids = [one_token(tok, piece) for piece in ("H", "el", "lo", " wor", "ld")] + [ROLE_END]
    assert run(tok, spec(), ids) == {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "ling-tiny",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 6,
            "total_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def test_text_completion_object_with_logprobs(tok: Tokenizer) -> None:
    h, el, lo = (one_token(tok, piece) for piece in ("H", "el", "lo"))
    x = one_token(tok, "x")
    assembler = ResponseAssembler(spec("completion", logprobs=1), tok, CMPL_IDENTITY)
    assembler.add(TokenEvent(h, -0.25, ((x, -0.125), (h, -0.25))))
    assembler.add(TokenEvent(el, -0.5, ((el, -0.5),)))
    assembler.add(TokenEvent(lo, float("-inf"), ((x, -1.0),), "length"))
    assert assembler.response() == {
        "id": "cmpl-test",
        "object": "text_completion",
        "created": 1700000000,
        "model": "ling-tiny",
        "choices": [
            {
                "index": 0,
                "text": "Hello",
                "logprobs": {
                    "tokens": ["H", "el", "lo"],
                    "token_logprobs": [-0.25, -0.5, -9999.0],
                    "top_logprobs": [
                        {"x": -0.125, "H": -0.25},  # the sampled token is always there
                        {"el": -0.5},
                        {"x": -1.0, "lo": -9999.0},
                    ],
                    "text_offset": [0, 1, 3],
                },
                "finish_reason": "length",
            }
        ],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 3,
            "total_tokens": 6,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def test_chat_logprobs_with_bytes_and_token_ids(tok: Tokenizer) -> None:
    h, i = one_token(tok, "H"), one_token(tok, "i")
    top = ((h, -0.5), (i, -1.5))
    for as_ids, names in ((False, ("H", "i")), (True, (f"token_id:{h}", f"token_id:{i}"))):
        s = spec(logprobs=2, return_tokens_as_token_ids=as_ids)
        choice = run(tok, s, [h], "length", logprob=-0.5, top_logprobs=top)["choices"][0]
        assert choice["logprobs"] == {
            "content": [
                {
                    "token": names[0],
                    "logprob": -0.5,
                    "bytes": [72],
                    "top_logprobs": [
                        {"token": names[0], "logprob": -0.5, "bytes": [72]},
                        {"token": names[1], "logprob": -1.5, "bytes": [105]},
                    ],
                }
            ]
        }


def test_top_logprobs_are_cut_to_the_requested_count(tok: Tokenizer) -> None:
    h, i = one_token(tok, "H"), one_token(tok, "i")
    choice = run(tok, spec(logprobs=0), [h], logprob=-0.5, top_logprobs=((h, -0.5), (i, -1.0)))
    assert choice["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []


def byte_token(tok: Tokenizer, value: bytes) -> int:
    return next(t for t in range(tok.vocab_size) if tok.token_bytes(t) == value)


def test_partial_utf8_tokens(tok: Tokenizer) -> None:
    """A character split over three byte tokens: each token is shown as U+FFFD with its exact
    byte; the text holds the whole character once."""
    pieces = [byte_token(tok, bytes([b])) for b in "三".encode()] + [one_token(tok, "!")]
    cmpl = run(tok, spec("completion", logprobs=0), pieces, "length", logprob=-1.0)
    assert cmpl["choices"][0]["text"] == "三!"
    logprobs = cmpl["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["\ufffd", "\ufffd", "\ufffd", "!"]
    assert logprobs["text_offset"] == [0, 0, 0, 1]
    chat = run(tok, spec(logprobs=0), pieces, "length", logprob=-1.0)
    entries = chat["choices"][0]["logprobs"]["content"]
    assert [e["bytes"] for e in entries] == [[0xE4], [0xB8], [0x89], [33]]
    assert chat["choices"][0]["message"]["content"] == "三!"


def test_stop_string_is_not_emitted_and_finishes_with_stop(tok: Tokenizer) -> None:
    ids = tok.encode("Hi STOP here")
    body = run(tok, spec(stop=("STOP",)), ids, "length")
    choice = body["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Hi ", "stop")
    assert body["usage"]["completion_tokens"] == len(ids)  # every generated token counts
    unmatched = run(tok, spec(stop=("NEVER",)), ids, "length")["choices"][0]
    assert (unmatched["message"]["content"], unmatched["finish_reason"]) == (
        "Hi STOP here",
        "length",
    )


def test_special_tokens_are_not_content(tok: Tokenizer) -> None:
    ids = [*tok.encode("ok"), ROLE_END]
    assert run(tok, spec(), ids)["choices"][0]["message"]["content"] == "ok"


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
PARIS = {
    "id": "call_0",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def test_tool_calls_with_content(tok: Tokenizer) -> None:
    s = spec(tools=(WEATHER,), tool_choice=ToolChoice("auto"))
    ids = [*tok.encode("Let me check.\n" + CALL), ROLE_END]
    assert run(tok, s, ids)["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "Let me check.", "tool_calls": [PARIS]},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }


def test_only_tool_calls_have_null_content(tok: Tokenizer) -> None:
    s = spec(tools=(WEATHER,), tool_choice=ToolChoice("auto"))
    message = run(tok, s, [*tok.encode(CALL + "\n"), ROLE_END])["choices"][0]["message"]
    assert message == {"role": "assistant", "content": None, "tool_calls": [PARIS]}


def test_tool_blocks_are_content_without_tool_parsing(tok: Tokenizer) -> None:
    for s in (spec(), spec(tools=(WEATHER,), tool_choice=ToolChoice("none")), spec("completion")):
        choice = run(tok, s, tok.encode(CALL))["choices"][0]
        text = choice["message"]["content"] if s.endpoint == "chat" else choice["text"]
        assert (text, choice["finish_reason"]) == (CALL, "stop")


def test_a_call_cut_by_length_keeps_length(tok: Tokenizer) -> None:
    s = spec(tools=(WEATHER,), tool_choice=ToolChoice("auto"))
    choice = run(tok, s, tok.encode(CALL + " and"), "length")["choices"][0]
    assert (choice["finish_reason"], choice["message"]["tool_calls"]) == ("length", [PARIS])


def forced_spec() -> GenerationSpec:
    choice = ToolChoice("function", "get_weather")
    return spec(tools=(WEATHER,), tool_choice=choice, tool_prefix=FORCED)


def test_forced_tool_choice_yields_a_call(tok: Tokenizer) -> None:
    for continuation in ('{"city": "Paris"}}\n</tool_call>', '{"city": "Paris"}}'):
        ids = [*tok.encode(continuation), ROLE_END]
        choice = run(tok, forced_spec(), ids)["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": [PARIS]}
        assert choice["finish_reason"] == "tool_calls"


def test_forced_call_left_open_is_content(tok: Tokenizer) -> None:
    choice = run(tok, forced_spec(), tok.encode('{"city": "Par'), "length")["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": FORCED + '{"city": "Par'}
    assert choice["finish_reason"] == "length"


def test_finish_without_a_token_and_misuse(tok: Tokenizer) -> None:
    assembler = ResponseAssembler(spec(), tok, IDENTITY)
    assembler.add(TokenEvent(one_token(tok, "H")))
    with pytest.raises(ValueError, match="not finished"):
        assembler.response()
    assembler.finish("stop")
    assert assembler.response()["choices"][0]["message"]["content"] == "H"
    with pytest.raises(ValueError, match="after the response finished"):
        assembler.add(TokenEvent(one_token(tok, "H")))
    with pytest.raises(ValueError, match="finish_reason"):
        TokenEvent(1, finish_reason="preempted")


def test_events_need_logprobs_when_asked(tok: Tokenizer) -> None:
    assembler = ResponseAssembler(spec(logprobs=0), tok, IDENTITY)
    with pytest.raises(ValueError, match="carries none"):
        assembler.add(TokenEvent(one_token(tok, "H")))


def test_events_from_the_engine_and_the_worker() -> None:
    from control_plane.openai_api import from_sampled, from_worker_event
    from duet.v1 import worker_pb2 as pb
    from engine.sampling import SampledToken

    expected = TokenEvent(5, -0.5, ((5, -0.5), (7, -1.5)), "length")
    assert from_sampled(SampledToken(5, -0.5, [(5, -0.5), (7, -1.5)]), "length") == expected
    top = [pb.TopLogprob(token_id=5, logprob=-0.5), pb.TopLogprob(token_id=7, logprob=-1.5)]
    worker = pb.TokenEvent(token_id=5, logprob=-0.5, top_logprobs=top, finish_reason="length")
    assert from_worker_event(worker) == expected
    running = pb.TokenEvent(token_id=9, logprob=-0.25)
    assert from_worker_event(running) == TokenEvent(9, -0.25, (), None)
