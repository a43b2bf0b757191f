"""The Kubernetes side of the autoscaler: a Deployment's scale subresource, through the
`kubernetes` client (GET and PATCH .../deployments/NAME/scale, nothing else)."""

from __future__ import annotations

from kubernetes import client, config

MERGE_PATCH = "application/merge-patch+json"


def api_client(kube_host: str | None = None) -> client.ApiClient:
    """In a pod: the service account. Elsewhere: the kubeconfig. With `kube_host`: that URL,
    unauthenticated (a `kubectl proxy`, or a test server)."""
    if kube_host:
        configuration = client.Configuration()
        configuration.host = kube_host.rstrip("/")
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class DeploymentScaler:
    """Reads and sets `spec.replicas` of Deployments in one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str, timeout_s: float = 10.0) -> None:
        self._apps = client.AppsV1Api(api)
        self._namespace = namespace
        self._timeout_s = timeout_s

    def replicas(self, deployment: str) -> int:
        scale = self._apps.read_namespaced_deployment_scale(
            deployment, self._namespace, _request_timeout=self._timeout_s
        )
        return int(scale.spec.replicas or 0) if scale.spec else 0

    def set_replicas(self, deployment: str, replicas: int) -> None:
        self._apps.patch_namespaced_deployment_scale(
            deployment,
            self._namespace,
            {"spec": {"replicas": replicas}},
            _content_type=MERGE_PATCH,
            _request_timeout=self._timeout_s,
        )
