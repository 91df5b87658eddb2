"""Shared fixtures: a real redis-server per session, and real local clusters."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import redis.asyncio as aioredis
import requests

from clipper_admin import ClipperConnection, LocalContainerManager
from clipper_admin.container_manager import find_unbound_port
from clipper_admin.local_processes import redis_server_binary
from query_frontend.native import stale_modules

# The default's explanation while a model has no replica to answer (Clipper's wording).
NO_MODELS_EXPLANATION = "No connected models found for query"


def pytest_configure(config: pytest.Config) -> None:
    # A compiled module shadows its source: tests of an edited source would run the old build.
    if stale := stale_modules():
        pytest.exit(
            f"compiled query_frontend modules are older than their source: {', '.join(stale)}. "
            "Rebuild them with scripts/setup dev (or remove the .so files).",
            returncode=4,
        )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port = find_unbound_port()
    directory = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir",
         str(directory), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield "127.0.0.1", port
    process.terminate()
    process.wait(10)


async def start_redis_server(port: int, directory: Path) -> asyncio.subprocess.Process:
    """A redis-server of the test's own, answering PING, so that the test may stop and restart
    it; append-only, so that what was written before a restart is there after it."""
    process = await asyncio.create_subprocess_exec(
        redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir",
        str(directory), "--save", "", "--appendonly", "yes",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    client = aioredis.Redis(port=port)
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    await client.ping()
                    return process
                except aioredis.ConnectionError:
                    await asyncio.sleep(0.05)
    finally:
        await client.aclose()


@pytest.fixture
def clean_redis(redis_server: tuple[str, int]) -> tuple[str, int]:
    redis.Redis(host=redis_server[0], port=redis_server[1]).flushall()
    return redis_server


def new_connection(cluster_dir: Path, name: str = "test-cluster") -> ClipperConnection:
    return ClipperConnection(
        LocalContainerManager(
            cluster_name=name,
            cluster_dir=str(cluster_dir),
            clipper_query_port=0,
            clipper_management_port=0,
            redis_port=0,
        )
    )


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., ClipperConnection]]:
    """Starts real local clusters (Redis, management, frontend processes); stops them after."""
    started: list[ClipperConnection] = []

    def start(name: str = "test-cluster", cluster_dir: Path | None = None) -> ClipperConnection:
        conn = new_connection(cluster_dir or tmp_path / name, name)
        conn.start_clipper()
        started.append(conn)
        return conn

    yield start
    for conn in started:
        conn.stop_all(graceful=False)


@pytest.fixture
def clipper_conn(start_cluster: Callable[..., ClipperConnection]) -> ClipperConnection:
    return start_cluster()


def predict(conn: ClipperConnection, app: str, body: Any, slash: bool = False) -> Any:
    url = f"http://{conn.get_query_addr()}/{app}/predict{'/' if slash else ''}"
    response = requests.post(
        url, headers={"Content-type": "application/json"}, data=json.dumps(body), timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def replica_pids(conn: ClipperConnection, model: str) -> list[int]:
    """The model processes of an embedded cluster's replicas of a model: each runs under its
    keeper, whose pid is the one recorded."""
    directory = Path(conn.cm.cluster_dir) / "replicas" / model  # type: ignore[attr-defined]
    pids: list[int] = []
    for path in directory.glob("*/*.json"):
        try:
            keeper = psutil.Process(json.loads(path.read_text())["pid"])
            pids.extend(child.pid for child in keeper.children())
        except psutil.Error:
            continue  # a stopped replica
    return pids


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Polls condition until true; returns the seconds it took. Test-side waiting only."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skips Docker tests where no engine answers, unless CLIPPER_REQUIRE_DOCKER=1 (CI sets it)."""
    import os

    import docker

    try:
        docker.from_env(timeout=10).ping()
    except Exception as e:
        if os.environ.get("CLIPPER_REQUIRE_DOCKER") == "1":
            raise AssertionError(f"Docker is required here but does not answer: {e}") from e
        pytest.skip(f"no Docker engine: {e}")
