from typing import Any

import pytest

# Clipper's test utilities import it beside DockerContainerManager when they load.
from clipper_admin import ClipperException, KubernetesContainerManager

SERVICES = {
    "redis": "NodePort",
    "management": "NodePort",
    "query": "LoadBalancer",
    "query-rpc": "ClusterIP",
    "metric": "NodePort",
}


@pytest.mark.parametrize(
    ("service_types", "message"),
    [
        (list(SERVICES), "service_types must be 'dict' type"),
        ({**SERVICES, "UNKNOWN_KEY": "NodePort"}, "service_types has unknown keys"),
        ({k: v for k, v in SERVICES.items() if k != "metric"}, "service_types has unknown keys"),
        ({**SERVICES, "query-rpc": "UNKNOWN_VALUE"}, "service_types has unknown values"),
        ({**SERVICES, "query": "ExternalName"}, "Clipper does not support 'ExternalName' service"),
    ],
)
def test_service_types_are_checked_with_clippers_messages(service_types: Any, message: str) -> None:
    with pytest.raises(ClipperException) as raised:
        KubernetesContainerManager(cluster_name="k8s", service_types=service_types)
    assert message in str(raised.value)


@pytest.mark.parametrize("service_types", [None, SERVICES])
def test_a_kubernetes_cluster_is_refused_naming_the_managers_that_run(
    service_types: dict[str, str] | None,
) -> None:
    with pytest.raises(ClipperException) as raised:
        KubernetesContainerManager(
            cluster_name="k8s", kubernetes_proxy_addr="127.0.0.1:8080", service_types=service_types
        )
    assert "does not run Clipper clusters on Kubernetes" in raised.value.msg
    assert "DockerContainerManager" in raised.value.msg
    assert "LocalContainerManager" in raised.value.msg
