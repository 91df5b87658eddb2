"""ClipperConnection: Clipper's admin API, over the management REST API and a container manager."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import requests

from clipper_admin.container_manager import CONTAINERLESS_MODEL_IMAGE, ContainerManager
from clipper_admin.exceptions import ClipperException, UnconnectedException
from clipper_admin.version import __registry__, __version__
from management.input_types import parse_input_type

logger = logging.getLogger(__name__)

DEFAULT_PREDICTION_CACHE_SIZE_BYTES = 33554432
DEFAULT_LABEL: list[str] = []
_NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_HEADERS = {"Content-type": "application/json"}
_REQUEST_TIMEOUT_S = 60.0
_START_POLLS = 300


def _validate_versioned_model_name(name: str, version: object) -> None:
    if _NAME_PATTERN.match(name) is None:
        raise ClipperException(
            f"Invalid value: {name}: a model name must be a valid DNS-1123 subdomain. It must "
            "consist of lower case alphanumeric characters, '-' or '.', and must start and end "
            "with an alphanumeric character"
        )
    if _NAME_PATTERN.match(str(version)) is None:
        raise ClipperException(
            f"Invalid value: {version}: a model version must be a valid DNS-1123 subdomain. It "
            "must consist of lower case alphanumeric characters, '-' or '.', and must start and "
            "end with an alphanumeric character"
        )


def _validate_num_replicas(num_replicas: object) -> None:
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 0:
        raise ClipperException(f"num_replicas must be a whole number, 0 or more: {num_replicas!r}")


def _validate_deploy_settings(input_type: object, num_replicas: object) -> None:
    """What a deploy's replicas need, checked before anything is built or started: a wrong
    input type used to start replicas that exited at once, with the reason in their log."""
    try:
        parse_input_type(input_type if isinstance(input_type, str) else repr(input_type))
    except ValueError as e:
        raise ClipperException(str(e)) from None
    _validate_num_replicas(num_replicas)


class ClipperConnection:
    def __init__(self, container_manager: ContainerManager) -> None:
        self.connected = False
        self.cm = container_manager
        self.logger = logging.getLogger(f"{__name__}.{container_manager.cluster_identifier}")

    # Connection

    def start_clipper(
        self,
        query_frontend_image: str = f"{__registry__}/query_frontend:{__version__}",
        mgmt_frontend_image: str = f"{__registry__}/management_frontend:{__version__}",
        frontend_exporter_image: str = f"{__registry__}/frontend-exporter:{__version__}",
        cache_size: int = DEFAULT_PREDICTION_CACHE_SIZE_BYTES,
        qf_http_thread_pool_size: int = 1,
        qf_http_timeout_request: int = 5,
        qf_http_timeout_content: int = 300,
        num_frontend_replicas: int = 1,
    ) -> None:
        try:
            self.cm.start_clipper(
                query_frontend_image,
                mgmt_frontend_image,
                frontend_exporter_image,
                cache_size,
                qf_http_thread_pool_size,
                qf_http_timeout_request,
                qf_http_timeout_content,
                num_frontend_replicas,
            )
        except ClipperException as e:
            self.logger.warning("Error starting Clipper: %s", e.msg)
            raise
        self._wait_until_serving()
        self.connected = True
        self.logger.info("Clipper is running")

    def _wait_until_serving(self) -> None:
        checks = [
            f"http://{self.cm.get_query_addr()}/metrics",
            f"http://{self.cm.get_admin_addr()}/admin/ping",
        ]
        last_error: Exception | None = None
        for _ in range(_START_POLLS):
            try:
                if all(requests.get(url, timeout=5).status_code == 200 for url in checks):
                    return
            except requests.RequestException as e:
                last_error = e
            self.logger.info("Clipper still initializing.")
            time.sleep(1)
        if last_error is not None:
            raise last_error
        raise ClipperException("Clipper did not become ready")

    def connect(self) -> None:
        self.cm.connect()
        self.connected = True
        self.logger.info(
            "Successfully connected to Clipper cluster at %s", self.cm.get_query_addr()
        )

    def _require_connection(self) -> None:
        if not self.connected:
            raise UnconnectedException()

    def _post(self, route: str, body: dict[str, Any]) -> requests.Response:
        url = f"http://{self.cm.get_admin_addr()}/admin/{route}"
        try:
            response = requests.post(
                url, headers=_HEADERS, data=json.dumps(body), timeout=_REQUEST_TIMEOUT_S
            )
        except requests.RequestException as e:
            raise ClipperException(f"Could not reach the management service at {url}: {e}") from e
        if response.status_code != requests.codes.ok:
            msg = f"Received error status code: {response.status_code} and message: {response.text}"
            self.logger.error(msg)
            raise ClipperException(msg)
        return response

    # Applications

    def register_application(
        self, name: str, input_type: str, default_output: str, slo_micros: int
    ) -> None:
        self._require_connection()
        self._post(
            "add_app",
            {
                "name": name,
                "input_type": input_type,
                "default_output": default_output,
                "latency_slo_micros": slo_micros,
            },
        )
        self.logger.info("Application %s was successfully registered", name)

    def unregister_application(self, name: str) -> None:
        self._require_connection()
        self._post("delete_app", {"name": name})
        self.logger.info("Application %s was successfully unregistered", name)

    def delete_application(self, name: str) -> None:
        self.logger.warning("delete_application is deprecated: use unregister_application")
        self.unregister_application(name)

    def link_model_to_app(self, app_name: str, model_name: str) -> None:
        self._require_connection()
        self._post("add_model_links", {"app_name": app_name, "model_names": [model_name]})
        self.logger.info("Model %s is now linked to application %s", model_name, app_name)

    def unlink_model_from_app(self, app_name: str, model_name: str) -> None:
        self._require_connection()
        self._post("delete_model_links", {"app_name": app_name, "model_names": [model_name]})
        self.logger.info("Model %s is now removed from application %s", model_name, app_name)

    # Models

    def build_and_deploy_model(
        self,
        name: str,
        version: object,
        input_type: str,
        model_data_path: str,
        base_image: str,
        labels: list[str] | None = None,
        container_registry: str | None = None,
        num_replicas: int = 1,
        batch_size: int = -1,
        pkgs_to_install: list[str] | None = None,
        make_current: bool = True,
    ) -> None:
        self._require_connection()
        _validate_deploy_settings(input_type, num_replicas)
        image = self.build_model(
            name, version, model_data_path, base_image, container_registry, pkgs_to_install
        )
        # build_model checked the name and that no replica serves this version.
        self._deploy(
            name, str(version), input_type, image, labels, num_replicas, batch_size, make_current
        )

    def build_model(
        self,
        name: str,
        version: object,
        model_data_path: str,
        base_image: str,
        container_registry: str | None = None,
        pkgs_to_install: list[str] | None = None,
    ) -> str:
        version = str(version)
        _validate_versioned_model_name(name, version)
        if self.connected:
            # Building replaces the version's files (or image tag) that new replicas load.
            self._refuse_redeploying_served_version(name, version)
        return self.cm.build_model(
            name, version, model_data_path, base_image, container_registry, pkgs_to_install
        )

    def deploy_model(
        self,
        name: str,
        version: object,
        input_type: str,
        image: str,
        labels: list[str] | None = None,
        num_replicas: int = 1,
        batch_size: int = -1,
        make_current: bool = True,
    ) -> None:
        """Starts the version's replicas and registers it. It becomes the current version, as in
        Clipper, unless make_current is False and the model already has one: then the current
        version keeps serving, queries that name this version (`"version"`) reach it, and
        set_model_version switches to it."""
        self._require_connection()
        version = str(version)
        _validate_versioned_model_name(name, version)
        _validate_deploy_settings(input_type, num_replicas)
        self._refuse_redeploying_served_version(name, version)
        self._deploy(
            name, version, input_type, image, labels, num_replicas, batch_size, make_current
        )

    def _deploy(
        self,
        name: str,
        version: str,
        input_type: str,
        image: str,
        labels: list[str] | None,
        num_replicas: int,
        batch_size: int,
        make_current: bool,
    ) -> None:
        self.cm.deploy_model(name, version, input_type, image, num_replicas)
        self.register_model(name, version, input_type, image, labels, batch_size, make_current)
        self.logger.info("Done deploying model %s:%s.", name, version)

    def _refuse_redeploying_served_version(self, name: str, version: str) -> None:
        """A kept version may be deployed again (a script run again after stop_all), but not
        while replicas serve it: they would go on running the code they loaded, beside new ones
        running the code given now."""
        if self.get_model_info(name, version) is None:
            return
        running = self.cm.get_num_replicas(name, version)
        if running:
            raise ClipperException(
                f"model with name '{name}' and version '{version}' already exists and "
                f"{running} replica(s) serve it: deploy a new version, or stop this one first "
                "(stop_versioned_models)"
            )

    def register_model(
        self,
        name: str,
        version: object,
        input_type: str,
        image: str | None = None,
        labels: list[str] | None = None,
        batch_size: int = -1,
        make_current: bool = True,
    ) -> None:
        self._require_connection()
        body: dict[str, Any] = {
            "model_name": name,
            "model_version": str(version),
            "labels": labels or DEFAULT_LABEL,
            "input_type": input_type,
            "container_name": image or CONTAINERLESS_MODEL_IMAGE,
            "model_data_path": "DEPRECATED",
            "batch_size": batch_size,
        }
        if not make_current:  # only then: the body stays Clipper's for every other call
            body["make_current"] = False
        self._post("add_model", body)
        self.logger.info("Successfully registered model %s:%s", name, version)

    def get_current_model_version(self, name: str) -> str:
        self._require_connection()
        for model in self.get_all_models(verbose=True):
            if model["model_name"] == name and model["is_current_version"]:
                return str(model["model_version"])
        raise ClipperException(f"No versions of model {name} registered with Clipper")

    def get_num_replicas(self, name: str, version: object = None) -> int:
        self._require_connection()
        version = self.get_current_model_version(name) if version is None else str(version)
        return self.cm.get_num_replicas(name, version)

    def set_num_replicas(self, name: str, num_replicas: int, version: object = None) -> None:
        self._require_connection()
        _validate_num_replicas(num_replicas)
        version = self.get_current_model_version(name) if version is None else str(version)
        info = self.get_model_info(name, version)
        if info is None:
            raise ClipperException(
                f"Cannot add container for non-registered model {name}:{version}"
            )
        if info["container_name"] == CONTAINERLESS_MODEL_IMAGE:
            raise ClipperException(
                f"Cannot resize the replica set for containerless model {name}:{version}"
            )
        self.cm.set_num_replicas(
            name, version, info["input_type"], info["container_name"], num_replicas
        )

    def set_model_version(
        self, name: str, version: object, num_replicas: int | None = None
    ) -> None:
        self._require_connection()
        version = str(version)
        self._post("set_model_version", {"model_name": name, "model_version": version})
        self.logger.info("Successfully set model %s to version %s", name, version)
        if num_replicas is not None:
            self.set_num_replicas(name, num_replicas, version)

    # Listings

    def get_all_apps(self, verbose: bool = False) -> list[Any]:
        self._require_connection()
        result: list[Any] = self._post("get_all_applications", {"verbose": verbose}).json()
        return result

    def get_app_info(self, name: str) -> dict[str, Any] | None:
        self._require_connection()
        info: dict[str, Any] = self._post("get_application", {"name": name}).json()
        return info or None

    def get_linked_models(self, app_name: str) -> list[str]:
        self._require_connection()
        models: list[str] = self._post("get_linked_models", {"app_name": app_name}).json()
        return models

    def get_all_models(self, verbose: bool = False) -> list[Any]:
        self._require_connection()
        result: list[Any] = self._post("get_all_models", {"verbose": verbose}).json()
        return result

    def get_model_info(self, name: str, version: object) -> dict[str, Any] | None:
        self._require_connection()
        info: dict[str, Any] = self._post(
            "get_model", {"model_name": name, "model_version": str(version)}
        ).json()
        return info or None

    def get_all_model_replicas(self, verbose: bool = False) -> list[Any]:
        self._require_connection()
        result: list[Any] = self._post("get_all_containers", {"verbose": verbose}).json()
        return result

    def get_model_replica_info(
        self, name: str, version: object, replica_id: int
    ) -> dict[str, Any] | None:
        self._require_connection()
        info: dict[str, Any] = self._post(
            "get_container",
            {"model_name": name, "model_version": str(version), "replica_id": replica_id},
        ).json()
        return info or None

    def get_clipper_logs(self, logging_dir: str = "clipper_logs/") -> list[str]:
        self._require_connection()
        return self.cm.get_logs(logging_dir)

    def inspect_instance(self) -> dict[str, Any]:
        self._require_connection()
        url = f"http://{self.cm.get_query_addr()}/metrics"
        try:
            response = requests.get(url, timeout=_REQUEST_TIMEOUT_S)
        except requests.RequestException as e:
            raise ClipperException(f"Could not reach the query frontend at {url}: {e}") from e
        if response.status_code != requests.codes.ok:
            raise ClipperException(
                f"Received error status code: {response.status_code} and message: {response.text}"
            )
        metrics: dict[str, Any] = response.json()
        return metrics

    def get_query_addr(self) -> str:
        self._require_connection()
        return self.cm.get_query_addr()

    def get_metric_addr(self) -> str:
        self._require_connection()
        return self.cm.get_metric_addr()

    # Stopping

    def _unregister_versioned_models(self, model_versions_dict: dict[str, list[str]]) -> None:
        self._require_connection()
        for name, versions in model_versions_dict.items():
            for version in versions:
                self._post(
                    "delete_versioned_model",
                    {"model_name": name, "model_version": str(version)},
                )

    def stop_models(self, model_names: list[str]) -> None:
        self._require_connection()
        selected: dict[str, list[str]] = {}
        for model in self.get_all_models(verbose=True):
            if model["model_name"] in model_names:
                selected.setdefault(model["model_name"], []).append(model["model_version"])
        self.cm.stop_models(selected)
        self._unregister_versioned_models(selected)
        self.logger.info("Stopped all containers for these models and versions: %s", selected)

    def stop_versioned_models(self, model_versions_dict: dict[str, list[Any]]) -> None:
        self._require_connection()
        as_strings = {name: [str(v) for v in vs] for name, vs in model_versions_dict.items()}
        self.cm.stop_models(as_strings)
        self._unregister_versioned_models(as_strings)
        self.logger.info("Stopped all containers for these models and versions: %s", as_strings)

    def stop_inactive_model_versions(self, model_names: list[str]) -> None:
        self._require_connection()
        selected: dict[str, list[str]] = {}
        for model in self.get_all_models(verbose=True):
            if model["model_name"] in model_names and not model["is_current_version"]:
                selected.setdefault(model["model_name"], []).append(model["model_version"])
        self.cm.stop_models(selected)
        self._unregister_versioned_models(selected)
        self.logger.info("Stopped all containers for these models and versions: %s", selected)

    def stop_all_model_containers(self) -> None:
        self._require_connection()
        self.cm.stop_all_model_containers()
        selected: dict[str, list[str]] = {}
        for model in self.get_all_models(verbose=True):
            selected.setdefault(model["model_name"], []).append(model["model_version"])
        self._unregister_versioned_models(selected)
        self.logger.info("Stopped all Clipper model containers")

    def stop_all(self, graceful: bool = True) -> None:
        self.cm.stop_all(graceful=graceful)
        self.connected = False
        self.logger.info("Stopped all Clipper cluster and all model containers")

    # Local testing

    def test_predict_function(
        self, query: dict[str, Any], func: Callable[[Any], Any], input_type: str
    ) -> Any:
        """Calls func as a replica would, on this machine, without deploying it."""
        from clipper_admin.predict_check import run_predict_locally

        if not self.connected:
            try:
                self.connect()
            except ClipperException:
                pass
        return run_predict_locally(query, func, input_type)
