"""KubernetesContainerManager: Clipper's name and arguments, so that client code importing it
still loads; a cluster on Kubernetes is refused with a ClipperException that names what runs."""

from __future__ import annotations

from typing import Any

from clipper_admin.exceptions import ClipperException

# The services Clipper's manager exposed, each as one of Kubernetes' service types.
SERVICE_NAMES = frozenset({"redis", "management", "query", "query-rpc", "metric"})
KUBERNETES_SERVICE_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"})
UNSUPPORTED_SERVICE_TYPE = "ExternalName"

NOT_SUPPORTED = (
    "KubernetesContainerManager: this release does not run Clipper clusters on Kubernetes. "
    "DockerContainerManager runs one container per model (docker or docker-compose), and "
    "LocalContainerManager runs the cluster as processes on this machine"
)


def _check_service_types(service_types: Any) -> None:
    """Raises ClipperException, with Clipper's texts, unless service_types is a dict naming
    each service once, with ClusterIP, NodePort or LoadBalancer."""
    if not isinstance(service_types, dict):
        raise ClipperException(f"service_types must be 'dict' type: {service_types}")
    if set(service_types) != SERVICE_NAMES:
        raise ClipperException(f"service_types has unknown keys: {sorted(service_types)}")
    values = set(service_types.values())
    if not values <= KUBERNETES_SERVICE_TYPES:
        raise ClipperException(f"service_types has unknown values: {sorted(map(str, values))}")
    if UNSUPPORTED_SERVICE_TYPE in values:
        raise ClipperException(f"Clipper does not support '{UNSUPPORTED_SERVICE_TYPE}' service")


class KubernetesContainerManager:
    """Takes Clipper's constructor arguments and checks them as Clipper did, then refuses:
    Clipper's own test utilities and many clients import it beside DockerContainerManager,
    and an ImportError would stop them before they reach the manager they use."""

    def __init__(
        self,
        cluster_name: str = "default-cluster",
        kubernetes_proxy_addr: str | None = None,
        redis_ip: str | None = None,
        redis_port: int = 6379,
        useInternalIP: bool = False,
        namespace: str = "default",
        service_types: dict[str, str] | None = None,
        create_namespace_if_not_exists: bool = False,
    ) -> None:
        if service_types is not None:
            _check_service_types(service_types)
        raise ClipperException(NOT_SUPPORTED)
