"""LocalContainerManager: the whole cluster as child processes on loopback, no Docker needed.

Redis, the management service, the query frontend and every model replica run as separate
processes under one cluster directory, which holds Redis's append-only file, the models, the
process records and every log. The cluster outlives the Python process that started it;
connect() finds it again from any other process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import uuid
import venv
from dataclasses import dataclass
from pathlib import Path

import redis

from clipper_admin.container_manager import (
    CLIPPER_INTERNAL_MANAGEMENT_PORT,
    CLIPPER_INTERNAL_QUERY_PORT,
    CLIPPER_INTERNAL_REDIS_PORT,
    CLIPPER_TEMP_DIR,
    ContainerManager,
    find_unbound_port,
)
from clipper_admin.exceptions import ClipperException
from clipper_admin.local_processes import (
    ProcessRecord,
    has_ended,
    log_tail,
    redis_server_binary,
    spawn,
    stop,
    wait_ready,
)

logger = logging.getLogger(__name__)

CLUSTER_FILE = "cluster.json"
_SERVICES = ("query_frontend", "management", "redis")


def _free_or_zero(port: int, host: str) -> int:
    """The requested port if it is free now, else 0 (the service then picks one)."""
    return port if port and find_unbound_port(port, host) == port else 0


@dataclass
class _Cluster:
    host: str
    redis_port: int
    management_port: int
    query_port: int


class LocalContainerManager(ContainerManager):
    def __init__(
        self,
        cluster_name: str = "default-cluster",
        cluster_dir: str | None = None,
        host: str = "127.0.0.1",
        clipper_query_port: int = CLIPPER_INTERNAL_QUERY_PORT,
        clipper_management_port: int = CLIPPER_INTERNAL_MANAGEMENT_PORT,
        redis_port: int = CLIPPER_INTERNAL_REDIS_PORT,
        start_timeout_s: float = 60.0,
        replica_start_timeout_s: float = 300.0,
    ) -> None:
        self.cluster_name = cluster_name
        self.cluster_dir = Path(cluster_dir or Path(CLIPPER_TEMP_DIR) / "clusters" / cluster_name)
        self.host = host
        self._requested_ports = (clipper_query_port, clipper_management_port, redis_port)
        self.start_timeout_s = start_timeout_s
        self.replica_start_timeout_s = replica_start_timeout_s
        self._cluster: _Cluster | None = None
        self._children: list[subprocess.Popen[bytes]] = []

    # Paths

    @property
    def logs_dir(self) -> Path:
        return self.cluster_dir / "logs"

    def _service_record_path(self, service: str) -> Path:
        return self.cluster_dir / "processes" / f"{service}.json"

    def _replica_dir(self, name: str, version: str) -> Path:
        return self.cluster_dir / "replicas" / name / version

    def _model_dir(self, name: str, version: str) -> Path:
        return self.cluster_dir / "models" / name / version

    # Cluster lifecycle

    def start_clipper(
        self,
        query_frontend_image: str = "",
        mgmt_frontend_image: str = "",
        frontend_exporter_image: str = "",
        cache_size: int = 33554432,
        qf_http_thread_pool_size: int = 1,
        qf_http_timeout_request: int = 5,
        qf_http_timeout_content: int = 300,
        num_frontend_replicas: int = 1,
    ) -> None:
        if num_frontend_replicas < 1:
            raise ClipperException("num_frontend_replicas must be at least 1")
        alive = {service: self._service_alive(service) for service in _SERVICES}
        if all(alive.values()):
            raise ClipperException(
                f"Cluster {self.cluster_name} already exists in {self.cluster_dir}. "
                "Please use ClipperConnection.connect() to connect to it."
            )
        if any(alive.values()):
            self._restart_stopped_services(alive, cache_size, num_frontend_replicas)
            return
        for sub in ("redis", "logs", "processes", "models", "replicas"):
            (self.cluster_dir / sub).mkdir(parents=True, exist_ok=True)
        requested_query, requested_management, requested_redis = self._requested_ports
        # Redis needs a real port; the Python services bind 0 when theirs is taken or 0, and
        # report the port the OS gave them, so no other process can take it in between.
        cluster = _Cluster(self.host, find_unbound_port(requested_redis, self.host), 0, 0)
        try:
            self._start_redis(cluster)
            cluster.management_port = self._start_management(
                cluster, _free_or_zero(requested_management, self.host)
            )
            cluster.query_port = self._start_query_frontend(
                cluster,
                _free_or_zero(requested_query, self.host),
                cache_size,
                num_frontend_replicas,
            )
        except ClipperException:
            self.stop_all(graceful=False)
            raise
        (self.cluster_dir / CLUSTER_FILE).write_text(json.dumps(cluster.__dict__))
        self._cluster = cluster
        logger.info(
            "Clipper cluster %s is running: query %s, admin %s (state and logs in %s)",
            self.cluster_name,
            self.get_query_addr(),
            self.get_admin_addr(),
            self.cluster_dir,
        )

    def _restart_stopped_services(
        self, alive: dict[str, bool], cache_size: int, num_frontend_replicas: int
    ) -> None:
        """Brings back the services of a running cluster that have stopped (Redis killed, a
        service crashed), each on the port the cluster was started with, so that the services
        still running and every replica keep their addresses. Redis reloads its append-only
        file, so no app, model or link is lost; the services still running reconnect to it."""
        path = self.cluster_dir / CLUSTER_FILE
        if not path.exists():
            raise ClipperException(
                f"Cluster {self.cluster_name} in {self.cluster_dir} is partly running without "
                "its cluster file. Call stop_all() and then start_clipper()."
            )
        cluster = _Cluster(**json.loads(path.read_text()))
        stopped = [service for service in ("redis", "management", "query_frontend")
                   if not alive[service]]  # fmt: skip
        logger.warning(
            "Cluster %s: restarting %s, which stopped", self.cluster_name, ", ".join(stopped)
        )
        if "redis" in stopped:
            self._start_redis(cluster)
        if "management" in stopped:
            self._start_management(cluster, cluster.management_port)
        if "query_frontend" in stopped:
            self._start_query_frontend(
                cluster, cluster.query_port, cache_size, num_frontend_replicas
            )
        self._cluster = cluster

    def _start_management(self, cluster: _Cluster, port: int) -> int:
        return self._start_python_service(
            "management",
            "management",
            ["--port", str(port), "--redis_port", str(cluster.redis_port)],
            {"CLIPPER_MGMT_HOST": self.host, "CLIPPER_MGMT_REDIS_HOST": self.host},
            "CLIPPER_MGMT_READY_FD",
        )

    def _start_query_frontend(
        self, cluster: _Cluster, port: int, cache_size: int, num_frontend_replicas: int
    ) -> int:
        return self._start_python_service(
            "query_frontend",
            "query_frontend",
            [
                "--port",
                str(port),
                "--redis_port",
                str(cluster.redis_port),
                "--prediction_cache_size",
                str(cache_size),
                # Replicas of the frontend are worker processes sharing its port.
                "--workers",
                str(num_frontend_replicas),
            ],
            {"CLIPPER_QF_HOST": self.host, "CLIPPER_QF_REDIS_HOST": self.host},
            "CLIPPER_QF_READY_FD",
        )

    def _start_redis(self, cluster: _Cluster) -> None:
        redis_dir = self.cluster_dir / "redis"
        argv = [
            redis_server_binary(),
            "--port", str(cluster.redis_port),
            "--bind", self.host,
            "--dir", str(redis_dir),
            # Every write is in the append-only file, so restarts lose no app, model or link.
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--notify-keyspace-events", "Ex",
        ]  # fmt: skip
        # Redis never writes to the pipe: its end of file says that Redis exited before it
        # answered, which its keeper would only start again to fail again.
        _, record, run_fd = spawn(
            "redis", argv, self.logs_dir / "redis.log", ready_fd_env="CLIPPER_REDIS_RUN_FD"
        )
        assert run_fd is not None
        record.save(self._service_record_path("redis"))
        try:
            self._wait_for_redis(cluster, record, run_fd)
        finally:
            os.close(run_fd)

    def _wait_for_redis(self, cluster: _Cluster, record: ProcessRecord, run_fd: int) -> None:
        client = redis.Redis(host=cluster.host, port=cluster.redis_port, socket_timeout=1.0)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            # Redis offers no readiness signal: retry PING while it starts or loads its file.
            while time.monotonic() < deadline and not has_ended(run_fd):
                try:
                    client.ping()
                    return
                except (redis.exceptions.BusyLoadingError, redis.exceptions.ConnectionError):
                    time.sleep(0.05)
        finally:
            client.close()
        raise ClipperException(
            f"Redis did not start on port {cluster.redis_port}. Its log ends with:\n"
            f"{log_tail(record.log_path)}"
        )

    def _start_python_service(
        self,
        service: str,
        module: str,
        args: list[str],
        env: dict[str, str],
        ready_env: str,
    ) -> int:
        """Starts a service and returns the port it reports once it listens."""
        child_env = {**os.environ, **env}
        process, record, ready_fd = spawn(
            service,
            [sys.executable, "-m", module, *args],
            self.logs_dir / f"{service}.log",
            child_env,
            ready_env,
            port_arg="--port",
        )
        self._children.append(process)
        record.save(self._service_record_path(service))
        assert ready_fd is not None
        line = wait_ready(service, ready_fd, record, self.start_timeout_s)
        return int(line.split()[1])

    def _service_alive(self, service: str) -> bool:
        record = ProcessRecord.load(self._service_record_path(service))
        return record is not None and record.is_alive()

    def connect(self) -> None:
        path = self.cluster_dir / CLUSTER_FILE
        stopped = [s for s in _SERVICES if not self._service_alive(s)]
        if path.exists() and stopped and len(stopped) < len(_SERVICES):
            raise ClipperException(
                f"Cluster {self.cluster_name} in {self.cluster_dir} is running without "
                f"{' and '.join(stopped)}. Call ClipperConnection.start_clipper() to restart "
                "what stopped: the cluster's state and the rest of its processes are kept."
            )
        if not path.exists() or stopped:
            raise ClipperException(
                f"No running Clipper cluster named {self.cluster_name} in {self.cluster_dir}. "
                "Call ClipperConnection.start_clipper() to start one."
            )
        self._cluster = _Cluster(**json.loads(path.read_text()))

    def _require_cluster(self) -> _Cluster:
        if self._cluster is None:
            self.connect()
        assert self._cluster is not None
        return self._cluster

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
        """Copies the model directory into the cluster; pkgs_to_install go into its own venv."""
        target = self._model_dir(name, version)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(model_data_path, target / "model")
        if pkgs_to_install:
            self._build_venv(target / "venv", pkgs_to_install, target / "build.log")
        return str(target)

    def _build_venv(self, venv_dir: Path, pkgs: list[str], log_path: Path) -> None:
        # The model's environment extends the one this cluster runs in (the replica runtime,
        # grpc, numpy, uvloop), not the base interpreter's, which may have none of them when
        # this process runs in a virtual environment. Its own packages come first on the path.
        venv.EnvBuilder(with_pip=True).create(venv_dir)
        site_dir = sysconfig.get_path(
            "purelib", scheme="venv", vars={"base": str(venv_dir), "platbase": str(venv_dir)}
        )
        parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
        # addsitedir, not a plain path line: the parent's own .pth files (an editable install
        # of this project) must run too.
        Path(site_dir, "_clipper_cluster_env.pth").write_text(
            "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in parents) + "\n"
        )
        pip = [str(venv_dir / "bin" / "python"), "-m", "pip", "install", *pkgs]
        logger.info("Installing %s for the model", " ".join(pkgs))
        with log_path.open("wb") as log:
            result = subprocess.run(pip, stdout=log, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            raise ClipperException(
                f"pip install {' '.join(pkgs)} failed. Its output ends with:\n{log_tail(log_path)}"
            )

    def deploy_model(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int = 1
    ) -> None:
        self.set_num_replicas(name, version, input_type, image, num_replicas)

    def _replica_records(self, name: str, version: str) -> list[tuple[Path, ProcessRecord]]:
        records = []
        directory = self._replica_dir(name, version)
        for path in sorted(directory.glob("*.json")) if directory.exists() else []:
            record = ProcessRecord.load(path)
            if record is not None and record.is_alive():
                records.append((path, record))
            else:
                path.unlink(missing_ok=True)
        return sorted(records, key=lambda r: r[1].create_time)

    def get_num_replicas(self, name: str, version: str) -> int:
        return len(self._replica_records(name, version))

    def set_num_replicas(
        self, name: str, version: str, input_type: str, image: str, num_replicas: int
    ) -> None:
        cluster = self._require_cluster()
        current = self._replica_records(name, version)
        if num_replicas < len(current):
            extra = current[num_replicas:]
            logger.info("Stopping %d replicas of %s:%s", len(extra), name, version)
            stop([record for _, record in extra], graceful=True)
            for path, _ in extra:
                path.unlink(missing_ok=True)
            return
        to_start = num_replicas - len(current)
        if to_start == 0:
            return
        logger.info("Found %d replicas for %s:%s. Adding %d", len(current), name, version, to_start)
        started = [
            self._spawn_replica(cluster, name, version, input_type, image) for _ in range(to_start)
        ]
        for i, (_, record, ready_fd) in enumerate(started):
            try:
                wait_ready(
                    f"Replica {i} of model {name}:{version}",
                    ready_fd,
                    record,
                    self.replica_start_timeout_s,
                )
            except ClipperException:
                for other_path, other, _ in started:
                    stop([other], graceful=False)
                    other_path.unlink(missing_ok=True)
                raise
        logger.info("%d replicas of %s:%s are serving", num_replicas, name, version)

    def _spawn_replica(
        self, cluster: _Cluster, name: str, version: str, input_type: str, image: str
    ) -> tuple[Path, ProcessRecord, int]:
        model_home = Path(image)
        if not (model_home / "model").is_dir():
            raise ClipperException(
                f"{image} is not a model built for this local cluster (build_model makes one)"
            )
        venv_python = model_home / "venv" / "bin" / "python"
        python = str(venv_python) if venv_python.exists() else sys.executable
        replica_name = f"{name}_{version}-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "CLIPPER_MODEL_NAME": name,
            "CLIPPER_MODEL_VERSION": version,
            "CLIPPER_INPUT_TYPE": input_type,
            "CLIPPER_MODEL_PATH": str(model_home / "model"),
            "CLIPPER_HOST": cluster.host,
            "CLIPPER_PORT": "0",
            "CLIPPER_METRICS_PORT": "0",
            "CLIPPER_ADVERTISE_HOST": cluster.host,
            "CLIPPER_REDIS_IP": cluster.host,
            "CLIPPER_REDIS_PORT": str(cluster.redis_port),
        }
        process, record, ready_fd = spawn(
            f"replica of {name}:{version}",
            [python, "-m", "model_containers"],
            self.logs_dir / f"{replica_name}.log",
            env,
            "CLIPPER_READY_FD",
        )
        self._children.append(process)
        directory = self._replica_dir(name, version)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{replica_name}.json"
        record.save(path)
        assert ready_fd is not None
        return path, record, ready_fd

    def get_logs(self, logging_dir: str) -> list[str]:
        target = Path(logging_dir)
        target.mkdir(parents=True, exist_ok=True)
        copied = []
        for log in sorted(self.logs_dir.glob("*.log")):
            shutil.copy(log, target / log.name)
            copied.append(str(target / log.name))
        return copied

    def stop_models(self, models: dict[str, list[str]]) -> None:
        records = []
        for name, versions in models.items():
            for version in versions:
                for path, record in self._replica_records(name, str(version)):
                    records.append(record)
                    path.unlink(missing_ok=True)
        stop(records, graceful=True)

    def _all_replicas(self) -> list[tuple[Path, ProcessRecord]]:
        found = []
        root = self.cluster_dir / "replicas"
        for path in root.glob("*/*/*.json") if root.exists() else []:
            record = ProcessRecord.load(path)
            if record is not None:
                found.append((path, record))
        return found

    def stop_all_model_containers(self) -> None:
        replicas = self._all_replicas()
        stop([record for _, record in replicas], graceful=True)
        for path, _ in replicas:
            path.unlink(missing_ok=True)

    def stop_all(self, graceful: bool = True) -> None:
        """Stops every process of the cluster. Redis's data stays in the cluster directory."""
        replicas = self._all_replicas()
        stop([record for _, record in replicas], graceful)
        for path, _ in replicas:
            path.unlink(missing_ok=True)
        for service in _SERVICES:
            path = self._service_record_path(service)
            record = ProcessRecord.load(path)
            if record is not None:
                stop([record], graceful)
                path.unlink(missing_ok=True)
        for child in self._children:
            child.poll()  # reap, so no zombie outlives the cluster in this process
        self._children.clear()
        (self.cluster_dir / CLUSTER_FILE).unlink(missing_ok=True)
        self._cluster = None

    # Addresses

    def get_admin_addr(self) -> str:
        cluster = self._require_cluster()
        return f"{cluster.host}:{cluster.management_port}"

    def get_query_addr(self) -> str:
        cluster = self._require_cluster()
        return f"{cluster.host}:{cluster.query_port}"

    def get_metric_addr(self) -> str:
        """The query frontend serves the metrics of a local cluster at /metrics."""
        return self.get_query_addr()

    def get_redis_addr(self) -> str:
        cluster = self._require_cluster()
        return f"{cluster.host}:{cluster.redis_port}"
