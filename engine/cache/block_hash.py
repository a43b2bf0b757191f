"""Block identity for prefix caching, the one implementation shared by the gateway, the workers
and the Redis index.

A model fingerprint names everything that decides what a token prefix computes to: the
config, the checkpoint's layout (tensor names, shapes, dtypes from the safetensors headers)
plus a few small samples of the weight bytes, and the tokenizer file. Block i of a prompt is
identified by `h_i = H(h_{i-1}, fingerprint, tokens of block i)`, so equal hashes mean equal
whole prefixes under the same model. Only full blocks have a hash.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BLOCK_DIGEST_BYTES = 16
FINGERPRINT_DIGEST_BYTES = 8
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Bytes read at the start, middle and end of each shard's data section. Headers alone cannot
# tell a fine-tune from its base model (same names and shapes); these samples do, cheaply.
WEIGHT_SAMPLE_BYTES = 1024
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_ROOT_PARENT = bytes(BLOCK_DIGEST_BYTES)


class FingerprintError(ValueError):
    """The model directory lacks a file the fingerprint needs, or a file is malformed."""


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FingerprintError(f"{path}: cannot read JSON ({exc})") from exc


def _shard_files(model_dir: Path) -> list[Path]:
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise FingerprintError(f"{index}: no weight_map")
        return sorted({model_dir / name for name in weight_map.values()})
    single = model_dir / SINGLE_FILE
    if single.is_file():
        return [single]
    raise FingerprintError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE}")


def _header_and_samples(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    """The safetensors header (tensor name -> dtype/shape/offsets) and a few samples of the
    data section; the rest of the file is never read."""
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > _MAX_HEADER_BYTES:
                raise FingerprintError(f"{path}: header of {header_len} bytes")
            header = json.loads(f.read(header_len))
            data_start = 8 + header_len
            data_len = path.stat().st_size - data_start
            offsets = {0, max(0, data_len // 2), max(0, data_len - WEIGHT_SAMPLE_BYTES)}
            samples = []
            for offset in sorted(offsets):
                f.seek(data_start + offset)
                samples.append(f.read(WEIGHT_SAMPLE_BYTES))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FingerprintError(f"{path}: not a safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise FingerprintError(f"{path}: header is not a JSON object")
    return header, samples


def _checkpoint_digest(model_dir: Path) -> bytes:
    layout: dict[str, tuple[str, list[int]]] = {}
    sampler = hashlib.blake2b(digest_size=16)
    for path in _shard_files(model_dir):
        header, samples = _header_and_samples(path)
        for name, info in header.items():
            if name != "__metadata__":
                layout[name] = (str(info["dtype"]), [int(d) for d in info["shape"]])
        for sample in samples:
            sampler.update(struct.pack("<Q", len(sample)) + sample)
    described = _canonical_json(sorted((n, d, s) for n, (d, s) in layout.items()))
    return hashlib.blake2b(described, digest_size=16).digest() + sampler.digest()


def _file_digest(path: Path) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def model_fingerprint(model_dir_or_config: str | Path | Mapping[str, Any]) -> str:
    """A short hex id, equal in every process that serves the same model.

    A directory (or its config.json) gives the full fingerprint: config content, checkpoint
    layout and weight samples, tokenizer file. A config mapping alone gives a config-only
    fingerprint (for tests and tools without a checkpoint); it never equals a directory's.
    """
    h = hashlib.blake2b(digest_size=FINGERPRINT_DIGEST_BYTES, person=b"duet-model")
    if isinstance(model_dir_or_config, Mapping):
        h.update(b"config-only\0" + _canonical_json(dict(model_dir_or_config)))
        return h.hexdigest()
    path = Path(model_dir_or_config)
    model_dir = path.parent if path.is_file() else path
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FingerprintError(f"{model_dir}: no {CONFIG_FILE}")
    h.update(b"config\0" + _canonical_json(_read_json(config_path)))
    h.update(b"checkpoint\0" + _checkpoint_digest(model_dir))
    tokenizer = model_dir / TOKENIZER_FILE
    h.update(b"tokenizer\0" + (_file_digest(tokenizer) if tokenizer.is_file() else b"none"))
    return h.hexdigest()


def block_hashes(token_ids: Sequence[int], block_size: int, fingerprint: str) -> list[str]:
    """Chained hashes (hex) of every full block of `token_ids`; a trailing partial block has
    none. `block_hashes(p + q)` starts with `block_hashes(p)` when len(p) is a multiple of
    block_size, so a prompt's hashes are a prefix of any extension's."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    fp = fingerprint.encode()
    salt = struct.pack("<I", len(fp)) + fp
    token_format = struct.Struct(f"<{block_size}I")
    parent = _ROOT_PARENT
    hashes = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        try:
            packed = token_format.pack(*token_ids[start : start + block_size])
        except struct.error as exc:
            raise ValueError(f"token ids must be integers in [0, 2**32): {exc}") from exc
        parent = hashlib.blake2b(parent + salt + packed, digest_size=BLOCK_DIGEST_BYTES).digest()
        hashes.append(parent.hex())
    return hashes
