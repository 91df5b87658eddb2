"""The /admin/* HTTP routes: strict request parsing over AdminService, one error middleware."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from management.errors import AdminError
from management.service import DEFAULT_FRONTEND_SYNC_TIMEOUT_S, AdminService
from management.store import UNREACHABLE_ERRORS, Store

logger = logging.getLogger(__name__)

SERVICE_KEY = web.AppKey("admin_service", AdminService)
STORE_KEY = web.AppKey("store", Store)

# Field name -> expected JSON type, per route. bool is checked apart from int (True is an int).
_STR, _INT, _BOOL, _STR_LIST = "string", "integer", "boolean", "array of strings"
_SCHEMAS: dict[str, dict[str, str]] = {
    "add_app": {
        "name": _STR,
        "input_type": _STR,
        "default_output": _STR,
        "latency_slo_micros": _INT,
    },
    "delete_app": {"name": _STR},
    "add_model_links": {"app_name": _STR, "model_names": _STR_LIST},
    "delete_model_links": {"app_name": _STR, "model_names": _STR_LIST},
    "add_model": {
        "model_name": _STR,
        "model_version": _STR,
        "labels": _STR_LIST,
        "input_type": _STR,
        "container_name": _STR,
        "model_data_path": _STR,
        "batch_size": _INT,
    },
    "set_model_version": {"model_name": _STR, "model_version": _STR},
    "delete_versioned_model": {"model_name": _STR, "model_version": _STR},
    "get_all_applications": {"verbose": _BOOL},
    "get_application": {"name": _STR},
    "get_linked_models": {"app_name": _STR},
    "get_all_models": {"verbose": _BOOL},
    "get_model": {"model_name": _STR, "model_version": _STR},
    "get_all_containers": {"verbose": _BOOL},
    "get_container": {"model_name": _STR, "model_version": _STR, "replica_id": _INT},
    "get_state": {"app_name": _STR, "uid": _INT},
}
# Keys a route takes but does not require, beyond Clipper's own.
_OPTIONAL: dict[str, dict[str, str]] = {"add_model": {"make_current": _BOOL}}
_INT32_MAX = 2**31 - 1


def _schema_text(route: str) -> str:
    fields = ",\n".join(
        [f'  "{name}" := {kind}' for name, kind in _SCHEMAS[route].items()]
        + [f'  "{name}" := {kind} (optional)' for name, kind in _OPTIONAL.get(route, {}).items()]
    )
    return "{\n" + fields + "\n}"


def _type_ok(value: Any, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _BOOL:
        return isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


async def _parse(request: web.Request, route: str) -> dict[str, Any]:
    def fail(detail: str) -> AdminError:
        return AdminError(
            f"Error parsing JSON: {detail}. Expected JSON schema: {_schema_text(route)}"
        )

    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else None
        # An escaped lone surrogate ("\ud800") parses, but is not text: Redis could not store
        # it, and the call would fail with a 500.
        json.dumps(body, ensure_ascii=False).encode()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise fail(f"JSON parse error: {e}") from None
    except RecursionError:
        raise fail("JSON parse error: the document is nested too deeply") from None
    except UnicodeEncodeError as e:
        raise fail(f"JSON parse error: a string holds a lone surrogate ({e.reason})") from None
    if not isinstance(body, dict):
        raise fail("the request body must be a JSON object")
    for name, kind in _SCHEMAS[route].items():
        if name not in body:
            raise fail(f"JSON object does not have required key {name}")
        if not _type_ok(body[name], kind):
            raise fail(f"JSON key {name} must be of type {kind}")
        if kind == _INT and abs(body[name]) > _INT32_MAX:
            raise fail(f"JSON key {name} is out of the 32-bit integer range")
    for name, kind in _OPTIONAL.get(route, {}).items():
        if name in body and not _type_ok(body[name], kind):
            raise fail(f"JSON key {name} must be of type {kind}")
    return body


def _route(
    route: str, call: Callable[[AdminService, dict[str, Any]], Awaitable[Any]]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await _parse(request, route)
        result = await call(request.app[SERVICE_KEY], body)
        if isinstance(result, str):
            return web.Response(text=result)
        return web.json_response(result)

    return handler


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except AdminError as e:
        return web.json_response({"error": e.message}, status=e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return web.json_response(
            {"error": f"{e.reason}: {request.method} {request.path}"}, status=e.status
        )
    except UNREACHABLE_ERRORS as e:
        # Not the request's fault, and not for good: 503 tells a client to retry later.
        where = request.app[STORE_KEY].location
        logger.warning(
            "%s %s: Redis at %s is unreachable: %s", request.method, request.path, where, e
        )
        return web.json_response(
            {"error": f"The cluster state store (Redis at {where}) is unreachable: {e}"},
            status=503,
        )
    except Exception:
        logger.exception("unexpected error in %s %s", request.method, request.path)
        return web.json_response({"error": "An unexpected error occurred"}, status=500)


async def ping(request: web.Request) -> web.Response:
    await request.app[STORE_KEY].ping()
    return web.Response(text="PONG")


async def prometheus_targets(request: web.Request) -> web.Response:
    """Prometheus HTTP service discovery: one target per replica that serves metrics."""
    targets = [
        {
            "targets": [replica.metrics_address],
            "labels": {
                "model": f"{replica.model_name}:{replica.model_version}",
                "replica_id": str(replica.replica_id),
            },
        }
        for replica in await request.app[STORE_KEY].list_replicas()
        if replica.metrics_address
    ]
    return web.json_response(targets)


def create_app(
    store: Store, frontend_sync_timeout_s: float = DEFAULT_FRONTEND_SYNC_TIMEOUT_S
) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[STORE_KEY] = store
    app[SERVICE_KEY] = AdminService(store, frontend_sync_timeout_s)
    routes = {
        "add_app": lambda s, b: s.add_app(
            b["name"], b["input_type"], b["default_output"], b["latency_slo_micros"]
        ),
        "delete_app": lambda s, b: s.delete_app(b["name"]),
        "add_model_links": lambda s, b: s.add_model_links(b["app_name"], b["model_names"]),
        "delete_model_links": lambda s, b: s.delete_model_links(b["app_name"], b["model_names"]),
        "add_model": lambda s, b: s.add_model(
            b["model_name"],
            b["model_version"],
            b["labels"],
            b["input_type"],
            b["container_name"],
            b["model_data_path"],
            b["batch_size"],
            b.get("make_current", True),
        ),
        "set_model_version": lambda s, b: s.set_model_version(b["model_name"], b["model_version"]),
        "delete_versioned_model": lambda s, b: s.delete_versioned_model(
            b["model_name"], b["model_version"]
        ),
        "get_all_applications": lambda s, b: s.get_all_applications(b["verbose"]),
        "get_application": lambda s, b: s.get_application(b["name"]),
        "get_linked_models": lambda s, b: s.get_linked_models(b["app_name"]),
        "get_all_models": lambda s, b: s.get_all_models(b["verbose"]),
        "get_model": lambda s, b: s.get_model(b["model_name"], b["model_version"]),
        "get_all_containers": lambda s, b: s.get_all_containers(b["verbose"]),
        "get_container": lambda s, b: s.get_container(
            b["model_name"], b["model_version"], b["replica_id"]
        ),
        "get_state": lambda s, b: s.get_state(b["app_name"]),
    }
    assert routes.keys() == _SCHEMAS.keys()
    app.router.add_get("/admin/ping", ping)
    app.router.add_get("/admin/prometheus_targets", prometheus_targets)
    for name, call in routes.items():
        app.router.add_post(f"/admin/{name}", _route(name, call))
    return app
