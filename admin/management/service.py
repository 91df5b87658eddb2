"""The management operations: Clipper's admin semantics and error texts over the store."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from management.errors import AdminError
from management.input_types import InputType, parse_input_type
from management.store import AppRecord, ModelRecord, ReplicaRecord, Store

DEFAULT_BATCH_SIZE = -1
_FORBIDDEN_NAME_CHARS = (",", ":")
# An app's name is a segment of its predict URL: the frontend reads request heads of up to 64 KiB,
# and a character may take 12 bytes there, percent-encoded.
MAX_APP_NAME_CHARS = 1024
# How long a change that reroutes queries waits for the query frontends to route by it.
DEFAULT_FRONTEND_SYNC_TIMEOUT_S = 2.0

logger = logging.getLogger(__name__)


class AdminService:
    """Mutations run under one lock, so the checks and writes of a request are not interleaved.

    A change that reroutes queries that already have a route (a version switch, a removal)
    returns only once every live query frontend routes by it, at most frontend_sync_timeout_s:
    a frontend learns of changes from a Redis event, a few milliseconds later, and until then
    the next query went to the old version. New apps and links need no wait: a query that finds
    no route makes its frontend check for changes first.
    """

    def __init__(
        self, store: Store, frontend_sync_timeout_s: float = DEFAULT_FRONTEND_SYNC_TIMEOUT_S
    ) -> None:
        self._store = store
        self._lock = asyncio.Lock()
        self._frontend_sync_timeout_s = frontend_sync_timeout_s

    async def _until_routed(self) -> None:
        """Waits until every live query frontend routes by the state as it is now."""
        generation = await self._store.generation()
        behind = await self._store.await_frontends(generation, self._frontend_sync_timeout_s)
        if behind:
            logger.warning(
                "query frontends %s did not apply change %d within %.1f s; they route by it once "
                "they read it",
                ", ".join(behind),
                generation,
                self._frontend_sync_timeout_s,
            )

    # Applications

    async def add_app(
        self, name: str, input_type: str, default_output: str, latency_slo_micros: int
    ) -> str:
        kind = _input_type(input_type)
        if latency_slo_micros <= 0:
            raise AdminError(
                f"latency_slo_micros must be a positive number of microseconds, "
                f"got {latency_slo_micros}"
            )
        _check_app_name(name)
        async with self._lock:
            app = AppRecord(name, kind.canonical_name, default_output, latency_slo_micros)
            if not await self._store.add_app(app):
                existing = await self._store.get_app(name)
                # State outlives stop_all(), so a Clipper script run again registers its apps
                # again: the same registration is a no-op, as it was on Clipper's fresh state.
                if existing == app:
                    return f"Application '{name}' already exists with these settings"
                raise AdminError(
                    f"application '{name}' already exists"
                    + (f" with {_app_settings(existing)}" if existing else "")
                    + ": unregister it first to register it with other settings"
                )
        return f"Successfully added application with name '{name}'"

    async def delete_app(self, name: str) -> str:
        async with self._lock:
            if not await self._store.delete_app(name):
                raise AdminError(f"Application '{name}' does not exist")
        await self._until_routed()
        return f"Successfully deleted application with name '{name}'"

    async def add_model_links(self, app_name: str, model_names: list[str]) -> str:
        async with self._lock:
            app = await self._store.get_app(app_name)
            if app is None:
                raise AdminError(f"No app with name '{app_name}' exists.")
            for model in model_names:
                version = await self._store.get_current_version(model)
                record = await self._store.get_model(model, version) if version else None
                if record is None:
                    raise AdminError(f"No model with name '{model}' exists.")
                if record.input_type != app.input_type:
                    raise AdminError(
                        f"Model with name '{model}' has incompatible input_type "
                        f"'{record.input_type}'. Requested app to link to has input_type "
                        f"'{app.input_type}'."
                    )
            if not model_names:
                raise AdminError(
                    "Please provide the name of the model that you want to link to "
                    f"the application '{app_name}'"
                )
            if len(model_names) > 1:
                raise AdminError(
                    "Applications must be linked with at most one model. "
                    f"Attempted to add links to {len(model_names)} models."
                )
            model = model_names[0]
            existing = await self._store.get_links(app_name)
            if model in existing:
                return f"Model with name '{model}' is already linked to application '{app_name}'"
            if existing:
                raise AdminError(
                    f"A model with name {existing[0]} is already linked to '{app_name}'."
                )
            await self._store.add_link(app_name, model)
        return f"Successfully linked model with name '{model}' to application '{app_name}'"

    async def delete_model_links(self, app_name: str, model_names: list[str]) -> str:
        async with self._lock:
            if await self._store.get_app(app_name) is None:
                raise AdminError(f"No app with name {app_name} exists.")
            linked = await self._store.get_links(app_name)
            for model in model_names:
                if model not in linked:
                    raise AdminError(
                        f"Cannot remove nonexistent link between app {app_name} and model {model}"
                    )
            for model in model_names:
                await self._store.remove_link(app_name, model)
        await self._until_routed()
        return "Success!"

    # Models

    async def add_model(
        self,
        model_name: str,
        model_version: str,
        labels: list[str],
        input_type: str,
        container_name: str,
        model_data_path: str,
        batch_size: int,
        make_current: bool = True,
    ) -> str:
        """Adds a version, which becomes the current one unless make_current is False and the
        model already has a current version (the one serving keeps serving: a staged deploy)."""
        if batch_size != DEFAULT_BATCH_SIZE and batch_size <= 0:
            raise AdminError("The batch size must be positive or DEFAULT_BATCH_SIZE, which is -1")
        _check_name("model name", model_name)
        _check_name("model version", model_version)
        for label in labels:
            _check_name("label", label)
        kind = _input_type(input_type)
        record = ModelRecord(
            name=model_name,
            version=model_version,
            input_type=kind.canonical_name,
            labels=labels,
            container_name=container_name,
            model_data_path=model_data_path,
            batch_size=batch_size,
        )
        async with self._lock:
            existing = await self._store.get_model(model_name, model_version)
            if existing is not None and existing != record:
                raise AdminError(
                    f"model with name '{model_name}' and version '{model_version}' already exists"
                    " with other settings: deploy it as a new version"
                )
            await self._check_linked_input_type(model_name, kind.canonical_name)
            if existing is None:
                await self._store.add_model(record, make_current)
            elif make_current or await self._store.get_current_version(model_name) is None:
                # A script run again deploys its versions again; adding a version makes it
                # current, so the same version added again does too.
                await self._store.set_current_version(model_name, model_version)
            # Staged, the version is current only if the model had none.
            current = (
                model_version if make_current else await self._store.get_current_version(model_name)
            )
        if current == model_version:  # a staged version reroutes no query: nothing to wait for
            await self._until_routed()
        if existing is not None:
            which = (
                "it is the current version"
                if current == model_version
                else f"the current version is still '{current}'"
            )
            return (
                f"Model with name '{model_name}' and version '{model_version}' already "
                f"exists with these settings; {which}"
            )
        staged = "" if current == model_version else f"; the current version is still '{current}'"
        return (
            f"Successfully added model with name '{model_name}' "
            f"and input type '{kind.canonical_name}'{staged}"
        )

    async def set_model_version(self, model_name: str, model_version: str) -> str:
        async with self._lock:
            if not await self._store.model_exists(model_name):
                raise AdminError(f"Cannot set version for nonexistent model '{model_name}'")
            record = await self._store.get_model(model_name, model_version)
            if record is None:
                raise AdminError(
                    f"Cannot set non-existent version '{model_version}' "
                    f"for model with name '{model_name}'"
                )
            await self._check_linked_input_type(model_name, record.input_type)
            await self._store.set_current_version(model_name, model_version)
        await self._until_routed()
        return f"Successfully set model with name '{model_name}' to version '{model_version}'"

    async def delete_versioned_model(self, model_name: str, model_version: str) -> str:
        async with self._lock:
            if not await self._store.delete_model_version(model_name, model_version):
                raise AdminError(
                    f"model with name '{model_name}' and version '{model_version}' does not exist"
                )
        await self._until_routed()
        return f"Successfully deleted model with name '{model_name}' and version '{model_version}'"

    async def _check_linked_input_type(self, model_name: str, input_type: str) -> None:
        for app_name in await self._store.apps_linked_to(model_name):
            app = await self._store.get_app(app_name)
            if app is not None and app.input_type != input_type:
                raise AdminError(
                    f"Model with name '{model_name}' is already linked to app '{app_name}' using "
                    f"input type '{app.input_type}'. The input type you provided for a new version "
                    f"of the model, '{input_type}', is not compatible."
                )

    # Getters

    async def get_all_applications(self, verbose: bool) -> list[Any]:
        apps = await self._store.list_apps()
        if not verbose:
            return [app.name for app in apps]
        return [await self._app_dict(app) for app in apps]

    async def get_application(self, name: str) -> dict[str, Any]:
        app = await self._store.get_app(name)
        return await self._app_dict(app) if app else {}

    async def get_linked_models(self, app_name: str) -> list[str]:
        if await self._store.get_app(app_name) is None:
            raise AdminError(f"No application with name '{app_name}' exists.")
        return await self._store.get_links(app_name)

    async def get_all_models(self, verbose: bool) -> list[Any]:
        models = await self._store.list_models()
        if not verbose:
            return [f"{m.name}:{m.version}" for m in models]
        return [await self._model_dict(m) for m in models]

    async def get_model(self, model_name: str, model_version: str) -> dict[str, Any]:
        model = await self._store.get_model(model_name, model_version)
        return await self._model_dict(model) if model else {}

    async def get_all_containers(self, verbose: bool) -> list[Any]:
        replicas = await self._store.list_replicas()
        if not verbose:
            return [f"{r.model_name}:{r.model_version}:{r.replica_id}" for r in replicas]
        return [_replica_dict(r) for r in replicas]

    async def get_container(
        self, model_name: str, model_version: str, replica_id: int
    ) -> dict[str, Any]:
        replica = await self._store.get_replica(model_name, model_version, replica_id)
        return _replica_dict(replica) if replica else {}

    async def get_state(self, app_name: str) -> str:
        app = await self._store.get_app(app_name)
        if app is None:
            raise AdminError(f"No application with name '{app_name}' exists.")
        return app.default_output

    async def _app_dict(self, app: AppRecord) -> dict[str, Any]:
        return {
            "input_type": app.input_type,
            "default_output": app.default_output,
            "latency_slo_micros": app.latency_slo_micros,
            "name": app.name,
            "linked_models": await self._store.get_links(app.name),
        }

    async def _model_dict(self, model: ModelRecord) -> dict[str, Any]:
        current = await self._store.get_current_version(model.name)
        return {
            "model_name": model.name,
            "model_version": model.version,
            "input_type": model.input_type,
            "labels": model.labels,
            "container_name": model.container_name,
            "model_data_path": model.model_data_path,
            "batch_size": model.batch_size,
            "is_current_version": current == model.version,
        }


def _replica_dict(replica: ReplicaRecord) -> dict[str, Any]:
    return {
        "model_id": f"{replica.model_name}:{replica.model_version}",
        "model_name": replica.model_name,
        "model_version": replica.model_version,
        "model_replica_id": replica.replica_id,
        "input_type": replica.input_type,
        "address": replica.address,
    }


def _input_type(name: str) -> InputType:
    try:
        return parse_input_type(name)
    except ValueError as e:
        raise AdminError(str(e)) from None


def _check_name(what: str, value: str) -> None:
    if not value or any(c in value for c in _FORBIDDEN_NAME_CHARS):
        raise AdminError(f"Invalid {what} supplied: {value}. Contains one of: ',', ':'")


def _app_settings(app: AppRecord) -> str:
    return (
        f"input_type '{app.input_type}', default_output '{app.default_output}' and "
        f"latency_slo_micros {app.latency_slo_micros}"
    )


def _check_app_name(name: str) -> None:
    """Refuses the names that no client could query, at registration rather than at the first
    query."""
    if not name:
        raise AdminError("Application name must not be empty")
    if name in (".", ".."):
        raise AdminError(
            f"Application name '{name}' cannot be queried: HTTP clients resolve '.' and '..' "
            f"in a URL's path, so POST /{name}/predict would reach another route"
        )
    if len(name) > MAX_APP_NAME_CHARS:
        raise AdminError(
            f"Application name is {len(name)} characters long, more than the "
            f"{MAX_APP_NAME_CHARS} that fit in a predict URL"
        )
