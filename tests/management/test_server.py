"""The /admin/* routes on a real server (port 0) over a real Redis: texts, codes and validation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from clipper_admin.container_manager import find_unbound_port
from management.server import create_app
from management.store import Store
from tests.conftest import start_redis_server


class Admin:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def post(self, route: str, body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, str) else None
        async with self.session.post(
            f"{self.base}/admin/{route}", json=None if data else body, data=data
        ) as response:
            text = await response.text()
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, text

    async def ok(self, route: str, body: Any) -> Any:
        status, result = await self.post(route, body)
        assert status == 200, result
        return result

    async def error(self, route: str, body: Any) -> str:
        status, result = await self.post(route, body)
        assert status == 400, result
        message: str = result["error"]
        return message


@pytest.fixture
async def admin(clean_redis: tuple[str, int]) -> AsyncIterator[Admin]:
    redis = aioredis.Redis(host=clean_redis[0], port=clean_redis[1], decode_responses=True)
    runner = web.AppRunner(create_app(Store(redis)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        yield Admin(session, f"http://127.0.0.1:{port}")
    await runner.cleanup()
    await redis.aclose()


def _app(name: str = "a", input_type: str = "doubles") -> dict[str, Any]:
    return {
        "name": name,
        "input_type": input_type,
        "default_output": "d",
        "latency_slo_micros": 100000,
    }


def _model(name: str = "m", version: str = "1", input_type: str = "doubles") -> dict[str, Any]:
    return {
        "model_name": name,
        "model_version": version,
        "labels": ["l"],
        "input_type": input_type,
        "container_name": "img",
        "model_data_path": "DEPRECATED",
        "batch_size": -1,
    }


async def test_ping(admin: Admin) -> None:
    async with admin.session.get(f"{admin.base}/admin/ping") as response:
        assert response.status == 200 and await response.text() == "PONG"


async def test_app_lifecycle_texts(admin: Admin) -> None:
    assert await admin.ok("add_app", _app()) == "Successfully added application with name 'a'"
    # The same registration again is a no-op: a script run again against a kept state.
    assert await admin.ok("add_app", _app()) == "Application 'a' already exists with these settings"
    assert await admin.error("add_app", {**_app(), "default_output": "other"}) == (
        "application 'a' already exists with input_type 'doubles', default_output 'd' and "
        "latency_slo_micros 100000: unregister it first to register it with other settings"
    )
    assert (await admin.ok("get_application", {"name": "a"}))["default_output"] == "d"
    assert await admin.ok("get_application", {"name": "zz"}) == {}
    assert await admin.ok("delete_app", {"name": "a"}) == (
        "Successfully deleted application with name 'a'"
    )
    assert await admin.error("delete_app", {"name": "a"}) == "Application 'a' does not exist"


async def test_input_type_aliases_are_stored_canonically(admin: Admin) -> None:
    await admin.ok("add_app", _app("x", "d"))
    assert (await admin.ok("get_application", {"name": "x"}))["input_type"] == "doubles"
    assert await admin.ok("add_model", _model("m", "1", "Ints")) == (
        "Successfully added model with name 'm' and input type 'integers'"
    )
    error = await admin.error("add_app", _app("y", "tensors"))
    assert error.startswith("Invalid input type 'tensors'")


async def test_link_errors_in_clipper_order(admin: Admin) -> None:
    body = {"app_name": "a", "model_names": ["m"]}
    assert await admin.error("add_model_links", body) == "No app with name 'a' exists."
    await admin.ok("add_app", _app())
    assert await admin.error("add_model_links", body) == "No model with name 'm' exists."
    await admin.ok("add_model", _model("s", "1", "strings"))
    assert await admin.error("add_model_links", {"app_name": "a", "model_names": ["s"]}) == (
        "Model with name 's' has incompatible input_type 'strings'. Requested app to link to has "
        "input_type 'doubles'."
    )
    assert await admin.error("add_model_links", {"app_name": "a", "model_names": []}) == (
        "Please provide the name of the model that you want to link to the application 'a'"
    )
    await admin.ok("add_model", _model("m"))
    await admin.ok("add_model", _model("n"))
    assert await admin.error("add_model_links", {"app_name": "a", "model_names": ["m", "n"]}) == (
        "Applications must be linked with at most one model. Attempted to add links to 2 models."
    )
    assert await admin.ok("add_model_links", body) == (
        "Successfully linked model with name 'm' to application 'a'"
    )
    assert await admin.ok("add_model_links", body) == (
        "Model with name 'm' is already linked to application 'a'"
    )
    assert await admin.error("add_model_links", {"app_name": "a", "model_names": ["n"]}) == (
        "A model with name m is already linked to 'a'."
    )
    assert await admin.ok("get_linked_models", {"app_name": "a"}) == ["m"]
    assert await admin.error("delete_model_links", {"app_name": "a", "model_names": ["n"]}) == (
        "Cannot remove nonexistent link between app a and model n"
    )
    assert await admin.ok("delete_model_links", body) == "Success!"
    assert await admin.error("get_linked_models", {"app_name": "q"}) == (
        "No application with name 'q' exists."
    )


async def test_model_versions(admin: Admin) -> None:
    await admin.ok("add_model", _model("m", "1"))
    await admin.ok("add_model", _model("m", "2"))
    assert await admin.error("add_model", {**_model("m", "2"), "batch_size": 4}) == (
        "model with name 'm' and version '2' already exists with other settings: deploy it as a "
        "new version"
    )
    models = await admin.ok("get_all_models", {"verbose": True})
    assert [(m["model_version"], m["is_current_version"]) for m in models] == [
        ("1", False),
        ("2", True),
    ]
    assert models[0]["labels"] == ["l"]
    assert await admin.ok("set_model_version", {"model_name": "m", "model_version": "1"}) == (
        "Successfully set model with name 'm' to version '1'"
    )
    assert await admin.error("set_model_version", {"model_name": "m", "model_version": "9"}) == (
        "Cannot set non-existent version '9' for model with name 'm'"
    )
    assert await admin.error("set_model_version", {"model_name": "q", "model_version": "1"}) == (
        "Cannot set version for nonexistent model 'q'"
    )
    assert await admin.ok("get_all_models", {"verbose": False}) == ["m:1", "m:2"]
    # Added again as it was, a version becomes current again, as adding it made it first.
    assert await admin.ok("add_model", _model("m", "2")) == (
        "Model with name 'm' and version '2' already exists with these settings; it is the "
        "current version"
    )
    current = await admin.ok("get_all_models", {"verbose": True})
    assert [m["model_version"] for m in current if m["is_current_version"]] == ["2"]
    body = {"model_name": "m", "model_version": "1"}
    assert await admin.ok("delete_versioned_model", body) == (
        "Successfully deleted model with name 'm' and version '1'"
    )
    assert await admin.error("delete_versioned_model", body) == (
        "model with name 'm' and version '1' does not exist"
    )
    assert await admin.ok("get_model", body) == {}


async def test_a_version_added_without_make_current_leaves_the_current_one_serving(
    admin: Admin,
) -> None:
    # A model's first version is current whatever make_current says: nothing else could serve.
    assert await admin.ok("add_model", {**_model("m", "1"), "make_current": False}) == (
        "Successfully added model with name 'm' and input type 'doubles'"
    )
    assert await admin.ok("add_model", {**_model("m", "2"), "make_current": False}) == (
        "Successfully added model with name 'm' and input type 'doubles'; the current version "
        "is still '1'"
    )
    assert await admin.ok("add_model", {**_model("m", "2"), "make_current": False}) == (
        "Model with name 'm' and version '2' already exists with these settings; the current "
        "version is still '1'"
    )

    async def current() -> list[str]:
        models = await admin.ok("get_all_models", {"verbose": True})
        return [m["model_version"] for m in models if m["is_current_version"]]

    assert await current() == ["1"]
    await admin.ok("set_model_version", {"model_name": "m", "model_version": "2"})
    assert await current() == ["2"]
    await admin.ok("add_model", {**_model("m", "3"), "make_current": True})
    assert await current() == ["3"]
    error = await admin.error("add_model", {**_model("m", "4"), "make_current": "no"})
    assert error.startswith("Error parsing JSON: JSON key make_current must be of type boolean.")
    assert '"make_current" := boolean (optional)' in error


async def test_new_version_must_keep_the_linked_input_type(admin: Admin) -> None:
    await admin.ok("add_app", _app())
    await admin.ok("add_model", _model("m", "1"))
    await admin.ok("add_model_links", {"app_name": "a", "model_names": ["m"]})
    assert await admin.error("add_model", _model("m", "2", "strings")) == (
        "Model with name 'm' is already linked to app 'a' using input type 'doubles'. The input "
        "type you provided for a new version of the model, 'strings', is not compatible."
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "The batch size must be positive or DEFAULT_BATCH_SIZE, which is -1"),
        ("model_name", "a:b", "Invalid model name supplied: a:b. Contains one of: ',', ':'"),
        ("model_version", "1,2", "Invalid model version supplied: 1,2. Contains one of"),
        ("labels", ["x:y"], "Invalid label supplied: x:y. Contains one of"),
    ],
)
async def test_add_model_validation(admin: Admin, field: str, value: Any, message: str) -> None:
    assert (await admin.error("add_model", {**_model(), field: value})).startswith(message)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ("{oops", "JSON parse error"),
        ("[]", "must be a JSON object"),
        ({"name": "a"}, "does not have required key input_type"),
        ({**_app(), "latency_slo_micros": "100"}, "latency_slo_micros must be of type integer"),
        ({**_app(), "latency_slo_micros": True}, "latency_slo_micros must be of type integer"),
        ({**_app(), "latency_slo_micros": 2**40}, "out of the 32-bit integer range"),
        ({**_app(), "name": 5}, "name must be of type string"),
        # JSON escapes that decode to a lone surrogate: not text, which Redis could not store.
        ({**_app(), "default_output": "\ud800"}, "a string holds a lone surrogate"),
        ('{"name": "a\\udcff", "input_type": "doubles"}', "a string holds a lone surrogate"),
        pytest.param("[" * 100_000 + "]" * 100_000, "the document is nested too deeply", id="deep"),
    ],
)
async def test_malformed_requests_are_json_400(admin: Admin, body: Any, detail: str) -> None:
    message = await admin.error("add_app", body)
    assert message.startswith("Error parsing JSON: ")
    assert detail in message
    assert '"latency_slo_micros" := integer' in message


async def test_nonpositive_slo_is_rejected(admin: Admin) -> None:
    assert "must be a positive number" in await admin.error(
        "add_app", {**_app(), "latency_slo_micros": 0}
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "Application name must not be empty"),
        (".", "Application name '.' cannot be queried: HTTP clients resolve '.' and '..'"),
        ("..", "Application name '..' cannot be queried"),
        ("x" * 1025, "Application name is 1025 characters long, more than the 1024 that fit"),
    ],
)
async def test_app_names_no_client_could_query_are_refused(
    admin: Admin, name: str, message: str
) -> None:
    assert message in await admin.error("add_app", {**_app(), "name": name})
    assert await admin.ok("get_all_applications", {"verbose": False}) == []


async def test_app_names_are_otherwise_free(admin: Admin) -> None:
    for name in ("x" * 1024, "a/b", "a b", "...", "é", "a%2Fb"):
        assert await admin.ok("add_app", {**_app(), "name": name}) == (
            f"Successfully added application with name '{name}'"
        )


async def test_unknown_route_is_json_404(admin: Admin) -> None:
    status, body = await admin.post("no_such_route", {})
    assert status == 404 and "error" in body


async def test_listings(admin: Admin) -> None:
    await admin.ok("add_app", _app("b"))
    await admin.ok("add_app", _app("a"))
    assert await admin.ok("get_all_applications", {"verbose": False}) == ["a", "b"]
    apps = await admin.ok("get_all_applications", {"verbose": True})
    assert apps[0] == {
        "input_type": "doubles",
        "default_output": "d",
        "latency_slo_micros": 100000,
        "name": "a",
        "linked_models": [],
    }
    assert await admin.ok("get_all_containers", {"verbose": False}) == []
    assert await admin.ok("get_container", {
        "model_name": "m", "model_version": "1", "replica_id": 0}) == {}  # fmt: skip
    assert await admin.ok("get_state", {"app_name": "a", "uid": 0}) == "d"


async def test_admin_calls_answer_503_naming_redis_while_it_is_down(tmp_path: Path) -> None:
    port = find_unbound_port()
    process = await start_redis_server(port, tmp_path)
    redis = aioredis.Redis(port=port, decode_responses=True)
    runner = web.AppRunner(create_app(Store(redis)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            admin = Admin(session, base)
            await admin.ok("add_app", _app("kept"))
            process.terminate()
            await process.wait()

            status, body = await admin.post("get_all_applications", {"verbose": False})
            assert status == 503, body
            assert body["error"].startswith(
                f"The cluster state store (Redis at localhost:{port}) is unreachable: "
            ), body
            assert (await admin.post("add_app", _app("lost")))[0] == 503
            async with session.get(f"{base}/admin/ping") as response:
                assert response.status == 503
                assert "unreachable" in (await response.json())["error"]

            # Back on the same port, it is used again without restarting the service.
            process = await start_redis_server(port, tmp_path)
            assert await admin.ok("get_all_applications", {"verbose": False}) == ["kept"]
    finally:
        await runner.cleanup()
        await redis.aclose()
        process.terminate()
        await process.wait()
