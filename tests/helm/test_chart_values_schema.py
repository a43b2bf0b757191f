"""Bad values are rejected before anything is applied, with a message naming the key."""

from __future__ import annotations

from typing import Any

import pytest
from chart_render import profile_values
from helm_python.chart import Chart
from helm_python.errors import HelmRenderError, HelmValuesError


@pytest.mark.parametrize("profile", ["default", "h20", "cpu", "all-features", "hpa"])
def test_the_profiles_pass_the_schema(chart: Chart, profile: str) -> None:
    chart.validate_schema(profile_values(profile))


SCHEMA_REJECTS = [
    ({"prefill": {"replicas": -1}}, "at '/prefill/replicas': minimum: got -1, want 0"),
    ({"decode": {"replicas": -3}}, "at '/decode/replicas': minimum: got -3, want 0"),
    ({"model": {"path": None}}, "at '/model': missing property 'path'"),
    ({"model": {"path": ""}}, "at '/model/path': minLength: got 0, want 1"),
    ({"model": {"path": "models/x"}}, "at '/model/path': 'models/x' does not match pattern '^/'"),
    (
        {"decode": {"transferBackend": "rdma"}},
        "at '/decode/transferBackend': value must be one of 'tcp', 'cuda_ipc', 'nccl', 'auto'",
    ),
    (
        {"prefill": {"tensorParallelSize": 3}},
        "at '/prefill/tensorParallelSize': value must be one of 1, 2, 4, 8",
    ),
    ({"runtime": {"device": "tpu"}}, "at '/runtime/device': value must be one of 'cuda', 'cpu'"),
    (
        {"runtime": {"dtype": "float16"}},
        "at '/runtime/dtype': value must be one of 'bfloat16', 'float32'",
    ),
    (
        {"model": {"source": "s3"}},
        "at '/model/source': value must be one of 'pvc', 'hostPath', 'image'",
    ),
    ({"model": {"pvc": {"claimName": ""}}}, "at '/model/pvc/claimName': minLength: got 0, want 1"),
    ({"model": {"source": "hostPath"}}, "at '/model/hostPath/path': minLength: got 0, want 1"),
    (
        {"redis": {"mode": "external"}},
        "at '/redis/external/existingSecret': minLength: got 0, want 1",
    ),
    ({"controlPlane": {"httpPort": 70000}}, "at '/controlPlane/httpPort': maximum: got 70,000"),
    ({"prefill": {"replica": 2}}, "at '/prefill': additional properties 'replica' not allowed"),
    ({"autoscaler": {"intervalSeconds": 0}}, "at '/autoscaler/intervalSeconds'"),
    ({"prefixCache": {"blockSize": 100}}, "at '/prefixCache/blockSize'"),
    ({"prefixCache": {"snapshots": "often"}}, "at '/prefixCache/snapshots'"),
    ({"prefixCache": {"l1Mb": -1}}, "at '/prefixCache/l1Mb'"),
    ({"prefixCache": {"l3": "yes"}}, "at '/prefixCache/l3'"),
]


@pytest.mark.parametrize(("values", "message"), SCHEMA_REJECTS)
def test_schema_rejects(chart: Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmValuesError) as err:
        chart.validate_schema(values)
    assert message in str(err.value)
    # An install renders through the same check.
    with pytest.raises(HelmValuesError, match="values don't meet the specifications"):
        chart.render(values=values, name="r1")


TEMPLATE_REJECTS = [
    (
        {"prefill": {"tensorParallelSize": 4}},
        'prefill.tensorParallelSize is 4 but prefill.resources.limits["nvidia.com/gpu"] is 1',
    ),
    (
        {"runtime": {"device": "cpu"}},
        'prefill.resources.limits["nvidia.com/gpu"] is 1 but runtime.device is cpu',
    ),
    (
        {**profile_values("cpu"), "decode": {"transferBackend": "nccl"}},
        'decode.transferBackend "nccl" needs GPUs but runtime.device is cpu',
    ),
    (
        {"decode": {"hpa": {"enabled": True}}, "autoscaler": {"enabled": True}},
        "decode.hpa.enabled and autoscaler.enabled both scale the decode Deployment",
    ),
    (
        {"decode": {"preStopSleepSeconds": 200}},
        "decode.preStopSleepSeconds (200) must be less than decode.terminationGracePeriodSeconds",
    ),
    ({"model": {"path": "/data/m"}}, 'model.path "/data/m" must lie under model.mountPath'),
]


@pytest.mark.parametrize(("values", "message"), TEMPLATE_REJECTS)
def test_cross_field_checks_fail_the_render(
    chart: Chart, values: dict[str, Any], message: str
) -> None:
    chart.validate_schema(values)
    with pytest.raises(HelmRenderError) as err:
        chart.render(values=values, name="r1")
    assert message in str(err.value)
