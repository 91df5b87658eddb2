"""DockerContainerManager: the cluster as Docker containers, one per service and per replica.

This is the only module that talks to Docker. Every container runs with host networking and
its own ports (picked free at start), and carries the cluster's label, so several clusters share
one Docker host in isolation and connect() finds a cluster again from its labels.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import docker
import docker.errors
from docker.models.containers import Container

from clipper_admin.container_manager import (
    CLIPPER_DOCKER_LABEL,
    CLIPPER_INTERNAL_MANAGEMENT_PORT,
    CLIPPER_INTERNAL_QUERY_PORT,
    CLIPPER_INTERNAL_REDIS_PORT,
    CLIPPER_INTERNAL_RPC_PORT,
    CLIPPER_MGMT_FRONTEND_CONTAINER_LABEL,
    CLIPPER_MODEL_CONTAINER_LABEL,
    CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL,
    ContainerManager,
    find_unbound_ports,
)
from clipper_admin.exceptions import ClipperException
from clipper_admin.version import __registry__, __version__
from model_containers.manifest import ModelManifest

logger = logging.getLogger(__name__)

CLIPPER_REDIS_PORT_LABEL = "ai.clipper.redis.port"
CLIPPER_QUERY_PORT_LABEL = "ai.clipper.query_frontend.query.port"
CLIPPER_MANAGEMENT_PORT_LABEL = "ai.clipper.management.port"
CLIPPER_METRIC_PORT_LABEL = "ai.clipper.metric.port"
CLIPPER_RPC_PORT_LABEL = "ai.clipper.query_frontend.rpc.port"
CLIPPER_SOURCE_HASH_LABEL = "ai.clipper.source_hash"
CLIPPER_MODEL_REPLICA_PORT_LABEL = "ai.clipper.model_container.port"

_SOURCE_PACKAGES = ("query_frontend", "model_containers", "admin", "protos")
_LOG_TAIL_LINES = 60


def _source_root() -> Path | None:
    """The source tree this package runs from (an editable install or a checkout), if any."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").exists() and (root / "admin" / "Dockerfile").exists():
        return root
    return None


def _source_hash(root: Path) -> str:
    """A digest of everything the project's images are built from."""
    digest = hashlib.sha256()
    files = [root / "pyproject.toml", root / "constraints.txt", root / "setup.py"]
    for package in _SOURCE_PACKAGES:
        files.extend(
            p for p in (root / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
        )  # fmt: skip
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class DockerContainerManager(ContainerManager):
    def __init__(
        self,
        cluster_name: str = "default-cluster",
        docker_ip_address: str = "localhost",
        use_centralized_log: bool = False,
        fluentd_port: int = 24224,
        clipper_query_port: int = CLIPPER_INTERNAL_QUERY_PORT,
        clipper_management_port: int = CLIPPER_INTERNAL_MANAGEMENT_PORT,
        clipper_rpc_port: int = CLIPPER_INTERNAL_RPC_PORT,
        redis_ip: str | None = None,
        redis_port: int = CLIPPER_INTERNAL_REDIS_PORT,
        prometheus_port: int = 9090,
        docker_network: str = "host",
        extra_container_kwargs: dict[str, Any] | None = None,
        start_timeout_s: float = 120.0,
        build_timeout_s: float = 1800.0,
        torch_wheels_dir: str | None = os.environ.get("CLIPPER_TORCH_WHEELS_DIR", "/opt/wheels"),
    ) -> None:
        if docker_network != "host":
            raise ClipperException(
                f"docker_network={docker_network!r}: this DockerContainerManager runs every "
                "container with host networking; pass docker_network='host' (the default)"
            )
        if use_centralized_log:
            raise ClipperException("use_centralized_log (fluentd) is not supported")
        self.cluster_name = cluster_name
        self.docker_ip_address = docker_ip_address
        self.public_hostname = docker_ip_address
        self.centralize_log = False
        self._requested = {
            "query": clipper_query_port,
            "management": clipper_management_port,
            "rpc": clipper_rpc_port,
            "redis": redis_port,
            "prometheus": prometheus_port,
        }
        self.redis_ip = redis_ip
        self.extra_container_kwargs = dict(extra_container_kwargs or {})
        if self.extra_container_kwargs.get("network_mode") not in (None, "host"):
            raise ClipperException("extra_container_kwargs may not change network_mode")
        self.torch_wheels_dir = torch_wheels_dir
        self.start_timeout_s = start_timeout_s
        self.build_timeout_s = build_timeout_s
        try:
            self.docker_client = docker.from_env(timeout=300)
            self.docker_client.ping()
        except docker.errors.DockerException as e:
            raise ClipperException(f"Cannot reach the Docker engine: {e}") from e
        self._ports: dict[str, int] | None = None

    # Images

    def _project_image(self, image: str, target: str, build_args: dict[str, str]) -> str:
        """Makes sure a project image exists, building it from the source tree when needed."""
        root = _source_root()
        existing = self._find_image(image)
        if root is None:
            if existing is None:
                raise ClipperException(
                    f"Image {image} does not exist and there is no source tree to build it "
                    "from: build it with docker build -f admin/Dockerfile --target "
                    f"{target} in a checkout of this project"
                )
            return image
        source_hash = _source_hash(root)
        if existing is not None and existing.labels.get(CLIPPER_SOURCE_HASH_LABEL) == source_hash:
            return image
        logger.info("Building image %s (target %s) from %s", image, target, root)
        self._build(
            str(root),
            image,
            dockerfile="admin/Dockerfile",
            target=target,
            build_args=build_args,
            labels={CLIPPER_SOURCE_HASH_LABEL: source_hash},
        )
        return image

    def _infra_image(self, image: str, dockerfile: str) -> str:
        root = _source_root()
        if self._find_image(image) is not None:
            return image
        if root is None:
            raise ClipperException(f"Image {image} does not exist and cannot be built here")
        logger.info("Building image %s from %s", image, dockerfile)
        self._build(str(root), image, dockerfile=dockerfile)
        return image

    def _find_image(self, image: str) -> Any:
        try:
            return self.docker_client.images.get(image)
        except docker.errors.ImageNotFound:
            return None

    def _build(
        self,
        context: str,
        tag: str,
        dockerfile: str = "Dockerfile",
        target: str | None = None,
        build_args: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        started = time.monotonic()
        previous = self._find_image(tag)
        stream = self.docker_client.api.build(
            path=context,
            dockerfile=dockerfile,
            tag=tag,
            target=target,
            buildargs=build_args or {},
            labels=labels or {},
            network_mode="host",
            rm=True,
            forcerm=True,
            decode=True,
            timeout=int(self.build_timeout_s),
        )
        output: list[str] = []
        for chunk in stream:
            if "stream" in chunk:
                line = str(chunk["stream"]).rstrip()
                if line:
                    output.append(line)
                    if line.startswith("Step "):
                        logger.info("%s: %s", tag, line)
            if "error" in chunk:
                tail = "\n".join(output[-_LOG_TAIL_LINES:])
                raise ClipperException(f"Building image {tag} failed: {chunk['error']}\n{tail}")
        logger.info("Built image %s in %.0f s", tag, time.monotonic() - started)
        if previous is not None:
            self._remove_superseded(previous, tag)

    def _remove_superseded(self, previous: Any, tag: str) -> None:
        """Deletes the image a build took the tag from, or every rebuild would leak its size."""
        current = self._find_image(tag)
        if current is None or current.id == previous.id:
            return
        try:
            # By id, with its untagged parents: layers the new image shares stay.
            self.docker_client.images.remove(previous.id, noprune=False)
            logger.info("Removed image %s, superseded by the new %s", previous.short_id, tag)
        except docker.errors.APIError as e:
            # Still tagged elsewhere or used by a container: it is not ours to delete.
            logger.info("Kept image %s, superseded by %s: %s", previous.short_id, tag, e)

    def closure_base_image(self) -> str:
        """The closure image for this client: its Python minor version and its cloudpickle."""
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        image = (
            f"{__registry__}/python{py.replace('.', '')}-closure-container:"
            f"{__version__}-cloudpickle{cloudpickle.__version__}"
        )
        return self._project_image(
            image,
            "closure",
            {"PYTHON_VERSION": py, "CLOUDPICKLE_VERSION": str(cloudpickle.__version__)},
        )

    def framework_base_image(self, runtime: str, manifest: ModelManifest) -> str:
        """The PyTorch or ONNX model image: the closure image plus the client's framework."""
        py = f"{sys.version_info.major}{sys.version_info.minor}"
        pickle_version = str(cloudpickle.__version__)
        args = {"PYTHON_VERSION": f"{py[0]}.{py[1:]}", "CLOUDPICKLE_VERSION": pickle_version}
        if runtime in ("pytorch", "torchscript"):
            torch_version = str(manifest.options.get("torch_version") or "2.13.0")
            image = (
                f"{__registry__}/pytorch{py}-container:{__version__}-torch{torch_version}"
                f"-cloudpickle{pickle_version}"
            )
            args["TORCH_VERSION"] = torch_version
            with _served_wheels(self.torch_wheels_dir, f"torch-{torch_version}+cpu") as url:
                if url:
                    args["TORCH_FIND_LINKS"] = url
                return self._project_image(image, "pytorch", args)
        onnxruntime_version = str(manifest.options.get("onnxruntime_version") or "")
        image = (
            f"{__registry__}/onnx{py}-container:{__version__}-onnxruntime"
            f"{onnxruntime_version or 'latest'}-cloudpickle{pickle_version}"
        )
        args["ONNXRUNTIME_VERSION"] = onnxruntime_version
        return self._project_image(image, "onnx", args)

    def _check_environment(self, image: str, manifest: ModelManifest) -> None:
        """Fails at once when the image cannot unpickle what this client pickled."""
        probe = (
            "import sys\n"
            "try:\n    import cloudpickle; v = cloudpickle.__version__\n"
            "except ImportError:\n    v = 'none'\n"
            "print(f'{sys.version_info.major}.{sys.version_info.minor} {v}')"
        )
        try:
            output = self.docker_client.containers.run(
                image, ["python", "-c", probe], remove=True, network_mode="host"
            )
        except docker.errors.DockerException as e:
            raise ClipperException(f"Base image {image} cannot run Python: {e}") from e
        python, pickle_version = output.decode().split()
        problems = []
        if python != manifest.python_version:
            problems.append(f"Python {python} (the client has {manifest.python_version})")
        if pickle_version != manifest.cloudpickle_version:
            problems.append(
                f"cloudpickle {pickle_version} (the client has {manifest.cloudpickle_version})"
            )
        if problems:
            raise ClipperException(
                f"Base image {image} has {' and '.join(problems)}: it could not load this "
                "model. Use base_image='default', which matches the client, or an image with "
                "the same versions."
            )

    # Cluster lifecycle

    def _containers(self, **labels: str) -> list[Container]:
        filters = [f"{CLIPPER_DOCKER_LABEL}={self.cluster_name}"]
        filters += [f"{k}={v}" if v else k for k, v in labels.items()]
        containers: list[Container] = self.docker_client.containers.list(
            all=True, filters={"label": filters}
        )
        return containers

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
    ) -> None:
        if num_frontend_replicas < 1:
            raise ClipperException("num_frontend_replicas must be at least 1")
        if any(c.status == "running" for c in self._containers()):
            raise ClipperException(
                f"Cluster {self.cluster_name} already exists. Please use "
                "ClipperConnection.connect() to connect to it."
            )
        for stale in self._containers():
            stale.remove(force=True)
        mgmt_image = self._project_image(mgmt_frontend_image, "management", {})
        query_image = self._project_image(query_frontend_image, "query-frontend", {})
        redis_image = self._infra_image(
            f"{__registry__}/redis:{__version__}", "admin/redis.Dockerfile"
        )
        prometheus_image = self._infra_image(
            f"{__registry__}/prometheus:{__version__}", "admin/prometheus.Dockerfile"
        )
        ports = dict(
            zip(self._requested, find_unbound_ports(list(self._requested.values())), strict=True)
        )
        port_labels = {
            CLIPPER_QUERY_PORT_LABEL: str(ports["query"]),
            CLIPPER_MANAGEMENT_PORT_LABEL: str(ports["management"]),
            CLIPPER_RPC_PORT_LABEL: str(ports["rpc"]),
            CLIPPER_REDIS_PORT_LABEL: str(ports["redis"]),
            CLIPPER_METRIC_PORT_LABEL: str(ports["prometheus"]),
        }
        redis_host = self.redis_ip or "127.0.0.1"
        try:
            if self.redis_ip is None:
                self._run(
                    redis_image,
                    f"redis-{_suffix()}",
                    environment={"REDIS_PORT": str(ports["redis"])},
                    volumes={self._redis_volume(): {"bind": "/data", "mode": "rw"}},
                    labels=port_labels,
                )
            redis_env = {"REDIS_HOST": redis_host, "REDIS_PORT": str(ports["redis"])}
            self._run(
                mgmt_image,
                f"mgmt_frontend-{_suffix()}",
                environment={
                    "CLIPPER_MGMT_PORT": str(ports["management"]),
                    **{f"CLIPPER_MGMT_{k}": v for k, v in redis_env.items()},
                },
                labels={CLIPPER_MGMT_FRONTEND_CONTAINER_LABEL: "", **port_labels},
            )
            self._run(
                query_image,
                f"query_frontend-{_suffix()}",
                environment={
                    "CLIPPER_QF_PORT": str(ports["query"]),
                    "CLIPPER_QF_PREDICTION_CACHE_SIZE_BYTES": str(cache_size),
                    # Replicas of the frontend are worker processes sharing its port.
                    "CLIPPER_QF_WORKERS": str(num_frontend_replicas),
                    **{f"CLIPPER_QF_{k}": v for k, v in redis_env.items()},
                },
                labels={CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL: "", **port_labels},
            )
            self._run(
                prometheus_image,
                f"metric_frontend-{_suffix()}",
                environment={
                    "QUERY_ADDR": f"127.0.0.1:{ports['query']}",
                    "ADMIN_ADDR": f"127.0.0.1:{ports['management']}",
                    "PROMETHEUS_PORT": str(ports["prometheus"]),
                },
                labels=port_labels,
            )
        except (ClipperException, docker.errors.DockerException):
            self.stop_all(graceful=False)
            raise
        self._ports = ports
        logger.info(
            "Clipper cluster %s is running: query %s, admin %s, Prometheus %s",
            self.cluster_name,
            self.get_query_addr(),
            self.get_admin_addr(),
            self.get_metric_addr(),
        )

    def _redis_volume(self) -> str:
        return f"clipper-{self.cluster_name}-redis"

    def _run(
        self,
        image: str,
        name: str,
        labels: dict[str, str],
        wait_healthy: bool = False,
        **kwargs: Any,
    ) -> Container:
        extra = dict(self.extra_container_kwargs)
        all_labels = {**extra.pop("labels", {}), **labels, CLIPPER_DOCKER_LABEL: self.cluster_name}
        # The user's variables (CLIPPER_PREDICT_TIMEOUT_S, say) join the cluster's own.
        environment = {
            **_environment_dict(extra.pop("environment", {})),
            **kwargs.pop("environment", {}),
        }
        container: Container = self.docker_client.containers.run(
            image,
            name=name,
            detach=True,
            network_mode="host",
            labels=all_labels,
            environment=environment,
            # A container that crashes, or whose process is killed, comes back on its ports
            # (Redis with its volume, a replica registering again); one that the cluster
            # stops stays stopped. extra_container_kwargs may set another policy.
            **{"restart_policy": {"Name": "unless-stopped"}, **extra, **kwargs},
        )
        self._wait_started(container, wait_healthy)
        return container

    def _wait_started(self, container: Container, wait_healthy: bool) -> None:
        """Waits on Docker's events until the container runs (or is healthy) or dies."""
        deadline = time.time() + self.start_timeout_s
        since = int(time.time()) - 1
        wanted = {"health_status: healthy"} if wait_healthy else {"start"}
        container.reload()
        if not wait_healthy and container.status == "running":
            return
        events: Iterator[dict[str, Any]] = self.docker_client.events(
            since=since,
            until=int(deadline) + 1,
            filters={"container": container.id, "type": "container"},
            decode=True,
        )
        try:
            for event in events:
                action = str(event.get("Action", ""))
                if action in wanted:
                    return
                if action == "die":
                    raise ClipperException(
                        f"Container {container.name} ({_image_name(container)}) exited before it "
                        f"was ready. Its log ends with:\n{self._tail(container)}"
                    )
        finally:
            events.close()  # type: ignore[attr-defined]
        raise ClipperException(
            f"Container {container.name} did not become ready within {self.start_timeout_s:.0f} s."
            f" Its log ends with:\n{self._tail(container)}"
        )

    @staticmethod
    def _tail(container: Container) -> str:
        try:
            return bytes(container.logs(tail=_LOG_TAIL_LINES)).decode(errors="replace").strip()
        except docker.errors.DockerException as e:
            return f"(no log: {e})"

    def connect(self) -> None:
        frontends = [
            c
            for c in self._containers(**{CLIPPER_QUERY_FRONTEND_CONTAINER_LABEL: ""})
            if c.status == "running"
        ]
        if not frontends:
            raise ClipperException(
                f"No running Clipper cluster named {self.cluster_name} on this Docker host. "
                "Call ClipperConnection.start_clipper() to start one."
            )
        labels = frontends[0].labels
        self._ports = {
            "query": int(labels[CLIPPER_QUERY_PORT_LABEL]),
            "management": int(labels[CLIPPER_MANAGEMENT_PORT_LABEL]),
            "rpc": int(labels[CLIPPER_RPC_PORT_LABEL]),
            "redis": int(labels[CLIPPER_REDIS_PORT_LABEL]),
            "prometheus": int(labels[CLIPPER_METRIC_PORT_LABEL]),
        }

    def _require_ports(self) -> dict[str, int]:
        if self._ports is None:
            self.connect()
        assert self._ports is not None
        return self._ports

    # Models

    def build_model(
        self,
        name: str,
        version: str,
        model_data_path: str,
        base_image: str,
        container_registry: str | None = None,
        pkgs_to_install: list[str] | None = None,
    ) -> str:
        manifest = ModelManifest.read(Path(model_data_path))
        if base_image == "default":
            base_image = self.default_base_image(manifest)
        if manifest is not None and manifest.runtime in ("python_closure", "pytorch"):
            self._check_environment(base_image, manifest)
        tag = f"{self.cluster_identifier}-{name}:{version}"
        if container_registry:
            tag = f"{container_registry}/{tag}"
        with tempfile.TemporaryDirectory(prefix="clipper-build-") as context:
            shutil.copytree(model_data_path, Path(context) / "model")
            lines = [f"FROM {base_image}"]
            if pkgs_to_install:
                lines.append(f"RUN pip install --no-cache-dir {' '.join(pkgs_to_install)}")
            lines.append("COPY model /model/")
            (Path(context) / "Dockerfile").write_text("\n".join(lines) + "\n")
            logger.info("Building model image %s FROM %s", tag, base_image)
            self._build(context, tag)
        if container_registry:
            self._push(tag)
        return tag

    def default_base_image(self, manifest: ModelManifest | None) -> str:
        runtime = manifest.runtime if manifest else "python_closure"
        if runtime == "python_closure":
            return self.closure_base_image()
        if manifest is not None and runtime in ("pytorch", "torchscript", "onnx"):
            return self.framework_base_image(runtime, manifest)
        raise ClipperException(f"No default base image for the {runtime} runtime")

    def _push(self, tag: str) -> None:
        logger.info("Pushing %s", tag)
        for chunk in self.docker_client.images.push(tag, stream=True, decode=True):
            if "error" in chunk:
                raise ClipperException(f"Pushing {tag} failed: {chunk['error']}")

    def deploy_model(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int = 1
    ) -> None:
        self.set_num_replicas(name, version, input_type, image, num_replicas)

    def _replicas(self, name: str, version: str) -> list[Container]:
        running = [
            c
            for c in self._containers(**{CLIPPER_MODEL_CONTAINER_LABEL: f"{name}_{version}"})
            if c.status in ("running", "created", "restarting")
        ]
        return sorted(running, key=lambda c: str(c.attrs.get("Created", "")))

    def get_num_replicas(self, name: str, version: str) -> int:
        return len(self._replicas(name, version))

    def set_num_replicas(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int
    ) -> None:
        ports = self._require_ports()
        current = self._replicas(name, version)
        if num_replicas < len(current):
            extra = current[num_replicas:]
            logger.info("Stopping %d replicas of %s:%s", len(extra), name, version)
            self._stop(extra, graceful=True)
            return
        to_add = num_replicas - len(current)
        if to_add == 0:
            return
        logger.info("Found %d replicas for %s:%s. Adding %d", len(current), name, version, to_add)
        for i in range(to_add):
            grpc_port, metrics_port = find_unbound_ports([None, None])
            host = "127.0.0.1"
            try:
                self._run(
                    image,
                    f"{name}_{version}-{_suffix()}",
                    environment={
                        "CLIPPER_MODEL_NAME": name,
                        "CLIPPER_MODEL_VERSION": version,
                        "CLIPPER_INPUT_TYPE": input_type,
                        "CLIPPER_IP": host,
                        "CLIPPER_PORT": str(grpc_port),
                        "CLIPPER_METRICS_PORT": str(metrics_port),
                        "CLIPPER_ADVERTISE_HOST": host,
                        "CLIPPER_REDIS_IP": self.redis_ip or host,
                        "CLIPPER_REDIS_PORT": str(ports["redis"]),
                    },
                    labels={
                        CLIPPER_MODEL_CONTAINER_LABEL: f"{name}_{version}",
                        CLIPPER_MODEL_REPLICA_PORT_LABEL: str(grpc_port),
                        CLIPPER_METRIC_PORT_LABEL: str(metrics_port),
                    },
                    wait_healthy=True,
                )
            except ClipperException as e:
                failed = [c for c in self._replicas(name, version) if c not in current]
                self._stop(failed, graceful=False)
                raise ClipperException(
                    f"Replica {len(current) + i} of model {name}:{version} failed to start: {e.msg}"
                ) from e
            logger.info("Replica %d of %s:%s is serving", len(current) + i, name, version)

    def get_logs(self, logging_dir: str) -> list[str]:
        directory = Path(logging_dir)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for container in self._containers():
            image_id = container.image.short_id[7:] if container.image else "unknown"
            path = directory / f"image_{image_id}:container_{container.short_id}.log"
            path.write_bytes(bytes(container.logs()))
            paths.append(str(path))
        return paths

    def _stop(self, containers: list[Container], graceful: bool) -> None:
        for container in containers:
            try:
                if graceful:
                    container.stop(timeout=15)
                else:
                    container.kill()
            except docker.errors.APIError:
                pass  # already stopped
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass

    def stop_models(self, models: dict[str, list[str]]) -> None:
        for name, versions in models.items():
            for version in versions:
                self._stop(self._replicas(name, str(version)), graceful=True)

    def stop_all_model_containers(self) -> None:
        self._stop(self._containers(**{CLIPPER_MODEL_CONTAINER_LABEL: ""}), graceful=True)

    def stop_all(self, graceful: bool = True) -> None:
        """Stops and removes every container of the cluster; Redis's volume keeps the state."""
        containers = self._containers()
        models = [c for c in containers if CLIPPER_MODEL_CONTAINER_LABEL in c.labels]
        self._stop(models, graceful)
        self._stop([c for c in containers if c not in models], graceful)
        self._ports = None

    def remove_state(self) -> None:
        """Deletes the cluster's Redis volume and model images: it is gone for good."""
        try:
            self.docker_client.volumes.get(self._redis_volume()).remove(force=True)
        except docker.errors.NotFound:
            pass
        prefix = f"{self.cluster_identifier}-"
        for image in self.docker_client.images.list():
            for tag in image.tags:
                # A registry prefix may come first: "registry/cluster-model:1".
                if tag.rsplit("/", 1)[-1].startswith(prefix):
                    try:
                        # Untags only; layers shared with other tags stay.
                        self.docker_client.images.remove(tag, noprune=False)
                    except docker.errors.APIError as e:
                        logger.warning("Could not remove image %s: %s", tag, e)

    # Addresses

    def get_admin_addr(self) -> str:
        return f"{self.docker_ip_address}:{self._require_ports()['management']}"

    def get_query_addr(self) -> str:
        return f"{self.docker_ip_address}:{self._require_ports()['query']}"

    def get_metric_addr(self) -> str:
        return f"{self.docker_ip_address}:{self._require_ports()['prometheus']}"


def _environment_dict(environment: dict[str, str] | list[str]) -> dict[str, str]:
    """docker-py takes a container's environment as a dict or as "NAME=value" strings."""
    if isinstance(environment, dict):
        return dict(environment)
    pairs = (item.partition("=") for item in environment)
    return {name: value for name, _, value in pairs}


@contextmanager
def _served_wheels(directory: str | None, prefix: str) -> Iterator[str | None]:
    """Serves a folder of wheels on loopback while an image builds, if it has the wanted one.

    Builds use host networking, so the build's pip reaches it at 127.0.0.1.
    """
    if not directory or not any(Path(directory).glob(f"{prefix}-*.whl")):
        yield None
        return
    handler = functools.partial(_QuietHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("wheel server: " + format, *args)


def _image_name(container: Container) -> str:
    image = container.image
    if image is None:
        return "unknown image"
    return str(image.tags[0] if image.tags else image.short_id)


def _suffix() -> str:
    return uuid.uuid4().hex[:8]
