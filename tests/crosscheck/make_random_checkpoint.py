"""Write a stand-in Ling-2.6 (bailing_hybrid) checkpoint with seeded random fp32 weights.

Every tensor name and shape of the real layout is present (per-expert unstacked MoE
weights, `mlp.gate.expert_bias`, the MTP layer at index num_hidden_layers), so a loader
that is strict about names must accept it. Needs only numpy + safetensors, so it runs in
both .venv and .venv-mlx:

    python tests/crosscheck/make_random_checkpoint.py OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

TINY_CONFIG: dict[str, object] = {
    "architectures": ["BailingMoeV2_5ForCausalLM"],
    "model_type": "bailing_hybrid",
    "vocab_size": 2048,
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

Shapes = dict[str, tuple[int, ...]]


def _is_mla(layer: int, cfg: dict) -> bool:
    return layer >= cfg["num_hidden_layers"] or (layer + 1) % cfg["layer_group_size"] == 0


def _lightning_shapes(p: str, cfg: dict) -> Shapes:
    hidden, heads, dim = cfg["hidden_size"], cfg["num_attention_heads"], cfg["head_dim"]
    return {
        f"{p}.query_key_value.weight": (3 * heads * dim, hidden),
        f"{p}.query_layernorm.weight": (dim,),
        f"{p}.key_layernorm.weight": (dim,),
        f"{p}.g_proj.weight": (heads * dim, hidden),
        f"{p}.g_norm.weight": (heads * dim,),
        f"{p}.dense.weight": (hidden, heads * dim),
    }


def _mla_shapes(p: str, cfg: dict) -> Shapes:
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    nope, rope, v_dim = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    q_rank, kv_rank = cfg["q_lora_rank"], cfg["kv_lora_rank"]
    return {
        f"{p}.q_a_proj.weight": (q_rank, hidden),
        f"{p}.q_a_layernorm.weight": (q_rank,),
        f"{p}.q_b_proj.weight": (heads * (nope + rope), q_rank),
        f"{p}.kv_a_proj_with_mqa.weight": (kv_rank + rope, hidden),
        f"{p}.kv_a_layernorm.weight": (kv_rank,),
        f"{p}.kv_b_proj.weight": (heads * (nope + v_dim), kv_rank),
        f"{p}.dense.weight": (hidden, heads * v_dim),
    }


def _swiglu_shapes(p: str, hidden: int, inner: int) -> Shapes:
    return {
        f"{p}.gate_proj.weight": (inner, hidden),
        f"{p}.up_proj.weight": (inner, hidden),
        f"{p}.down_proj.weight": (hidden, inner),
    }


def _moe_shapes(p: str, cfg: dict) -> Shapes:
    hidden, n_experts = cfg["hidden_size"], cfg["num_experts"]
    shared = cfg.get("moe_shared_expert_intermediate_size") or (
        cfg["moe_intermediate_size"] * cfg["num_shared_experts"]
    )
    shapes: Shapes = {
        f"{p}.gate.weight": (n_experts, hidden),
        f"{p}.gate.expert_bias": (n_experts,),
    }
    for e in range(n_experts):
        shapes |= _swiglu_shapes(f"{p}.experts.{e}", hidden, cfg["moe_intermediate_size"])
    return shapes | _swiglu_shapes(f"{p}.shared_experts", hidden, shared)


def _layer_shapes(layer: int, cfg: dict) -> Shapes:
    p, hidden = f"model.layers.{layer}", cfg["hidden_size"]
    shapes: Shapes = {
        f"{p}.input_layernorm.weight": (hidden,),
        f"{p}.post_attention_layernorm.weight": (hidden,),
    }
    attention = _mla_shapes if _is_mla(layer, cfg) else _lightning_shapes
    shapes |= attention(f"{p}.attention", cfg)
    if layer < cfg["first_k_dense_replace"]:
        shapes |= _swiglu_shapes(f"{p}.mlp", hidden, cfg["intermediate_size"])
    else:
        shapes |= _moe_shapes(f"{p}.mlp", cfg)
    if layer >= cfg["num_hidden_layers"]:  # MTP layer
        for name in ("enorm", "hnorm", "final_layernorm"):
            shapes[f"{p}.{name}.weight"] = (hidden,)
        shapes[f"{p}.eh_proj.weight"] = (hidden, 2 * hidden)
    return shapes


def checkpoint_shapes(cfg: dict) -> Shapes:
    """Name -> [out, in] shape of every tensor of a bailing_hybrid checkpoint."""
    hidden, vocab = cfg["hidden_size"], cfg["vocab_size"]
    shapes: Shapes = {
        "model.word_embeddings.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    n_layers = cfg["num_hidden_layers"] + cfg["num_nextn_predict_layers"]
    for layer in range(n_layers):
        shapes |= _layer_shapes(layer, cfg)
    return shapes


def random_tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Matrices ~N(0, 0.02); norm weights ~1 + N(0, 0.05); expert_bias ~N(0, 0.05)."""
    if name.endswith("expert_bias"):
        values = rng.normal(0.0, 0.05, shape)
    elif len(shape) == 1:
        values = 1.0 + rng.normal(0.0, 0.05, shape)
    else:
        values = rng.normal(0.0, 0.02, shape)
    return values.astype(np.float32)


def write_random_checkpoint(out_dir: Path, seed: int = 0, cfg: dict | None = None) -> Path:
    cfg = dict(TINY_CONFIG if cfg is None else cfg)
    rng = np.random.default_rng(seed)
    tensors = {
        name: random_tensor(name, shape, rng) for name, shape in checkpoint_shapes(cfg).items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = write_random_checkpoint(args.out_dir, args.seed)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
