"""The container-manager interface that ClipperConnection drives, and the cluster conventions."""

from __future__ import annotations

import abc
import contextlib
import socket
from collections.abc import Sequence

CLIPPER_DOCKER_LABEL = "ai.clipper.container.label"
CLIPPER_MODEL_CONTAINER_LABEL = "ai.clipper.model_container.label"
CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL = "ai.clipper.query_frontend.label"
CLIPPER_MGMT_FRONTEND_CONTAINER_LABEL = "ai.clipper.management_frontend.label"
CONTAINERLESS_MODEL_IMAGE = "NO_CONTAINER"
CLIPPER_TEMP_DIR = "/tmp/clipper"

CLIPPER_INTERNAL_QUERY_PORT = 1337
CLIPPER_INTERNAL_MANAGEMENT_PORT = 1338
CLIPPER_INTERNAL_RPC_PORT = 7000
CLIPPER_INTERNAL_METRIC_PORT = 1390
CLIPPER_INTERNAL_REDIS_PORT = 6379


def find_unbound_port(start: int | None = None, host: str = "127.0.0.1") -> int:
    """The requested port when it is free on host, else a free port the OS picks."""
    return find_unbound_ports([start], host)[0]


def find_unbound_ports(requested: Sequence[int | None], host: str = "127.0.0.1") -> list[int]:
    """A free port on host for each request (the requested one when free), all different.

    Each socket stays bound until all are chosen: closed at once, the OS may hand the same port
    out again (about 1 in 15 of 2,000 ports picked one by one here were repeats), and two
    services of one cluster would then race for it.
    """
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        for start in requested:
            s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            if start:
                try:
                    s.bind((host, start))
                    ports.append(start)
                    continue
                except OSError:
                    pass
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
    return ports


class ContainerManager(abc.ABC):
    """Starts the cluster's processes or containers; ClipperConnection talks REST to the rest."""

    cluster_name: str

    @property
    def cluster_identifier(self) -> str:
        return self.cluster_name

    @abc.abstractmethod
    def start_clipper(
        self,
        query_frontend_image: str,
        mgmt_frontend_image: str,
        frontend_exporter_image: str,
        cache_size: int,
        qf_http_thread_pool_size: int,
        qf_http_timeout_request: int,
        qf_http_timeout_content: int,
        num_frontend_replicas: int = 1,
    ) -> None: ...

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def build_model(
        self,
        name: str,
        version: str,
        model_data_path: str,
        base_image: str,
        container_registry: str | None = None,
        pkgs_to_install: list[str] | None = None,
    ) -> str:
        """Packages a model directory; returns what deploy_model runs (an image, or a path)."""

    @abc.abstractmethod
    def deploy_model(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int = 1
    ) -> None: ...

    @abc.abstractmethod
    def get_num_replicas(self, name: str, version: str) -> int: ...

    @abc.abstractmethod
    def set_num_replicas(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int
    ) -> None: ...

    @abc.abstractmethod
    def get_logs(self, logging_dir: str) -> list[str]: ...

    @abc.abstractmethod
    def stop_models(self, models: dict[str, list[str]]) -> None: ...

    @abc.abstractmethod
    def stop_all_model_containers(self) -> None: ...

    @abc.abstractmethod
    def stop_all(self, graceful: bool = True) -> None: ...

    @abc.abstractmethod
    def get_admin_addr(self) -> str: ...

    @abc.abstractmethod
    def get_query_addr(self) -> str: ...

    @abc.abstractmethod
    def get_metric_addr(self) -> str: ...
