import itertools
import json
import random
import re
from collections.abc import Callable

import pytest

from engine.tool_calls import (
    ParsedOutput,
    StreamingToolCallParser,
    ToolCall,
    new_call_id,
    parse_tool_calls,
)

CALL_A = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CALL_B = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": [2, "三"]}}\n</tool_call>'


def id_factory() -> Callable[[], str]:  # deterministic ids: call_0, call_1, ...
    numbers = itertools.count()
    return lambda: f"call_{next(numbers)}"


def summary(output: ParsedOutput) -> tuple[str, list[tuple[int, str, str, str]]]:
    return output.content, [(c.index, c.id, c.name, c.arguments) for c in output.tool_calls]


def test_plain_text_has_no_tool_calls() -> None:
    assert parse_tool_calls("Just text.\n") == ParsedOutput("Just text.\n", ())


def test_single_call_with_content() -> None:
    parsed = parse_tool_calls("Let me check.\n" + CALL_A + "\n", id_factory())
    assert parsed == ParsedOutput(
        "Let me check.",
        (ToolCall(0, "call_0", "get_weather", '{"city": "Paris"}'),),
    )


def test_two_calls_arguments_are_json_strings() -> None:
    parsed = parse_tool_calls(CALL_A + "\n" + CALL_B, id_factory())
    assert parsed.content == ""
    assert [(c.index, c.name) for c in parsed.tool_calls] == [(0, "get_weather"), (1, "add")]
    assert json.loads(parsed.tool_calls[1].arguments) == {"a": 1, "b": [2, "三"]}
    assert parsed.tool_calls[1].arguments == '{"a": 1, "b": [2, "三"]}'


def test_missing_arguments_means_empty_object() -> None:
    parsed = parse_tool_calls('<tool_call>{"name": "now"}</tool_call>')
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("now", "{}")]


@pytest.mark.parametrize(
    "block",
    [
        '<tool_call>\n{"name": "f", "arguments": {\n</tool_call>',
        '<tool_call>\n{"arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "f", "arguments": "x"}\n</tool_call>',
        "<tool_call>\n[1, 2]\n</tool_call>",
        '<tool_call>\n{"name": "", "arguments": {}}\n</tool_call>',
    ],
)
def test_malformed_block_is_left_as_content(block: str) -> None:
    text = "Before " + block + " after\n" + CALL_A
    parsed = parse_tool_calls(text, id_factory())
    assert parsed.content == "Before " + block + " after"
    assert [c.name for c in parsed.tool_calls] == ["get_weather"]


def test_unterminated_block_is_content() -> None:
    text = CALL_A + '\n  tail <tool_call>\n{"name": "f"'
    parsed = parse_tool_calls(text)
    assert parsed.content == 'tail <tool_call>\n{"name": "f"'
    assert len(parsed.tool_calls) == 1


def test_default_ids_look_like_openai_ids() -> None:
    ids = [new_call_id() for _ in range(20)]
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_partial_tag_is_never_emitted_as_content() -> None:
    parser = StreamingToolCallParser(id_factory())
    assert parser.feed("Hello <tool").content == "Hello"
    assert parser.feed("_ca").content == ""
    step = parser.feed('ll>\n{"name": "f", "arguments": {}}\n</tool')
    assert step == ParsedOutput("", ())
    step = parser.feed("_call>\nDone <b>")
    assert summary(step) == ("Done <b>", [(0, "call_0", "f", "{}")])
    assert parser.flush() == ParsedOutput("", ())


def test_lookalike_tag_is_released() -> None:
    parser = StreamingToolCallParser()
    assert parser.feed("a <tool_c").content == "a"
    assert parser.feed("ar>").content == " <tool_car>"
    assert parser.flush().content == ""


TEXTS = [
    "Plain answer with trailing space \n",
    "Checking.\n" + CALL_A + "\n",
    CALL_A + "\n" + CALL_B,
    "Weird " + '<tool_call>\n{"name": 1}\n</tool_call>' + "\n\n" + CALL_B + "\n  Then text.",
    CALL_A + "   \n" + '<tool_call>{"bad"}</tool_call>' + " x",
    "text </tool_call> stray close " + CALL_A + ' unterminated <tool_call>\n{"name"',
    "<tool_call>" + "<tool_call>" + CALL_B,
    "中文 🚀 " + CALL_B + "\n结束 <",
]


def _stream(text: str, cuts: list[int]) -> tuple[str, list[tuple[int, str, str, str]]]:
    parser = StreamingToolCallParser(id_factory())
    content: list[str] = []
    calls: list[tuple[int, str, str, str]] = []
    bounds = [0, *cuts, len(text)]
    steps = [parser.feed(text[a:b]) for a, b in itertools.pairwise(bounds)]
    for step in [*steps, parser.flush()]:
        assert "<tool_c" not in step.content or "<tool_call>" in step.content
        content.append(step.content)
        calls.extend(summary(step)[1])
    return "".join(content), calls


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_deltas_concatenate_to_whole_parse(text: str) -> None:
    whole = summary(parse_tool_calls(text, id_factory()))
    assert _stream(text, []) == whole
    assert _stream(text, list(range(1, len(text)))) == whole  # one character at a time
    for cut in range(1, len(text)):
        assert _stream(text, [cut]) == whole
    rng = random.Random(len(text))
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randrange(1, min(12, len(text)))))
        assert _stream(text, cuts) == whole


def test_expected_whole_parses() -> None:
    contents = [parse_tool_calls(text).content for text in TEXTS]
    assert contents == [
        "Plain answer with trailing space \n",
        "Checking.",
        "",
        'Weird <tool_call>\n{"name": 1}\n</tool_call>Then text.',
        '<tool_call>{"bad"}</tool_call> x',
        'text </tool_call> stray closeunterminated <tool_call>\n{"name"',
        "<tool_call><tool_call>" + CALL_B,
        "中文 🚀结束 <",
    ]
