"""Derived model facts: layer map, decay rule, slopes, YaRN."""

from __future__ import annotations

import math

from engine.config_parse import parse_config
from engine.model_builder.tiny_model import TINY_CONFIG

FLASH_LIKE = TINY_CONFIG | {
    "num_hidden_layers": 32,
    "layer_group_size": 8,
    "num_attention_heads": 32,
}


def test_layer_map_of_flash() -> None:
    cfg = parse_config(FLASH_LIKE)
    assert cfg.mla_layers == (7, 15, 23, 31)
    assert len(cfg.linear_layers) == 28
    assert not cfg.is_moe_layer(0) and cfg.is_moe_layer(1)
    assert cfg.is_mla_layer(32)  # the MTP layer


def test_trailing_layers_past_the_last_group_are_mla() -> None:
    cfg = parse_config(TINY_CONFIG | {"num_hidden_layers": 10})
    assert cfg.mla_layers == (3, 7, 8, 9)


def test_decay_uses_layer_idx_over_l_minus_1() -> None:
    cfg = parse_config(FLASH_LIKE)
    slopes = [2 ** (-8 * (h + 1) / 32) for h in range(32)]
    for layer in (0, 5, 30):
        factor = 1 - layer / 31 + 1e-5
        assert all(
            math.isclose(g, -s * factor, rel_tol=1e-12)
            for g, s in zip(cfg.lightning_log_decay(layer), slopes, strict=True)
        )


def test_slopes_for_non_power_of_two_heads() -> None:
    cfg = parse_config(TINY_CONFIG | {"num_attention_heads": 6, "group_norm_size": 2})
    base4 = [2 ** (-8 * (i + 1) / 4) for i in range(4)]
    base8 = [2 ** (-8 * (i + 1) / 8) for i in range(8)]
    assert cfg.decay_slopes() == base4 + base8[0::2][:2]


def test_yarn_scales_mla_softmax() -> None:
    yarn = {
        "type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 1024,
        "mscale_all_dim": 1.0,
    }
    cfg = parse_config(TINY_CONFIG | {"rope_scaling": yarn})
    m = 0.1 * math.log(4.0) + 1
    assert math.isclose(cfg.mla_softmax_scale(), 48**-0.5 * m * m)
