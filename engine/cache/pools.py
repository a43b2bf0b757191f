"""The two per-worker caches: paged MLA latents and Lightning state slots.

The allocators are plain Python; the storage tensors are only touched by the model runner.
"""

from __future__ import annotations

import torch

from engine.cache.allocator import IdAllocator
from engine.config import ModelConfig


class LatentPool:
    """Pages of `page_size` tokens x MLA layers x (kv_lora_rank + qk_rope_head_dim)."""

    def __init__(
        self,
        cfg: ModelConfig,
        num_pages: int,
        page_size: int,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
    ) -> None:
        self.page_size = page_size
        self.pages = IdAllocator(num_pages, "latent pages")
        shape = (len(cfg.mla_layers), num_pages, page_size, cfg.latent_dim)
        self.storage = torch.zeros(shape, dtype=dtype, device=device)

    def pages_for(self, num_tokens: int) -> int:
        return (num_tokens + self.page_size - 1) // self.page_size

    def allocate(self, num_pages: int) -> list[int]:
        return self.pages.allocate(num_pages)

    def free(self, pages: list[int]) -> None:
        self.pages.release(pages)

    @property
    def num_free(self) -> int:
        return self.pages.num_free

    def check_integrity(self) -> None:
        self.pages.check_integrity()


class StatePool:
    """One slot per running sequence: [linear layers, heads, D, D] fp32 (`heads` is this
    tensor-parallel rank's share of the model's heads; all of them by default)."""

    def __init__(
        self,
        cfg: ModelConfig,
        num_slots: int,
        device: str | torch.device = "cpu",
        heads: int | None = None,
    ) -> None:
        self.slots = IdAllocator(num_slots, "state slots")
        H, D = heads or cfg.num_attention_heads, cfg.head_dim
        shape = (num_slots, len(cfg.linear_layers), H, D, D)
        self.storage = torch.zeros(shape, dtype=torch.float32, device=device)

    def allocate(self) -> int:
        return self.slots.allocate(1)[0]

    def free(self, slot: int) -> None:
        self.slots.release([slot])

    @property
    def num_free(self) -> int:
        return self.slots.num_free

    def check_integrity(self) -> None:
        self.slots.check_integrity()

    @staticmethod
    def bytes_per_slot(cfg: ModelConfig) -> int:
        return len(cfg.linear_layers) * cfg.num_attention_heads * cfg.head_dim**2 * 4
