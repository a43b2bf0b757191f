"""Bytes of one cached block for the shared L3 tier: its MLA latents and, when kept, the
Lightning state snapshot at its end.

Layout: MAGIC, u32 header length, JSON header (block hash, tensor dtypes and shapes, BLAKE2b
of the payload), payload (the tensors' raw bytes, in header order). Decoding checks the magic,
the hash, the sizes and the checksum: bytes that fail any check are never turned into tensors.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import torch

MAGIC = b"DUETBLK1"
_DTYPES = {
    str(dt).removeprefix("torch."): dt
    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn)
}


class BlockCodecError(ValueError):
    """The bytes are not a valid encoded block for the expected hash."""


@dataclass(frozen=True)
class BlockData:
    latents: torch.Tensor  # [mla_layers, block_size, W]
    snapshot: torch.Tensor | None  # [linear_layers, H, D, D] fp32, the state after the block


def _raw(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()


def encode_block(block_hash: str, block: BlockData) -> bytes:
    tensors = [("latents", block.latents)]
    if block.snapshot is not None:
        tensors.append(("snapshot", block.snapshot))
    payload = [_raw(t) for _, t in tensors]
    described = [
        {"name": n, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        for n, t in tensors
    ]
    digest = hashlib.blake2b(digest_size=16)
    for part in payload:
        digest.update(part)
    header = json.dumps(
        {"hash": block_hash, "tensors": described, "checksum": digest.hexdigest()}
    ).encode()
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *payload])


def _parse_header(data: bytes) -> tuple[dict, int]:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise BlockCodecError("not an encoded block (bad magic)")
    (header_len,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(data[start : start + header_len])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BlockCodecError(f"bad header: {exc}") from exc
    return header, start + header_len


def decode_block(block_hash: str, data: bytes) -> BlockData:
    header, offset = _parse_header(data)
    if header.get("hash") != block_hash:
        raise BlockCodecError(f"bytes are for block {header.get('hash')}, not {block_hash}")
    payload = memoryview(data)[offset:]
    if hashlib.blake2b(payload, digest_size=16).hexdigest() != header.get("checksum"):
        raise BlockCodecError(f"block {block_hash}: checksum mismatch")
    out: dict[str, torch.Tensor] = {}
    for spec in header["tensors"]:
        dtype = _DTYPES.get(spec["dtype"])
        if dtype is None:
            raise BlockCodecError(f"block {block_hash}: unsupported dtype {spec['dtype']}")
        shape = [int(d) for d in spec["shape"]]
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        if nbytes > len(payload):
            raise BlockCodecError(f"block {block_hash}: payload shorter than its header says")
        raw = bytearray(payload[:nbytes])
        payload = payload[nbytes:]
        flat = (
            torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        )
        out[spec["name"]] = flat.view(dtype).reshape(shape)
    if len(payload) or "latents" not in out:
        raise BlockCodecError(f"block {block_hash}: payload does not match its header")
    return BlockData(latents=out["latents"], snapshot=out.get("snapshot"))
