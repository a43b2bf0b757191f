"""One decode step of a model with Ling-2.6-flash layer shapes and 8 layers (1 MLA + 7 Lightning,
every layer MoE) at batch 1/16/64, against its roofline: the bytes the step must touch over the
copy bandwidth measured in the same run.

Bytes touched: every weight except the experts, the routed experts (expected distinct experts
per layer under uniform routing, E (1 - (1 - k/E)^B), which random weights give), the
embedding rows, the Lightning states (fp32, read and written) and the MLA latents of the context
(read, plus the new row). Weights are random and generated on the device as the model asks for
them, so the 8 flash-shaped layers (~54 GB in bf16) never sit in host memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from engine.config import ModelConfig
from engine.config_parse import parse_config
from engine.model.checkpoint import storage_dtype
from engine.model.ling import LingModel
from engine.model.tensor_names import expected_tensor_shapes
from engine.model_builder.tiny_model import TINY_CONFIG
from engine.runner import ModelRunner

EIGHT_LAYERS = {"num_hidden_layers": 8, "layer_group_size": 8, "first_k_dense_replace": 0,
                "num_nextn_predict_layers": 0}  # fmt: skip
FLASH_8 = {
    **TINY_CONFIG,
    **EIGHT_LAYERS,
    "vocab_size": 157184,
    "hidden_size": 4096,
    "intermediate_size": 9216,
    "moe_intermediate_size": 1024,
    "moe_shared_expert_intermediate_size": 1024,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "head_dim": 128,
    "group_norm_size": 4,
    "max_position_embeddings": 32768,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "num_experts": 256,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
}
TINY_8 = {**TINY_CONFIG, **EIGHT_LAYERS}
PAGE = 64


class RandomWeights(Mapping[str, Tensor]):
    """Checkpoint-shaped random tensors made on demand (matrices ~ N(0, 1/in), norms ~ 1)."""

    def __init__(self, cfg: ModelConfig, device: str, dtype: torch.dtype) -> None:
        self.shapes = expected_tensor_shapes(cfg, include_mtp=False)
        self.device, self.dtype = device, dtype

    def __getitem__(self, name: str) -> Tensor:
        shape = self.shapes[name]
        dtype = storage_dtype(name, self.dtype)
        if name.endswith("expert_bias"):
            return torch.zeros(shape, device=self.device, dtype=dtype)
        if len(shape) == 1:
            return torch.ones(shape, device=self.device, dtype=dtype)
        t = torch.randn(shape, device=self.device, dtype=dtype)
        return t if name.endswith("word_embeddings.weight") else t.mul_(shape[1] ** -0.5)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def step_bytes(cfg: ModelConfig, batch: int, context: int, dtype: torch.dtype) -> int:
    """The bytes one decode step of `batch` sequences at `context` tokens must touch."""
    elem = torch.empty(0, dtype=dtype).element_size()
    total = 0
    for name, shape in expected_tensor_shapes(cfg, include_mtp=False).items():
        size = math.prod(shape) * torch.empty(0, dtype=storage_dtype(name, dtype)).element_size()
        if ".experts." in name:
            continue
        total += batch * shape[1] * elem if name.endswith("word_embeddings.weight") else size
    e, k = cfg.num_experts, cfg.num_experts_per_tok
    distinct = e * (1 - (1 - k / e) ** batch)
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    total += int(moe_layers * distinct * 3 * cfg.hidden_size * cfg.moe_intermediate_size * elem)
    heads, d = cfg.num_attention_heads, cfg.head_dim
    total += len(cfg.linear_layers) * batch * heads * d * d * 4 * 2
    total += len(cfg.mla_layers) * batch * (context + 1) * cfg.latent_dim * elem
    return total


def decode_step_rows(
    dry: bool, dev: str, dt: torch.dtype, t: Callable[[Callable[[], object]], float],
    copy_gbs: float, context: int = 1024, batches: tuple[int, ...] = (1, 16, 64),
) -> list[list[str]]:  # fmt: skip
    cfg = parse_config(dict(TINY_8 if dry else FLASH_8), source="decode-step bench config")
    model = LingModel(cfg, RandomWeights(cfg, dev, dt), dt)  # type: ignore[arg-type]
    pages = max(batches) * ((context + 1) // PAGE + 1)
    runner = ModelRunner(model, num_pages=pages, page_size=PAGE, num_slots=max(batches))
    rows = []
    for batch in batches:
        seqs = [runner.new_sequence(context + 1) for _ in range(batch)]
        tokens = [1] * batch

        def step(seqs: list[Any] = seqs, tokens: list[int] = tokens) -> None:
            runner.decode(seqs, tokens)
            for s in seqs:
                s.length = context  # every call is the same step

        for s in seqs:
            s.length = context  # the cached context (its contents do not change the cost)
        sec = t(step)
        moved = step_bytes(cfg, batch, context, dt)
        roofline = moved / (copy_gbs * 1e9)
        rows.append(
            [
                f"decode step, 8 layers, B={batch}, ctx {context}",
                f"{sec * 1e3:.2f} ms",
                f"{moved / sec / 1e9:.0f} GB/s",
                f"{sec / roofline:.2f}x roofline",
                "",
            ]
        )
        for s in seqs:
            runner.release(s)
    return rows
