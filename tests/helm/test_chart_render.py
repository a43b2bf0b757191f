"""The chart renders, lints clean and validates against the Kubernetes schemas."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from chart_render import CHART_DIR, PROFILES, RELEASE, Manifest, Renderer, find, profile_values
from helm_python.chart import lint

K8S_VERSION = kubernetes_validate.utils.latest_version()


@pytest.mark.parametrize("profile", ["default", "h20", "cpu", "all-features"])
def test_lint_is_clean(profile: str) -> None:
    report = lint(CHART_DIR, values=profile_values(profile), strict=True, namespace="serving")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def _check_service_monitor(doc: Manifest) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    assert {e["port"] for e in spec["endpoints"]} == {"http", "metrics"}
    assert all(e["path"] == "/metrics" for e in spec["endpoints"])


def _check_http_route(doc: Manifest) -> None:
    assert doc["apiVersion"] == "gateway.networking.k8s.io/v1"
    spec = doc["spec"]
    assert spec["parentRefs"] and all("name" in ref for ref in spec["parentRefs"])
    refs = [ref for rule in spec["rules"] for ref in rule["backendRefs"]]
    assert refs == [{"name": f"{RELEASE}-control-plane", "port": 8000}]


# Custom resources: kubernetes-validate ships no schema for them, so their fields are checked here.
CRD_CHECKS = {"ServiceMonitor": _check_service_monitor, "HTTPRoute": _check_http_route}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_manifest_validates(render: Renderer, profile: str) -> None:
    docs = render(profile_values(profile))
    assert len(docs) >= 10
    for doc in docs:
        if doc["kind"] in CRD_CHECKS:
            CRD_CHECKS[doc["kind"]](doc)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(p) for p in err.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {err.message}")


def test_all_features_render_every_optional_kind(render: Renderer) -> None:
    kinds = {d["kind"] for d in render(profile_values("all-features"))}
    expected = {
        "ConfigMap", "Secret", "Deployment", "Service", "StatefulSet", "PodDisruptionBudget",
        "NetworkPolicy", "ServiceAccount", "Role", "RoleBinding", "Ingress", "HTTPRoute",
        "ServiceMonitor", "Pod",
    }  # fmt: skip
    assert expected <= kinds
    assert "HorizontalPodAutoscaler" in {d["kind"] for d in render(profile_values("hpa"))}


@pytest.mark.parametrize("release", ["duet", "prod-a"])
def test_names_follow_the_release(render: Renderer, release: str) -> None:
    docs = render({}, name=release)
    for suffix in ("control-plane", "prefill", "decode"):
        find(docs, "Deployment", f"{release}-{suffix}")
    find(docs, "Service", f"{release}-control-plane")
    find(docs, "StatefulSet", f"{release}-redis")


def test_default_release_is_minimal(render: Renderer) -> None:
    kinds: dict[str, Any] = {}
    for doc in render({}):
        kinds.setdefault(doc["kind"], []).append(doc["metadata"]["name"])
    optional = {"ServiceAccount", "Role", "RoleBinding", "HorizontalPodAutoscaler", "Secret"}
    optional |= {"NetworkPolicy", "Ingress", "HTTPRoute", "ServiceMonitor"}
    assert optional.isdisjoint(kinds), optional & set(kinds)
    assert sorted(kinds["Deployment"]) == [
        f"{RELEASE}-{n}" for n in ("control-plane", "decode", "prefill")
    ]
