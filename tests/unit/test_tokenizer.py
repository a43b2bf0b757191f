import hashlib
import json
import shutil
from pathlib import Path

import pytest
from tokenizers import pre_tokenizers

from engine.model_builder.tokenizer_build import (
    CORPUS_DIR,
    LING_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    build_tiny_tokenizer,
    special_token_ids,
)
from engine.tokenizer import Tokenizer, byte_level_char_to_byte

CORPUS_FILES = sorted(CORPUS_DIR.glob("*.txt"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tok(tiny_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_dir)


def _digests(directory: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
        for name in ("tokenizer.json", "tokenizer_config.json")
    }


def test_corpus_size_and_scripts() -> None:
    text = "".join(path.read_text("utf-8") for path in CORPUS_FILES)
    assert 30_000 <= len(text.encode("utf-8")) <= 80_000
    for sample in ("推理", "トークナイザー", "Größe", "crème", "🚀"):
        assert sample in text


def test_build_is_deterministic(tiny_dir: Path, tmp_path: Path) -> None:
    build_tiny_tokenizer(tmp_path / "again")
    assert _digests(tmp_path / "again") == _digests(tiny_dir)


@pytest.mark.parametrize("vocab_size", [512, 2048])
def test_vocab_size_and_special_tokens_at_end(tmp_path: Path, vocab_size: int) -> None:
    build_tiny_tokenizer(tmp_path, vocab_size=vocab_size)
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.vocab_size == vocab_size
    first = vocab_size - len(SPECIAL_TOKENS)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(first, vocab_size))
    ids = special_token_ids(tmp_path)
    assert ids.bos_id == first
    assert ids.eos_ids == (first + 1, first + 2)
    assert (tok.bos_id, tok.eos_ids, tok.pad_id) == (ids.bos_id, ids.eos_ids, ids.eos_ids[0])


def test_special_token_ids_for_default_build(tiny_dir: Path) -> None:
    bos, eos = special_token_ids(tiny_dir)
    assert (bos, eos) == (2035, (2036, 2037))


def test_tokenizer_config_contents(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text("utf-8"))
    assert config["bos_token"] == "<|startoftext|>"
    assert config["eos_token"] == "<|endoftext|>"
    assert config["pad_token"] == "<|endoftext|>"
    assert config["chat_template"] == LING_CHAT_TEMPLATE
    assert config["model_max_length"] > 0
    decoder = config["added_tokens_decoder"]
    assert [decoder[str(2035 + i)]["content"] for i in range(13)] == list(SPECIAL_TOKENS)
    special = {entry["content"] for entry in decoder.values() if entry["special"]}
    assert special == {"<|startoftext|>", "<|endoftext|>", "<|role_end|>", "<role>", "</role>"}


def test_rejects_too_small_vocab_and_corpus(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least"):
        build_tiny_tokenizer(tmp_path / "a", vocab_size=100)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "small.txt").write_text("tiny corpus", encoding="utf-8")
    with pytest.raises(ValueError, match="corpus too small"):
        build_tiny_tokenizer(tmp_path / "b", vocab_size=2048, corpus_dir=corpus)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus_round_trip(tok: Tokenizer, path: Path) -> None:
    text = path.read_text("utf-8")
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_added_tokens_encode_atomically(tok: Tokenizer) -> None:
    ids = tok.encode("<role>HUMAN</role>hi<|role_end|><tool_call>")
    assert ids[0] == 2038
    assert ids[-2:] == [2037, 2040]
    assert tok.decode(ids, skip_special_tokens=True) == "HUMANhi<tool_call>"
    assert tok.is_special(2037) and not tok.is_special(2040)
    assert tok.encode("hello", add_special_tokens=True) == tok.encode("hello")


def test_token_bytes_and_id_to_token(tok: Tokenizer) -> None:
    assert tok.token_bytes(2037) == b"<|role_end|>"
    assert tok.id_to_token(2038) == "<role>"
    split = tok.encode("🚀")
    assert len(split) > 1
    assert b"".join(tok.token_bytes(i) for i in split) == "🚀".encode()
    for bad in (-1, tok.vocab_size):
        with pytest.raises(ValueError, match="outside vocabulary"):
            tok.token_bytes(bad)
        with pytest.raises(ValueError, match="outside vocabulary"):
            tok.id_to_token(bad)


def test_byte_level_table_is_the_bpe_alphabet() -> None:
    table = byte_level_char_to_byte()
    assert sorted(table.values()) == list(range(256))
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table["Ġ"] == ord(" ") and table["A"] == ord("A")


def test_eos_ids_prefer_generation_config(tiny_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_dir, tmp_path / "tok"))
    (copy / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 7, "eos_token_id": [11, 12, 13]}), encoding="utf-8"
    )
    tok = Tokenizer.from_dir(copy)
    assert (tok.bos_id, tok.eos_ids) == (7, (11, 12, 13))
    (copy / "generation_config.json").unlink()
    (copy / "config.json").write_text(json.dumps({"eos_token_id": 5}), encoding="utf-8")
    assert Tokenizer.from_dir(copy).eos_ids == (5,)


def test_from_dir_errors_name_the_file(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Tokenizer.from_dir(tmp_path / "nowhere")
    copy = Path(shutil.copytree(tiny_dir, tmp_path / "tok"))
    (copy / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json is not valid JSON"):
        Tokenizer.from_dir(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r"missing: .*tokenizer\.json"):
        Tokenizer.from_dir(copy)
    shutil.copy(tiny_dir / "tokenizer_config.json", copy / "tokenizer_config.json")
    (copy / "tokenizer.json").write_text(json.dumps({"model": 3}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json is not a tokenizer"):
        Tokenizer.from_dir(copy)
