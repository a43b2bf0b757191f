"""Turning a config.json dict into a validated `ModelConfig`."""

from __future__ import annotations

from typing import Any

from engine.config import (
    SUPPORTED_ARCHITECTURES,
    SUPPORTED_MODEL_TYPES,
    SUPPORTED_ROPE_SCALING,
    ConfigError,
    ModelConfig,
    RopeScaling,
)
from engine.model.fp8 import Fp8Error, Fp8Scheme

_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "layer_group_size",
    "num_attention_heads",
    "head_dim",
    "group_norm_size",
    "max_position_embeddings",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "num_experts",
    "num_experts_per_tok",
    "n_group",
    "topk_group",
    "moe_intermediate_size",
)


class _Reader:
    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw, self.source = raw, source

    def fail(self, name: str, why: str) -> ConfigError:
        return ConfigError(f"{self.source}: field '{name}' {why}")

    def int(self, name: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.raw.get(name, default)
        if value is None:
            raise self.fail(name, "is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self.fail(name, f"must be >= {minimum}, got {value}")
        return value

    def float(self, name: str, default: float | None = None) -> float:
        value = self.raw.get(name, default)
        if value is None:
            raise self.fail(name, "is required")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, f"must be a number, got {value!r}")
        return float(value)

    def bool(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {value!r}")
        return value

    def expect(self, name: str, allowed: tuple[Any, ...], default: Any) -> None:
        value = self.raw.get(name, default)
        if value not in allowed:
            raise self.fail(name, f"is {value!r}; duet supports {list(allowed)}")


def _check_identity(r: _Reader) -> None:
    model_type = r.raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise r.fail("model_type", f"is {model_type!r}; duet runs {list(SUPPORTED_MODEL_TYPES)}")
    archs = r.raw.get("architectures") or list(SUPPORTED_ARCHITECTURES)
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise r.fail("architectures", f"is {archs!r}; duet runs {list(SUPPORTED_ARCHITECTURES)}")
    try:
        Fp8Scheme.from_config(r.raw)  # fp8 checkpoints are dequantized at load
    except Fp8Error as exc:
        raise r.fail("quantization_config", str(exc).removeprefix("quantization_config ")) from exc
    r.expect("score_function", ("sigmoid",), "sigmoid")
    r.expect("rope_interleave", (True,), True)
    r.expect("use_qkv_bias", (False,), False)
    r.expect("use_bias", (False,), False)
    r.expect("use_qk_norm", (True,), True)
    r.expect("tie_word_embeddings", (False,), False)
    r.expect("moe_router_enable_expert_bias", (True,), True)


def _rope_scaling(r: _Reader) -> RopeScaling | None:
    spec = r.raw.get("rope_scaling")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise r.fail("rope_scaling", f"must be an object or null, got {spec!r}")
    kind = spec.get("type", spec.get("rope_type"))
    if kind not in SUPPORTED_ROPE_SCALING:
        raise r.fail(
            "rope_scaling",
            f"type {kind!r} is not handled; duet handles {list(SUPPORTED_ROPE_SCALING)}",
        )
    sub = _Reader(spec, f"{r.source} rope_scaling")
    return RopeScaling(
        kind=kind,
        factor=sub.float("factor"),
        original_max_position_embeddings=sub.int("original_max_position_embeddings"),
        beta_fast=sub.float("beta_fast", 32.0),
        beta_slow=sub.float("beta_slow", 1.0),
        mscale=sub.float("mscale", 1.0),
        mscale_all_dim=sub.float("mscale_all_dim", 0.0),
    )


def _eos_ids(raw: dict[str, Any]) -> tuple[int, ...]:
    eos = raw.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def _check_shapes(r: _Reader, values: dict[str, Any]) -> None:
    if values["num_experts"] % values["n_group"]:
        raise r.fail("n_group", "must divide num_experts")
    if values["topk_group"] > values["n_group"]:
        raise r.fail("topk_group", "must be <= n_group")
    eligible = values["num_experts"] // values["n_group"] * values["topk_group"]
    if values["num_experts_per_tok"] > eligible:
        raise r.fail(
            "num_experts_per_tok", f"must be <= the {eligible} experts of topk_group groups"
        )
    channels = values["num_attention_heads"] * values["head_dim"]
    if channels % values["group_norm_size"]:
        raise r.fail("group_norm_size", "must divide num_attention_heads * head_dim")
    if values["qk_rope_head_dim"] % 2:
        raise r.fail("qk_rope_head_dim", "must be even")
    if int(values["head_dim"] * values["partial_rotary_factor"]) % 2:
        raise r.fail("partial_rotary_factor", "must give an even number of rotary dims")


def parse_config(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a JSON object")
    r = _Reader(raw, source)
    _check_identity(r)
    values: dict[str, Any] = {name: r.int(name) for name in _INT_FIELDS}
    values["first_k_dense_replace"] = r.int("first_k_dense_replace", 0, minimum=0)
    values["num_shared_experts"] = r.int("num_shared_experts", 0, minimum=0)
    values["num_nextn_predict_layers"] = r.int("num_nextn_predict_layers", 0, minimum=0)
    shared_default = values["moe_intermediate_size"] * values["num_shared_experts"]
    values["shared_expert_intermediate_size"] = (
        r.int("moe_shared_expert_intermediate_size", shared_default or None, minimum=0)
        if values["num_shared_experts"]
        else 0
    )
    values["partial_rotary_factor"] = r.float("partial_rotary_factor", 0.5)
    values["rope_theta"] = r.float("rope_theta")
    values["rms_norm_eps"] = r.float("rms_norm_eps")
    values["routed_scaling_factor"] = r.float("routed_scaling_factor", 1.0)
    values["norm_topk_prob"] = r.bool("norm_topk_prob", True)
    # num_key_value_heads is not read: Lightning layers use num_attention_heads for q, k and v
    # (the checkpoint's query_key_value is 3 * H * D wide) and MLA shares one latent.
    _check_shapes(r, values)
    return ModelConfig(
        **values,
        rope_scaling=_rope_scaling(r),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=_eos_ids(raw),
        raw=dict(raw),
    )
