"""Objects in a release agree with each other: selectors, ports, probes, budgets, hooks."""

from __future__ import annotations

from typing import Any

import pytest
from chart_render import PROFILES, RELEASE, Manifest, Renderer, find, of_kind, profile_values

WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _pod_templates(docs: list[Manifest]) -> list[tuple[str, Manifest]]:
    """(workload name, pod template) of every workload, the test Pod included."""
    pods = [
        (d["metadata"]["name"], d["spec"]["template"]) for d in docs if d["kind"] in WORKLOAD_KINDS
    ]
    return pods + [(d["metadata"]["name"], d) for d in of_kind(docs, "Pod")]


def _selected(docs: list[Manifest], selector: dict[str, Any]) -> list[tuple[str, Manifest]]:
    return [(n, t) for n, t in _pod_templates(docs) if _matches(selector, t["metadata"]["labels"])]


@pytest.fixture(scope="module", params=PROFILES)
def docs(request: pytest.FixtureRequest, render: Renderer) -> list[Manifest]:
    return render(profile_values(request.param))


def test_workload_selectors_match_their_pod_labels(docs: list[Manifest]) -> None:
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert _matches(doc["spec"]["selector"], labels), doc["metadata"]["name"]
            # Selectors are immutable: they must not carry the chart version.
            assert "helm.sh/chart" not in doc["spec"]["selector"]["matchLabels"]


def test_services_select_one_workload_whose_containers_have_the_target_ports(
    docs: list[Manifest],
) -> None:
    for svc in of_kind(docs, "Service"):
        selected = _selected(docs, {"matchLabels": svc["spec"]["selector"]})
        assert len(selected) == 1, (svc["metadata"]["name"], [n for n, _ in selected])
        container_ports = [p for c in selected[0][1]["spec"]["containers"] for p in c["ports"]]
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            assert any(target in (p.get("name"), p["containerPort"]) for p in container_ports), (
                svc["metadata"]["name"],
                target,
            )


def test_every_component_has_a_budget_that_selects_it(docs: list[Manifest]) -> None:
    budgets = {d["metadata"]["name"]: d for d in of_kind(docs, "PodDisruptionBudget")}
    assert set(budgets) == {f"{RELEASE}-{n}" for n in ("control-plane", "prefill", "decode")}
    for name, pdb in budgets.items():
        assert [n for n, _ in _selected(docs, pdb["spec"]["selector"])] == [name]
        assert pdb["spec"]["maxUnavailable"] >= 1


def test_long_running_servers_have_grpc_probes_on_their_own_port(docs: list[Manifest]) -> None:
    for component in ("control-plane", "prefill", "decode"):
        deploy = find(docs, "Deployment", f"{RELEASE}-{component}")
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": grpc_port}, (component, probe)
            assert container[probe]["periodSeconds"] >= 1


def test_network_policies_select_existing_pods(docs: list[Manifest]) -> None:
    for policy in of_kind(docs, "NetworkPolicy"):
        assert _selected(docs, policy["spec"]["podSelector"]), policy["metadata"]["name"]


def test_the_test_hook_sends_a_completion_to_the_gateway(docs: list[Manifest]) -> None:
    (pod,) = of_kind(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python3", "-c"]
    assert '"/v1/completions"' in container["args"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DUET_GATEWAY_URL"] == f"http://{RELEASE}-control-plane:8000"


def test_pod_annotations_roll_pods_when_settings_change(render: Renderer) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deploy = find(render(values), "Deployment", f"{RELEASE}-decode")
        return str(deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum({"runtime": {"logLevel": "debug"}})
    assert checksum({}) == checksum({"decode": {"replicas": 3}})
