"""The container-manager interface that ClipperConnection drives, and the cluster conventions."""

from __future__ import annotations

import abc
import socket

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
    if start:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, start))
                return start
            except OSError:
                pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


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
