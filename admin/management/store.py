"""The cluster state in Redis: every key name, and the records read from and written to them."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions

# What a call raises when Redis cannot be reached (down, restarting, still loading its data),
# as against a command it refused.
UNREACHABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

PREFIX = "clipper:"
APPS = PREFIX + "apps"
MODELS = PREFIX + "models"
EVENTS_CHANNEL = PREFIX + "events"
# Bumped by every change, so a reader can tell cheaply whether its copy is stale.
GENERATION = PREFIX + "generation"
REPLICA_PREFIX = PREFIX + "replica:"
# The query frontends that route by this state: each one's id, and under its own key with a ttl
# the generation of the state it routes by; it publishes its id on APPLIED_CHANNEL on each write.
FRONTENDS = PREFIX + "frontends"
APPLIED_CHANNEL = PREFIX + "applied"
EXPIRED_EVENTS_PATTERN = "__keyevent@*__:expired"

CONTAINERLESS_MODEL_IMAGE = "NO_CONTAINER"
DEFAULT_POLICY = "DefaultOutputSelectionPolicy"


def _app_key(name: str) -> str:
    return f"{PREFIX}app:{name}"


def _links_key(app: str) -> str:
    return f"{PREFIX}links:{app}"


def _model_key(name: str, version: str) -> str:
    return f"{PREFIX}model:{name}:{version}"


def _versions_key(name: str) -> str:
    return f"{PREFIX}versions:{name}"


def _current_key(name: str) -> str:
    return f"{PREFIX}current:{name}"


def _frontend_key(frontend_id: str) -> str:
    return f"{PREFIX}frontend:{frontend_id}"


def _replica_seq_key(name: str, version: str) -> str:
    return f"{PREFIX}replica_seq:{name}:{version}"


def _replica_key(name: str, version: str, replica_id: int) -> str:
    return f"{REPLICA_PREFIX}{name}:{version}:{replica_id}"


@dataclass(frozen=True)
class AppRecord:
    name: str
    input_type: str
    default_output: str
    latency_slo_micros: int
    policy: str = DEFAULT_POLICY


@dataclass(frozen=True)
class ModelRecord:
    name: str
    version: str
    input_type: str
    labels: list[str]
    container_name: str
    model_data_path: str
    batch_size: int


@dataclass(frozen=True)
class ReplicaRecord:
    model_name: str
    model_version: str
    replica_id: int
    input_type: str
    address: str
    pid: int = 0
    started_at: float = field(default_factory=time.time)
    metrics_address: str = ""


@dataclass(frozen=True)
class ClusterState:
    """One read of everything the query frontend routes by, at least as new as generation."""

    generation: int
    apps: dict[str, AppRecord]
    links: dict[str, list[str]]
    models: dict[tuple[str, str], ModelRecord]
    current_versions: dict[str, str]
    replicas: list[ReplicaRecord]


class Store:
    """Reads and writes the cluster state; publishes a change event after every write."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    @property
    def location(self) -> str:
        """Where the Redis this store uses listens: host:port, or its Unix socket."""
        kwargs = self._redis.connection_pool.connection_kwargs
        if "path" in kwargs:
            return str(kwargs["path"])
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"

    # The client decodes responses, so every value read is a str; these say so to the checker.

    async def _members(self, key: str) -> list[str]:
        return sorted(cast("set[str]", await self._redis.smembers(key)))

    async def _hash(self, key: str) -> dict[str, str]:
        return cast("dict[str, str]", await self._redis.hgetall(key))

    async def _hashes(self, keys: list[str]) -> list[dict[str, str]]:
        """Each key's hash, in one round trip however many keys there are."""
        if not keys:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            return cast("list[dict[str, str]]", await pipe.execute())

    async def _get(self, key: str) -> str | None:
        return cast("str | None", await self._redis.get(key))

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def notify_changed(self, what: str) -> int:
        """Announces a change; returns the generation that includes it."""
        generation = int(await self._redis.incr(GENERATION))
        await self._redis.publish(EVENTS_CHANNEL, what)
        return generation

    async def generation(self) -> int:
        return int(await self._get(GENERATION) or 0)

    # Query frontends

    async def report_applied(self, frontend_id: str, generation: int, ttl_s: float) -> None:
        """Records that a frontend routes by the state of `generation` or a newer one; the
        record lasts ttl_s unless written again."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(_frontend_key(frontend_id), generation, px=max(1, int(ttl_s * 1000)))
            pipe.sadd(FRONTENDS, frontend_id)
            pipe.publish(APPLIED_CHANNEL, frontend_id)
            await pipe.execute()

    async def forget_frontend(self, frontend_id: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(_frontend_key(frontend_id))
            pipe.srem(FRONTENDS, frontend_id)
            await pipe.execute()

    async def frontends_behind(self, generation: int) -> list[str]:
        """The live frontends that route by a state older than `generation`. Those whose record
        ran out (stopped, or killed) are forgotten."""
        ids = await self._members(FRONTENDS)
        if not ids:
            return []
        applied = cast("list[str | None]", await self._redis.mget(map(_frontend_key, ids)))
        gone = [i for i, value in zip(ids, applied, strict=True) if value is None]
        if gone:
            await self._redis.srem(FRONTENDS, *gone)
        return [
            i
            for i, value in zip(ids, applied, strict=True)
            if value is not None and int(value) < generation
        ]

    async def await_frontends(self, generation: int, timeout_s: float) -> list[str]:
        """Waits until every live frontend routes by `generation` or a newer state, at most
        timeout_s; returns the frontends still behind then (none, normally)."""
        behind = await self.frontends_behind(generation)
        if not behind or timeout_s <= 0:
            return behind
        pubsub = self._redis.pubsub()
        try:
            # Subscribed before the next look, so that no report made after it can be missed.
            await pubsub.subscribe(APPLIED_CHANNEL)
            ends = time.monotonic() + timeout_s
            while (behind := await self.frontends_behind(generation)) and (
                left_s := ends - time.monotonic()
            ) > 0:
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=left_s)
            return behind
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    @asynccontextmanager
    async def subscribe_changes(self) -> AsyncIterator[aioredis.client.PubSub]:
        """Yields a pubsub that receives change events and expired replica heartbeats."""
        try:
            # Expired heartbeat keys are how a replica that died without saying so leaves routing.
            await self._redis.config_set("notify-keyspace-events", "Ex")
        except aioredis.ResponseError:
            pass  # a managed Redis may forbid CONFIG; the frontend's periodic resync covers it
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(EVENTS_CHANNEL)
        await pubsub.psubscribe(EXPIRED_EVENTS_PATTERN)
        try:
            yield pubsub
        finally:
            # redis-py types aclose() from 8.2 on; older releases (still allowed) do not.
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    # Applications

    async def add_app(self, app: AppRecord) -> bool:
        added = await self._redis.sadd(APPS, app.name)
        if not added:
            return False
        await self._redis.hset(
            _app_key(app.name),
            mapping={
                "input_type": app.input_type,
                "default_output": app.default_output,
                "latency_slo_micros": str(app.latency_slo_micros),
                "policy": app.policy,
            },
        )
        await self.notify_changed("apps")
        return True

    async def delete_app(self, name: str) -> bool:
        removed = await self._redis.srem(APPS, name)
        if not removed:
            return False
        await self._redis.delete(_app_key(name), _links_key(name))
        await self.notify_changed("apps")
        return True

    async def get_app(self, name: str) -> AppRecord | None:
        fields = await self._hash(_app_key(name))
        return _app_from_hash(name, fields) if fields else None

    async def list_apps(self) -> list[AppRecord]:
        names = await self._members(APPS)
        hashes = await self._hashes([_app_key(name) for name in names])
        return [
            _app_from_hash(name, fields)
            for name, fields in zip(names, hashes, strict=True)
            if fields
        ]

    # Links

    async def get_links(self, app: str) -> list[str]:
        return await self._members(_links_key(app))

    async def add_link(self, app: str, model: str) -> None:
        await self._redis.sadd(_links_key(app), model)
        await self.notify_changed("links")

    async def remove_link(self, app: str, model: str) -> bool:
        removed = await self._redis.srem(_links_key(app), model)
        if removed:
            await self.notify_changed("links")
        return bool(removed)

    async def apps_linked_to(self, model: str) -> list[str]:
        return [app for app in await self._members(APPS) if model in await self.get_links(app)]

    # Models

    async def add_model(self, model: ModelRecord, make_current: bool = True) -> bool:
        """Adds a version and makes it the model's current version, or only if the model has
        none when make_current is False; False if the version exists."""
        added = await self._redis.sadd(MODELS, f"{model.name}:{model.version}")
        if not added:
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                _model_key(model.name, model.version),
                mapping={
                    "model_name": model.name,
                    "model_version": model.version,
                    "input_type": model.input_type,
                    "labels": json.dumps(model.labels),
                    "container_name": model.container_name,
                    "model_data_path": model.model_data_path,
                    "batch_size": str(model.batch_size),
                },
            )
            pipe.sadd(_versions_key(model.name), model.version)
            pipe.set(_current_key(model.name), model.version, nx=not make_current)
            await pipe.execute()
        await self.notify_changed("models")
        return True

    async def get_model(self, name: str, version: str) -> ModelRecord | None:
        fields = await self._hash(_model_key(name, version))
        return _model_from_hash(fields) if fields else None

    async def list_models(self) -> list[ModelRecord]:
        ids = [model_id.partition(":") for model_id in await self._members(MODELS)]
        keys = [_model_key(name, version) for name, _, version in ids]
        return [_model_from_hash(fields) for fields in await self._hashes(keys) if fields]

    async def model_versions(self, name: str) -> list[str]:
        return await self._members(_versions_key(name))

    async def model_exists(self, name: str) -> bool:
        return bool(await self._redis.scard(_versions_key(name)))

    async def get_current_version(self, name: str) -> str | None:
        return await self._get(_current_key(name))

    async def set_current_version(self, name: str, version: str) -> None:
        await self._redis.set(_current_key(name), version)
        await self.notify_changed("models")

    async def delete_model_version(self, name: str, version: str) -> bool:
        removed = await self._redis.srem(MODELS, f"{name}:{version}")
        if not removed:
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(_model_key(name, version))
            pipe.srem(_versions_key(name), version)
            await pipe.execute()
        if await self.get_current_version(name) == version:
            await self._redis.delete(_current_key(name))
        await self.notify_changed("models")
        return True

    # Replicas

    async def register_replica(
        self,
        model_name: str,
        model_version: str,
        input_type: str,
        address: str,
        pid: int,
        ttl_s: float,
        metrics_address: str = "",
    ) -> ReplicaRecord:
        replica_id = int(await self._redis.incr(_replica_seq_key(model_name, model_version))) - 1
        replica = ReplicaRecord(
            model_name,
            model_version,
            replica_id,
            input_type,
            address,
            pid,
            metrics_address=metrics_address,
        )
        await self.refresh_replica(replica, ttl_s)
        return replica

    async def refresh_replica(self, replica: ReplicaRecord, ttl_s: float) -> None:
        """Writes the record with a new ttl, and announces it when it was not there: new, or
        gone while the replica lived (Redis restarted after its ttl ran out)."""
        key = _replica_key(replica.model_name, replica.model_version, replica.replica_id)
        data: dict[Any, str] = {k: str(v) for k, v in asdict(replica).items()}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=data)
            pipe.pexpire(key, int(ttl_s * 1000))
            fields_added, _ = await pipe.execute()
        if fields_added:
            await self.notify_changed("replicas")

    async def deregister_replica(self, replica: ReplicaRecord) -> None:
        await self._redis.delete(
            _replica_key(replica.model_name, replica.model_version, replica.replica_id)
        )
        await self.notify_changed("replicas")

    async def list_replicas(self) -> list[ReplicaRecord]:
        keys = [str(k) async for k in self._redis.scan_iter(match=REPLICA_PREFIX + "*", count=500)]
        replicas = [_replica_from_hash(fields) for fields in await self._hashes(keys) if fields]
        return sorted(replicas, key=lambda r: (r.model_name, r.model_version, r.replica_id))

    async def get_replica(self, name: str, version: str, replica_id: int) -> ReplicaRecord | None:
        fields = await self._hash(_replica_key(name, version, replica_id))
        return _replica_from_hash(fields) if fields else None

    # Everything at once, for the query frontend

    async def read_cluster_state(self) -> ClusterState:
        """In a fixed number of round trips, however many apps, models and replicas there are:
        the frontends read it after every change, and the management service waits for them
        to have read it after a version switch. With 500 apps and 20 models it took 137 ms one
        key at a time, and takes 28 ms."""
        generation = await self.generation()
        apps = {app.name: app for app in await self.list_apps()}
        models = {(m.name, m.version): m for m in await self.list_models()}
        names = sorted({name for name, _ in models})
        async with self._redis.pipeline(transaction=False) as pipe:
            for app in apps:
                pipe.smembers(_links_key(app))
            if names:
                pipe.mget([_current_key(name) for name in names])
            replies = await pipe.execute()
        links = {app: sorted(replies[i]) for i, app in enumerate(apps)}
        versions = cast("list[str | None]", replies[len(apps)] if names else [])
        current = {
            name: version
            for name, version in zip(names, versions, strict=True)
            if version is not None
        }
        return ClusterState(generation, apps, links, models, current, await self.list_replicas())


def _app_from_hash(name: str, fields: dict[str, str]) -> AppRecord:
    return AppRecord(
        name=name,
        input_type=fields["input_type"],
        default_output=fields["default_output"],
        latency_slo_micros=int(fields["latency_slo_micros"]),
        policy=fields.get("policy", DEFAULT_POLICY),
    )


def _model_from_hash(fields: dict[str, str]) -> ModelRecord:
    return ModelRecord(
        name=fields["model_name"],
        version=fields["model_version"],
        input_type=fields["input_type"],
        labels=list(json.loads(fields["labels"])),
        container_name=fields["container_name"],
        model_data_path=fields["model_data_path"],
        batch_size=int(fields["batch_size"]),
    )


def _replica_from_hash(fields: dict[str, str]) -> ReplicaRecord:
    return ReplicaRecord(
        model_name=fields["model_name"],
        model_version=fields["model_version"],
        replica_id=int(fields["replica_id"]),
        input_type=fields["input_type"],
        address=fields["address"],
        pid=int(fields["pid"]),
        started_at=float(fields["started_at"]),
        metrics_address=fields.get("metrics_address", ""),
    )
