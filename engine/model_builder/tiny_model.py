"""`make model`: the tiny default model, the real Ling-2.6 architecture scaled down.

Real field names and tensor names, seeded random weights, a byte-level BPE tokenizer trained
on text in the repository, the Ling chat template. Built, never committed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from engine.config_parse import parse_config
from engine.model.checkpoint import save_checkpoint
from engine.model.tensor_names import expected_tensor_shapes

TINY_VOCAB = 2048

TINY_CONFIG: dict[str, Any] = {
    "architectures": ["BailingMoeV2_5ForCausalLM"],
    "model_type": "bailing_hybrid",
    "vocab_size": TINY_VOCAB,
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 128,
    "moe_shared_expert_intermediate_size": 128,
    "num_hidden_layers": 8,
    "layer_group_size": 4,
    "first_k_dense_replace": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "partial_rotary_factor": 0.5,
    "group_norm_size": 2,
    "rope_theta": 600000.0,
    "rope_scaling": None,
    "rope_interleave": True,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-06,
    "q_lora_rank": 96,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "num_experts": 16,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "num_shared_experts": 1,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "score_function": "sigmoid",
    "moe_router_enable_expert_bias": True,
    "use_qkv_bias": False,
    "use_bias": False,
    "use_qk_norm": True,
    "tie_word_embeddings": False,
    "num_nextn_predict_layers": 1,
    "torch_dtype": "float32",
}


def random_weights(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights: matrices ~ N(0, 1/in), norms ~ 1 + N(0, 0.1), expert bias ~ N(0, 0.1)."""
    cfg = parse_config(config, source="tiny config")
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in sorted(expected_tensor_shapes(cfg).items()):
        if name.endswith("expert_bias"):
            t = torch.randn(shape, generator=gen) * 0.1
        elif len(shape) == 1:
            t = 1.0 + torch.randn(shape, generator=gen) * 0.1
        elif name == "model.word_embeddings.weight":
            t = torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        tensors[name] = t.to(torch.float32)
    return tensors


def write_model_dir(
    out_dir: Path, config: dict[str, Any], seed: int, max_shard_bytes: int | None = None
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_checkpoint(random_weights(config, seed), out_dir, max_shard_bytes=max_shard_bytes)


def build_tiny_model(out_dir: Path, seed: int = 0) -> None:
    from engine.model_builder.tokenizer_build import build_tiny_tokenizer, special_token_ids

    build_tiny_tokenizer(out_dir, vocab_size=TINY_VOCAB)
    bos, eos = special_token_ids(out_dir)
    config = dict(TINY_CONFIG, bos_token_id=bos, eos_token_id=list(eos), pad_token_id=eos[0])
    write_model_dir(out_dir, config, seed)
    generation = {
        "bos_token_id": bos,
        "eos_token_id": list(eos),
        "pad_token_id": eos[0],
        "do_sample": False,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the tiny Ling-2.6 model (random weights).")
    parser.add_argument(
        "--out", type=Path, default=Path("models/ling-tiny"), help="output directory"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed")
    args = parser.parse_args(argv)
    build_tiny_model(args.out, args.seed)
    print(f"tiny model written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
