"""The engine's tokenizer: a Hugging Face `tokenizer.json` plus its tokenizer_config.json.

Token ids map to exact bytes (`token_bytes`), which is what incremental detokenization and
logprob display need: a byte-level BPE token may hold part of a UTF-8 character, so its text
alone is not meaningful.

eos ids come from, in order: generation_config.json `eos_token_id`, config.json `eos_token_id`,
or tokenizer_config.json `eos_token` plus `<|role_end|>` when the vocabulary has it (the Ling
chat format ends every assistant turn with `<|role_end|>`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from engine.chat_template import ChatTemplate

ROLE_END_TOKEN = "<|role_end|>"


@cache
def byte_level_char_to_byte() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet: every byte is shown as one printable character.

    Printable Latin-1 bytes stand for themselves; the remaining bytes, in increasing order,
    are shown as the characters U+0100, U+0101, ...
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {chr(byte): byte for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            mapping[chr(0x100 + shifted)] = byte
            shifted += 1
    return mapping


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"tokenizer file missing: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _read_optional_json(path: Path) -> dict[str, Any] | None:
    return _read_json(path) if path.is_file() else None


def _token_content(value: Any) -> str | None:
    """tokenizer_config stores a token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids_field(value: Any) -> list[int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def _is_byte_level(decoder: Any) -> bool:
    if not isinstance(decoder, dict):
        return False
    if decoder.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(d) for d in decoder.get("decoders") or [])


class Tokenizer:
    """Encode, decode, and per-token bytes for one model's tokenizer."""

    def __init__(
        self,
        hf_tokenizer: HFTokenizer,
        tokenizer_json: dict[str, Any],
        config: dict[str, Any],
        generation_config: dict[str, Any] | None = None,
        model_config: dict[str, Any] | None = None,
    ) -> None:
        self._hf = hf_tokenizer
        self.config = config
        self._byte_level = _is_byte_level(tokenizer_json.get("decoder"))
        added = tokenizer_json.get("added_tokens") or []
        self._added_content = {t["id"]: t["content"] for t in added}
        self.special_ids = frozenset(t["id"] for t in added if t.get("special"))
        self._bytes_cache: dict[int, bytes] = {}
        self.bos_id = self._resolve_bos(generation_config, model_config)
        self.eos_ids = self._resolve_eos(generation_config, model_config)
        self.pad_id = self.token_to_id(_token_content(config.get("pad_token")) or "")
        self._chat_template: ChatTemplate | None = None

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load tokenizer.json + tokenizer_config.json (and generation_config/config if there)."""
        directory = Path(path)
        if not directory.is_dir():
            raise ValueError(f"tokenizer directory does not exist: {directory}")
        tokenizer_json = _read_json(directory / "tokenizer.json")
        config = _read_json(directory / "tokenizer_config.json")
        try:
            hf = HFTokenizer.from_str(json.dumps(tokenizer_json))
        except Exception as exc:  # the Rust side raises a bare Exception
            raise ValueError(f"{directory / 'tokenizer.json'} is not a tokenizer: {exc}") from None
        generation = _read_optional_json(directory / "generation_config.json")
        model = _read_optional_json(directory / "config.json")
        return cls(hf, tokenizer_json, config, generation, model)

    def _resolve_bos(self, generation: dict | None, model: dict | None) -> int | None:
        for source in (generation, model):
            ids = _ids_field((source or {}).get("bos_token_id"))
            if ids:
                return ids[0]
        return self.token_to_id(_token_content(self.config.get("bos_token")) or "")

    def _resolve_eos(self, generation: dict | None, model: dict | None) -> tuple[int, ...]:
        for source in (generation, model):
            ids = _ids_field((source or {}).get("eos_token_id"))
            if ids:
                return tuple(ids)
        candidates = [_token_content(self.config.get("eos_token")), ROLE_END_TOKEN]
        ids = [self.token_to_id(token) for token in candidates if token]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def chat_template(self) -> ChatTemplate:
        """The model's chat_template when tokenizer_config has one, else the built-in Ling one."""
        if self._chat_template is None:
            tokens = {
                name: _token_content(self.config.get(name)) or ""
                for name in ("bos_token", "eos_token", "pad_token")
            }
            self._chat_template = ChatTemplate(self.config.get("chat_template"), tokens)
        return self._chat_template

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Added-token strings in the text (e.g. `<role>`) always become their single ids."""
        return self._hf.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} outside vocabulary of {self.vocab_size}")

    def id_to_token(self, token_id: int) -> str:
        self._check_id(token_id)
        token = self._hf.id_to_token(token_id)
        if token is None:
            raise ValueError(f"token id {token_id} has no token")
        return token

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token) if token else None

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special_ids

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes this token contributes to decoded text (may be part of a character)."""
        cached = self._bytes_cache.get(token_id)
        if cached is None:
            cached = self._compute_token_bytes(token_id)
            self._bytes_cache[token_id] = cached
        return cached

    def _compute_token_bytes(self, token_id: int) -> bytes:
        if token_id in self._added_content:
            return self._added_content[token_id].encode("utf-8")
        token = self.id_to_token(token_id)
        if self._byte_level:
            table = byte_level_char_to_byte()
            return b"".join(
                bytes([table[ch]]) if ch in table else ch.encode("utf-8") for ch in token
            )
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return bytes([int(token[3:5], 16)])  # sentencepiece byte-fallback token
        return token.replace("\u2581", " ").encode("utf-8")

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool = False,
    ) -> str:
        return self.chat_template.render(messages, tools, add_generation_prompt, enable_thinking)
