"""The forced tool-call parser: `prefix + continuation` gives a tool call whenever the
continuation closes the JSON object; otherwise the text comes back verbatim as content. Fed in
any pieces, it gives the same result as fed whole."""

import itertools
import random
from collections.abc import Callable

import pytest

from control_plane.openai_api.forced_tool import ForcedToolCallParser
from engine.tool_calls import ParsedOutput, ToolCall

NAMED = '<tool_call>\n{"name": "get_weather", "arguments": '
ANY_NAME = '<tool_call>\n{"name": "'


def ids() -> Callable[[], str]:
    numbers = itertools.count()
    return lambda: f"call_{next(numbers)}"


def parse_whole(prefix: str, text: str) -> ParsedOutput:
    parser = ForcedToolCallParser(prefix, ids())
    first, last = parser.feed(text), parser.flush()
    return ParsedOutput(first.content + last.content, first.tool_calls + last.tool_calls)


def parse_pieces(prefix: str, text: str, rng: random.Random) -> ParsedOutput:
    parser = ForcedToolCallParser(prefix, ids())
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    outputs = [parser.feed(piece) for piece in pieces] + [parser.flush()]
    return ParsedOutput(
        "".join(o.content for o in outputs), tuple(c for o in outputs for c in o.tool_calls)
    )


CASES = [
    (  # the model closes the JSON and the block
        NAMED,
        '{"city": "Paris"}}\n</tool_call>',
        ParsedOutput("", (ToolCall(0, "call_0", "get_weather", '{"city": "Paris"}'),)),
    ),
    (  # closes the JSON, then eos: no </tool_call> needed
        NAMED,
        '{"city": "Pa}ris\\"{"}}',
        ParsedOutput("", (ToolCall(0, "call_0", "get_weather", '{"city": "Pa}ris\\"{"}'),)),
    ),
    (  # text after the forced call is content; a second block is a second call
        NAMED,
        '{"city": "Oslo"}}\n</tool_call>\n<tool_call>\n{"name": "get_time"}\n</tool_call>\nDone.',
        ParsedOutput(
            "Done.",
            (
                ToolCall(0, "call_0", "get_weather", '{"city": "Oslo"}'),
                ToolCall(1, "call_1", "get_time", "{}"),
            ),
        ),
    ),
    (  # the model picks the name
        ANY_NAME,
        'get_time", "arguments": {}}\n</tool_call>',
        ParsedOutput("", (ToolCall(0, "call_0", "get_time", "{}"),)),
    ),
    (  # never closes (cut by length): all of it is content, verbatim
        NAMED,
        '{"city": "Par',
        ParsedOutput(NAMED + '{"city": "Par'),
    ),
    (  # closes, but the JSON is invalid: content, and the rest is parsed as usual
        NAMED,
        "{city: Paris}} and more",
        ParsedOutput(NAMED + "{city: Paris}} and more"),
    ),
    (  # arguments that are not an object make an invalid call
        NAMED,
        '"Paris"} tail',
        ParsedOutput(NAMED + '"Paris"} tail'),
    ),
    (  # a partial close tag at the end is content
        NAMED,
        "{}}\n</tool_",
        ParsedOutput("</tool_", (ToolCall(0, "call_0", "get_weather", "{}"),)),
    ),
]


@pytest.mark.parametrize(("prefix", "text", "expected"), CASES)
def test_forced_parse_whole(prefix: str, text: str, expected: ParsedOutput) -> None:
    assert parse_whole(prefix, text) == expected


@pytest.mark.parametrize(("prefix", "text", "expected"), CASES)
def test_forced_parse_in_pieces_equals_whole(
    prefix: str, text: str, expected: ParsedOutput
) -> None:
    rng = random.Random(len(text))
    for _ in range(30):
        assert parse_pieces(prefix, text, rng) == expected


def test_call_is_released_as_soon_as_the_json_closes() -> None:
    parser = ForcedToolCallParser(NAMED, ids())
    assert parser.feed('{"city": ') == ParsedOutput("")
    released = parser.feed('"Rome"}}')
    assert released == ParsedOutput("", (ToolCall(0, "call_0", "get_weather", '{"city": "Rome"}'),))
    assert parser.feed("\n</tool_call>") == ParsedOutput("")
    assert parser.flush() == ParsedOutput("")


def test_prefix_must_open_a_block() -> None:
    with pytest.raises(ValueError, match="starts with"):
        ForcedToolCallParser('{"name": "x"', ids())
