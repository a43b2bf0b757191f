"""What each component gets: commands, environment, GPUs, volumes, drain settings, RBAC."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from chart_render import RELEASE, Manifest, Renderer, env_of, find, of_kind, profile_values

from engine.prefix_config import add_prefix_args, prefix_config_from_args


def _pod(docs: list[Manifest], component: str) -> Manifest:
    return find(docs, "Deployment", f"{RELEASE}-{component}")["spec"]["template"]["spec"]


def _container(docs: list[Manifest], component: str) -> Manifest:
    containers = _pod(docs, component)["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.mark.parametrize(("pool", "port"), [("prefill", "50052"), ("decode", "50053")])
def test_workers_register_with_their_pod_ip_and_drain_on_stop(
    render: Renderer, pool: str, port: str
) -> None:
    docs = render({pool: {"terminationGracePeriodSeconds": 77, "preStopSleepSeconds": 6}})
    pod = _pod(docs, pool)
    container = _container(docs, pool)
    assert container["command"] == ["duet"]
    assert container["args"][:5] == [
        f"{pool}-worker", "--model", "/models/Ling-2.6-flash", "--port", port,
    ]  # fmt: skip
    env = env_of(container)
    assert env["DUET_ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["DUET_CONTROL_PLANE"]["value"] == f"{RELEASE}-control-plane:50051"
    assert env["DUET_REDIS_URL"]["value"] == f"redis://{RELEASE}-redis:6379/0"
    assert container["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-config"}}]
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 6}}
    assert pod["terminationGracePeriodSeconds"] == 77
    assert {p["name"]: str(p["containerPort"]) for p in container["ports"]}["grpc"] == port


def test_control_plane_command_and_ports(render: Renderer) -> None:
    container = _container(render({}), "control-plane")
    args = container["args"]
    assert args[0] == "control-plane"
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--http-port"] == "8000" and flags["--grpc-port"] == "50051"
    # Kubernetes expands $(VAR) in args from the container's env.
    assert flags["--redis-url"] == "$(DUET_REDIS_URL)"
    assert "DUET_REDIS_URL" in env_of(container)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8000,
        "grpc": 50051,
    }


def test_h20_profile_runs_tp4_workers_on_h20_gpus(render: Renderer) -> None:
    docs = render(profile_values("h20"))
    config = find(docs, "ConfigMap", f"{RELEASE}-config")["data"]
    assert config["DUET_DEVICE"] == "cuda" and config["DUET_QUANTIZATION"] == "fp8"
    for pool in ("prefill", "decode"):
        pod, container = _pod(docs, pool), _container(docs, pool)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert env_of(container)["DUET_TENSOR_PARALLEL_SIZE"]["value"] == "4"
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        (expr,) = terms["nodeSelectorTerms"][0]["matchExpressions"]
        assert expr == {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H20"]}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_bf16_is_a_values_switch(render: Renderer) -> None:
    values = profile_values("h20")
    values["model"]["path"] = "/models/Ling-2.6-flash"
    values["runtime"]["quantization"] = "none"
    docs = render(values)
    assert find(docs, "ConfigMap", f"{RELEASE}-config")["data"]["DUET_QUANTIZATION"] == "none"
    assert "/models/Ling-2.6-flash" in _container(docs, "decode")["args"]


def test_gpu_product_merges_into_a_given_node_affinity(render: Renderer) -> None:
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z1"]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [zone]}]}}}  # fmt: skip
    pod = _pod(render({"decode": {"affinity": affinity, "gpuProducts": ["NVIDIA-H20"]}}), "decode")
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    exprs = terms["nodeSelectorTerms"][0]["matchExpressions"]
    assert exprs[0] == zone and exprs[1]["key"] == "nvidia.com/gpu.product"


def test_cpu_profile_runs_the_tiny_model_without_gpus(render: Renderer) -> None:
    docs = render(profile_values("cpu"))
    config = find(docs, "ConfigMap", f"{RELEASE}-config")["data"]
    assert (config["DUET_DEVICE"], config["DUET_DTYPE"]) == ("cpu", "float32")
    for pool in ("prefill", "decode"):
        pod, container = _pod(docs, pool), _container(docs, pool)
        assert "nvidia.com/gpu" not in str(container["resources"])
        assert env_of(container)["DUET_TRANSFER_BACKEND"]["value"] == "tcp"
        assert container["args"][1:3] == ["--model", "/models/ling-tiny"]
        (init,) = pod["initContainers"]
        assert init["args"] == ["/opt/duet/models/ling-tiny", "/models/ling-tiny"]
        assert {"name": "model", "emptyDir": {}} in pod["volumes"]


@pytest.mark.parametrize(
    ("model", "volume"),
    [
        ({"source": "pvc", "pvc": {"claimName": "weights"}},
         {"persistentVolumeClaim": {"claimName": "weights", "readOnly": True}}),
        ({"source": "hostPath", "hostPath": {"path": "/data/models"}},
         {"hostPath": {"path": "/data/models", "type": "Directory"}}),
        ({"source": "image", "image": {"reference": "reg/ling:1"}},
         {"image": {"reference": "reg/ling:1", "pullPolicy": "IfNotPresent"}}),
    ],
)  # fmt: skip
def test_model_sources(render: Renderer, model: dict[str, Any], volume: Manifest) -> None:
    docs = render({"model": model})
    for component in ("control-plane", "prefill", "decode"):
        (model_volume,) = [v for v in _pod(docs, component)["volumes"] if v["name"] == "model"]
        assert model_volume == {"name": "model", **volume}


def test_rdma_and_host_network(render: Renderer) -> None:
    docs = render(profile_values("all-features"))
    pod, container = _pod(docs, "prefill"), _container(docs, "prefill")
    assert container["resources"]["limits"]["rdma/rdma_shared_device_a"] == 1
    assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "hostNetwork" not in _pod(docs, "decode")


def test_autoscaler_rbac_is_limited_to_the_scale_subresource(render: Renderer) -> None:
    docs = render({"autoscaler": {"enabled": True, "decode": {"minReplicas": 2, "maxReplicas": 9}}})
    (role,) = of_kind(docs, "Role")
    assert role["rules"] == [{
        "apiGroups": ["apps"], "resources": ["deployments/scale"],
        "resourceNames": [f"{RELEASE}-prefill", f"{RELEASE}-decode"], "verbs": ["get", "patch"],
    }]  # fmt: skip
    (binding,) = of_kind(docs, "RoleBinding")
    (account,) = of_kind(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    pod = _pod(docs, "autoscaler")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    args = pod["containers"][0]["args"]
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert args[0] == "autoscaler" and flags["--release"] == RELEASE
    assert flags["--namespace"] == "serving"
    assert flags["--metrics-url"] == f"http://{RELEASE}-control-plane:8000/metrics"
    assert (flags["--min-decode"], flags["--max-decode"]) == ("2", "9")
    # The autoscaler owns the pool sizes: Helm must not reset them on upgrade.
    assert "replicas" not in find(docs, "Deployment", f"{RELEASE}-decode")["spec"]


def test_hpa_targets_its_pool(render: Renderer) -> None:
    docs = render(profile_values("hpa"))
    for pool in ("prefill", "decode"):
        hpa = find(docs, "HorizontalPodAutoscaler", f"{RELEASE}-{pool}")
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-{pool}"
        assert "replicas" not in find(docs, "Deployment", f"{RELEASE}-{pool}")["spec"]


def test_external_redis_url_comes_from_a_secret(render: Renderer) -> None:
    docs = render({"redis": {"mode": "external", "external": {"existingSecret": "cache"}}})
    assert not of_kind(docs, "StatefulSet")
    for component in ("control-plane", "prefill", "decode"):
        ref = env_of(_container(docs, component))["DUET_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "cache", "key": "redis-url"}


def test_bundled_redis_is_an_lru_cache_without_persistence(render: Renderer) -> None:
    redis = find(render({}), "StatefulSet", f"{RELEASE}-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert args[args.index("--appendonly") + 1] == "no"
    assert "volumeClaimTemplates" not in redis["spec"]


def test_api_keys_reach_the_gateway_and_the_test_hook_from_a_secret(render: Renderer) -> None:
    docs = render({"apiKeys": {"keys": ["key-a", "key-b"]}})
    (secret,) = of_kind(docs, "Secret")
    assert secret["data"]["api-keys"] == "a2V5LWEsa2V5LWI="  # base64 of "key-a,key-b"
    (hook,) = of_kind(docs, "Pod")
    for container in (_container(docs, "control-plane"), hook["spec"]["containers"][0]):
        ref = env_of(container)["DUET_API_KEYS"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
    assert "DUET_API_KEYS" not in env_of(_container(docs, "decode"))


def test_workers_admit_only_the_gateway_and_each_other(render: Renderer) -> None:
    docs = render(profile_values("all-features"))
    policy = find(docs, "NetworkPolicy", f"{RELEASE}-workers")
    selected = policy["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert sorted(selected) == ["decode", "prefill"]
    from_pods, from_metrics = policy["spec"]["ingress"]
    (peer,) = from_pods["from"]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
    assert sorted(peer["podSelector"]["matchExpressions"][0]["values"]) == [
        "control-plane", "decode", "prefill",
    ]  # fmt: skip
    assert from_metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]


def test_prefill_pods_get_the_prefix_cache_settings_and_decode_pods_do_not(
    render: Renderer,
) -> None:
    docs = render({"prefixCache": {"snapshots": "every:8", "l1Mb": 8192, "l3": True}})
    prefill, decode = env_of(_container(docs, "prefill")), env_of(_container(docs, "decode"))
    assert prefill["DUET_PREFIX_CACHE"]["value"] == "on"
    assert prefill["DUET_PREFIX_SNAPSHOTS"]["value"] == "every:8"
    assert prefill["DUET_PREFIX_L1_MB"]["value"] == "8192"
    assert prefill["DUET_PREFIX_L3"]["value"] == "on"
    assert prefill["DUET_PREFIX_BLOCK_SIZE"]["value"] == "64"
    assert not [name for name in decode if name.startswith("DUET_PREFIX_")]
    off = env_of(_container(render({"prefixCache": {"enabled": False}}), "prefill"))
    assert off["DUET_PREFIX_CACHE"]["value"] == "off"


def test_the_worker_accepts_the_rendered_prefix_settings(
    render: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The env the chart renders parses into the worker's config (same names, same forms)."""
    env = env_of(_container(render(profile_values("h20")), "prefill"))
    values = {k: v["value"] for k, v in env.items() if k.startswith("DUET_PREFIX_")}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    add_prefix_args(parser)
    cfg = prefix_config_from_args(parser.parse_args([]))
    assert cfg.enabled and cfg.snapshots == values["DUET_PREFIX_SNAPSHOTS"] == "every:8"
    assert cfg.l1_mb == int(values["DUET_PREFIX_L1_MB"])
