import random

import pytest

from engine.detokenizer import IncrementalDetokenizer, StopStringMatcher
from engine.model_builder.tokenizer_build import CORPUS_DIR, build_tiny_tokenizer
from engine.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(out)
    return Tokenizer.from_dir(out)


def _stream(tok: Tokenizer, ids: list[int], skip: bool) -> list[str]:
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip)
    return [detok.add(i) for i in ids] + [detok.flush()]


def _first_split_character(tok: Tokenizer, text: str) -> tuple[str, list[int]]:
    """A character whose tokens each hold an incomplete UTF-8 sequence."""
    for ch in text:
        ids = tok.encode(ch)
        if len(ids) > 1 and all(
            not tok.token_bytes(i).decode("utf-8", errors="ignore") for i in ids
        ):
            return ch, ids
    raise AssertionError("no split character found")


@pytest.mark.parametrize("text", ["春眠不觉晓处处闻啼鸟", "🤖📦🧪🌍"], ids=["chinese", "emoji"])
def test_split_character_is_held_until_complete(tok: Tokenizer, text: str) -> None:
    ch, ids = _first_split_character(tok, text)
    detok = IncrementalDetokenizer(tok)
    for token_id in ids[:-1]:
        assert detok.add(token_id) == ""
        assert detok.pending_bytes
    assert detok.add(ids[-1]) == ch
    assert detok.pending_bytes == b""
    assert detok.flush() == ""


def test_truncated_character_becomes_one_replacement_at_flush(tok: Tokenizer) -> None:
    _, ids = _first_split_character(tok, "🤖📦🧪🌍")
    hello = tok.encode("ok")
    pieces = _stream(tok, hello + ids[:-1], skip=True)
    assert "".join(pieces[:-1]) == "ok"
    assert pieces[-1] == "\ufffd"
    assert "".join(pieces) == tok.decode(hello + ids[:-1])


@pytest.mark.parametrize("skip", [True, False])
def test_streaming_matches_decode_on_corpus_and_chat(tok: Tokenizer, skip: bool) -> None:
    text = (CORPUS_DIR / "multilingual.txt").read_text("utf-8")
    chat = tok.apply_chat_template([{"role": "user", "content": "天气 🌧️ café"}])
    for sample in (text, chat + "<tool_call>\n{}\n</tool_call><|role_end|>"):
        ids = tok.encode(sample)
        pieces = _stream(tok, ids, skip)
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)
        assert all("\ufffd" not in piece for piece in pieces)


@pytest.mark.parametrize("seed", range(5))
def test_streaming_matches_decode_on_random_ids(tok: Tokenizer, seed: int) -> None:
    """Random ids give invalid UTF-8; replacement characters must match the Rust decoder."""
    rng = random.Random(seed)
    ids = [rng.randrange(tok.vocab_size) for _ in range(400)]
    for skip in (True, False):
        assert "".join(_stream(tok, ids, skip)) == tok.decode(ids, skip_special_tokens=skip)


class ByteTable:
    """A minimal token source: the detokenizer needs only bytes per id, never decode."""

    def __init__(self, table: dict[int, bytes], special: set[int]) -> None:
        self.table, self.special = table, special

    def token_bytes(self, token_id: int) -> bytes:
        return self.table[token_id]

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special


def test_invalid_bytes_are_replaced_once_certain() -> None:
    euro = "€".encode()  # e2 82 ac
    table = {0: euro[:1], 1: euro[1:2], 2: euro[2:], 3: b"A", 4: b"<s>", 5: b"\xff"}
    detok = IncrementalDetokenizer(ByteTable(table, special={4}))
    assert [detok.add(i) for i in (0, 1)] == ["", ""]
    assert detok.add(4) == ""  # skipped special tokens do not break the character
    assert detok.add(3) == "\ufffdA"  # e2 82 followed by 'A' can never complete
    assert detok.add(5) == "\ufffd"
    assert [detok.add(i) for i in (0, 1, 2)] == ["", "", "€"]
    keep = IncrementalDetokenizer(ByteTable(table, special={4}), skip_special_tokens=False)
    assert keep.add_many([0, 4, 1, 2]) == "\ufffd<s>\ufffd\ufffd"


def _feed_all(stops: list[str], pieces: list[str]) -> tuple[str, str | None]:
    matcher = StopStringMatcher(stops)
    out = []
    for piece in pieces:
        check = matcher.feed(piece)
        out.append(check.emit)
        if check.stopped:
            return "".join(out), check.stop
    return "".join(out) + matcher.flush(), None


def test_stop_string_prefix_is_held_back() -> None:
    matcher = StopStringMatcher(["\n\n", "END"])
    assert matcher.feed("Hello\n").emit == "Hello"
    assert matcher.held == "\n"
    assert matcher.feed("world E").emit == "\nworld "
    assert matcher.feed("N").emit == ""
    assert matcher.feed("D!").stop == "END"
    assert matcher.emitted_chars == len("Hello\nworld ")
    assert matcher.feed("more") == matcher.feed("")  # nothing after a stop
    assert matcher.flush() == ""


def test_held_text_released_at_flush() -> None:
    matcher = StopStringMatcher(["</answer>"])
    check = matcher.feed("42</ans")
    assert (check.emit, check.stopped) == ("42", False)
    assert matcher.flush() == "</ans"


def test_stop_completed_first_wins_regardless_of_chunking() -> None:
    stops = ["abcd", "bc", "xyz"]
    text = "012abcdxyz"
    whole = _feed_all(stops, [text])
    assert whole == ("012a", "bc")
    rng = random.Random(0)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randrange(len(text) - 1)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert _feed_all(stops, pieces) == whole


def test_no_stop_passes_everything_and_rejects_empty_stop() -> None:
    assert _feed_all(["STOP"], ["a", "S", "T", "O", "p"]) == ("aSTOp", None)
    assert _feed_all([], ["abc"]) == ("abc", None)
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher(["ok", ""])


def test_stream_of_corpus_split_by_tokens(tok: Tokenizer) -> None:
    text = (CORPUS_DIR / "serving_prose.txt").read_text("utf-8")
    stop = "memory bandwidth"
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.add(i) for i in tok.encode(text)]
    emitted, matched = _feed_all([stop], pieces)
    assert matched == stop
    assert emitted == text[: text.index(stop)]
