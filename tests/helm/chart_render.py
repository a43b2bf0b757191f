"""Helpers of the chart tests: profiles, manifest lookup (the fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from helm_python.chart import values_from_yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "duet"
RELEASE = "r1"

Manifest = dict[str, Any]
Renderer = Callable[..., list[Manifest]]

# Every optional feature on at once (the autoscaler excludes the HPAs, so they get their own).
ALL_FEATURES: dict[str, Any] = {
    "autoscaler": {"enabled": True},
    "networkPolicy": {
        "enabled": True,
        "gatewayFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
        ],
        "metricsFrom": [{"namespaceSelector": {}}],
    },
    "serviceMonitor": {"enabled": True},
    "httpRoute": {"enabled": True, "hostnames": ["duet.example.com"]},
    "ingress": {"enabled": True, "className": "nginx"},
    "apiKeys": {"keys": ["sk-test-key-0123456789"]},
    "prefill": {"rdma": {"enabled": True}, "hostNetwork": True},
    "redis": {"bundled": {"persistence": {"enabled": True}}},
}
WITH_HPAS: dict[str, Any] = {
    "prefill": {"hpa": {"enabled": True}},
    "decode": {"hpa": {"enabled": True}},
}


def profile_values(name: str) -> dict[str, Any]:
    """Values of a named profile: default, h20, cpu (the chart's files), all-features, hpa."""
    if name in ("h20", "cpu"):
        return values_from_yaml((CHART_DIR / f"values-{name}.yaml").read_text())
    return {"default": {}, "all-features": ALL_FEATURES, "hpa": WITH_HPAS}[name]


PROFILES = ("default", "h20", "cpu", "all-features", "hpa")


def manifests_of(rendered: dict[str, str]) -> list[Manifest]:
    docs: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def find(docs: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {e["name"]: e for e in container.get("env", [])}
