"""Build the tiny Ling-style tokenizer used by tests and the tiny model.

A byte-level BPE trained on the text files in `corpus/` (sorted by name), followed by 13 added
tokens at the end of the vocabulary, in SPECIAL_TOKENS order. Invariants of the result:
- total vocab (with added tokens) == vocab_size; the added tokens hold ids
  vocab_size - 13 .. vocab_size - 1;
- bos is `<|startoftext|>`; eos ids are `<|endoftext|>` and `<|role_end|>` (the chat format ends
  an assistant turn with `<|role_end|>`), mirroring Ling-2.6's eos pair [156892, 156895];
- the same corpus gives the same bytes in both files on every build.

The first five added tokens are special (dropped by skip_special_tokens). The tool and thinking
markup tokens are added tokens too (always encoded atomically) but not special, so that
`<tool_call>` blocks survive a skip_special_tokens decode and the tool-call parser can see them.

Run: `python -m engine.model_builder.tokenizer_build OUT_DIR [--vocab-size N]`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.chat_template import TOOLS_FOOTER, TOOLS_HEADER

CORPUS_DIR = Path(__file__).parent / "corpus"
CONTROL_TOKENS = ("<|startoftext|>", "<|endoftext|>", "<|role_end|>", "<role>", "</role>")
MARKUP_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tools>",
    "</tools>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
SPECIAL_TOKENS = CONTROL_TOKENS + MARKUP_TOKENS
BOS_TOKEN = "<|startoftext|>"
EOS_TOKENS = ("<|endoftext|>", "<|role_end|>")
PAD_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 4096  # the tiny model's max_position_embeddings
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + 1

# Ling chat template; the @NAME@ markers become JSON string literals of the shared constants so
# that this template and engine.chat_template.render_ling stay byte-identical.
_TEMPLATE_SKELETON = """\
{%- set ns = namespace(parts=[], start=0) -%}
{%- if messages[0]['role'] == 'system' -%}
{%- set ns.start = 1 -%}
{%- if messages[0]['content'] -%}{%- set ns.parts = [messages[0]['content']] -%}{%- endif -%}
{%- endif -%}
{%- if tools -%}
{%- set tool_lines = tools | map('tojson') | join('\\n') -%}
{%- set ns.parts = ns.parts + [@TOOLS_HEADER@ + tool_lines + @TOOLS_FOOTER@] -%}
{%- endif -%}
{%- set thinking = 'on' if enable_thinking is defined and enable_thinking else 'off' -%}
{%- set ns.parts = ns.parts + ['detailed thinking ' + thinking] -%}
{{- '<role>SYSTEM</role>' + (ns.parts | join('\\n')) + '<|role_end|>' -}}
{%- for message in messages[ns.start:] -%}
{%- if message['role'] == 'system' -%}
{{- '<role>SYSTEM</role>' + message['content'] + '<|role_end|>' -}}
{%- elif message['role'] == 'user' -%}
{{- '<role>HUMAN</role>' + message['content'] + '<|role_end|>' -}}
{%- elif message['role'] == 'assistant' -%}
{{- '<role>ASSISTANT</role>' -}}
{%- if message['content'] -%}{{- message['content'] -}}{%- endif -%}
{%- for call in (message['tool_calls'] or []) -%}
{%- set fn = call['function'] if call['function'] is defined else call -%}
{%- if message['content'] or not loop.first -%}{{- '\\n' -}}{%- endif -%}
{{- '<tool_call>\\n{"name": ' + (fn['name'] | tojson) + ', "arguments": ' -}}
{%- if fn['arguments'] is string -%}{{- fn['arguments'] -}}
{%- else -%}{{- fn['arguments'] | tojson -}}{%- endif -%}
{{- '}\\n</tool_call>' -}}
{%- endfor -%}
{{- '<|role_end|>' -}}
{%- elif message['role'] == 'tool' -%}
{%- if loop.first or loop.previtem['role'] != 'tool' -%}{{- '<role>OBSERVATION</role>' -}}
{%- else -%}{{- '\\n' -}}{%- endif -%}
{{- '<tool_response>\\n' + message['content'] + '\\n</tool_response>' -}}
{%- if loop.last or loop.nextitem['role'] != 'tool' -%}{{- '<|role_end|>' -}}{%- endif -%}
{%- else -%}
{{- raise_exception('unknown role: ' + message['role']) -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<role>ASSISTANT</role>' -}}{%- endif -%}
"""

LING_CHAT_TEMPLATE = _TEMPLATE_SKELETON.replace("@TOOLS_HEADER@", json.dumps(TOOLS_HEADER)).replace(
    "@TOOLS_FOOTER@", json.dumps(TOOLS_FOOTER)
)


class SpecialTokenIds(NamedTuple):
    """Unpacks as `bos, eos = special_token_ids(path)`; pad is eos_ids[0] (`<|endoftext|>`)."""

    bos_id: int
    eos_ids: tuple[int, ...]


def _corpus_pieces(corpus_dir: Path) -> Iterator[str]:
    """Corpus text with added-token strings cut out, so BPE never learns merges across them."""
    files = sorted(corpus_dir.glob("*.txt"))
    if not files:
        raise ValueError(f"no corpus files (*.txt) in {corpus_dir}")
    splitter = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))
    for path in files:
        yield from (piece for piece in splitter.split(path.read_text("utf-8")) if piece)


def _train_bpe(corpus_dir: Path, bpe_vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus_pieces(corpus_dir), trainer=trainer)
    learned = tokenizer.get_vocab_size(with_added_tokens=False)
    if learned != bpe_vocab_size:
        raise ValueError(f"corpus too small: BPE learned {learned} tokens, needed {bpe_vocab_size}")
    return tokenizer


def _add_special_tokens(tokenizer: Tokenizer) -> None:
    first_id = tokenizer.get_vocab_size(with_added_tokens=False)
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in CONTROL_TOKENS]
    )
    tokenizer.add_tokens(
        [AddedToken(token, special=False, normalized=False) for token in MARKUP_TOKENS]
    )
    for offset, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != first_id + offset:
            raise ValueError(f"added token {token!r} did not land at id {first_id + offset}")


def _tokenizer_config(tokenizer: Tokenizer) -> dict[str, object]:
    decoder = {
        str(tokenizer.token_to_id(token)): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": token in CONTROL_TOKENS,
        }
        for token in SPECIAL_TOKENS
    }
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "bos_token": BOS_TOKEN,
        "chat_template": LING_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKENS[0],
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": PAD_TOKEN,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def build_tiny_tokenizer(
    out_dir: Path, vocab_size: int = 2048, corpus_dir: Path = CORPUS_DIR
) -> None:
    """Train the tokenizer and write tokenizer.json and tokenizer_config.json into out_dir."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE}, got {vocab_size}")
    tokenizer = _train_bpe(Path(corpus_dir), vocab_size - len(SPECIAL_TOKENS))
    _add_special_tokens(tokenizer)
    total = tokenizer.get_vocab_size(with_added_tokens=True)
    if total != vocab_size:
        raise ValueError(f"built vocab has {total} tokens, expected {vocab_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"), pretty=True)
    config_text = json.dumps(_tokenizer_config(tokenizer), indent=2, ensure_ascii=False)
    (out_dir / "tokenizer_config.json").write_text(config_text + "\n", encoding="utf-8")


def special_token_ids(tokenizer_dir: Path) -> SpecialTokenIds:
    """bos and eos ids of a tokenizer built here (for config.json / generation_config.json)."""
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    tokenizer = Tokenizer.from_file(str(path))

    def lookup(token: str) -> int:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{path} has no token {token!r}")
        return token_id

    return SpecialTokenIds(
        bos_id=lookup(BOS_TOKEN),
        eos_ids=tuple(lookup(token) for token in EOS_TOKENS),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the tiny Ling-style BPE tokenizer.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args(argv)
    build_tiny_tokenizer(args.out_dir, args.vocab_size)
    ids = special_token_ids(args.out_dir)
    eos = list(ids.eos_ids)
    print(f"wrote {args.out_dir}: vocab {args.vocab_size}, bos {ids.bos_id}, eos {eos}")


if __name__ == "__main__":
    main()
