"""The python-closure deployer: a function (and what it closes over) served as a model."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

from clipper_admin.clipper_admin import ClipperConnection
from clipper_admin.container_manager import CLIPPER_TEMP_DIR
from model_containers.closure import FUNC_FILE, ClosureModel
from model_containers.manifest import ModelManifest

logger = logging.getLogger(__name__)


def save_python_function(name: str, func: Callable[..., Any]) -> str:
    """Writes func.pkl and the manifest into a fresh directory, and returns its path."""
    Path(CLIPPER_TEMP_DIR).mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(suffix="clipper", prefix=f"{name}-", dir=CLIPPER_TEMP_DIR))
    with (directory / FUNC_FILE).open("wb") as f:
        cloudpickle.dump(func, f)
    ModelManifest(runtime=ClosureModel.runtime_name).write(directory)
    logger.info("Saved function to %s", directory)
    return str(directory)


def create_endpoint(
    clipper_conn: ClipperConnection,
    name: str,
    input_type: str,
    func: Callable[..., Any],
    default_output: str = "None",
    version: object = 1,
    slo_micros: int = 3000000,
    labels: list[str] | None = None,
    registry: str | None = None,
    base_image: str = "default",
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
) -> None:
    """Registers an app, deploys func as a model of the same name, and links the two."""
    clipper_conn.register_application(name, input_type, default_output, slo_micros)
    deploy_python_closure(
        clipper_conn,
        name,
        version,
        input_type,
        func,
        base_image,
        labels,
        registry,
        num_replicas,
        batch_size,
        pkgs_to_install,
    )
    clipper_conn.link_model_to_app(name, name)


def deploy_python_closure(
    clipper_conn: ClipperConnection,
    name: str,
    version: object,
    input_type: str,
    func: Callable[..., Any],
    base_image: str = "default",
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
) -> None:
    """Deploys func as version `version` of model `name`; it becomes the current version."""
    model_dir = save_python_function(name, func)
    try:
        clipper_conn.build_and_deploy_model(
            name,
            version,
            input_type,
            model_dir,
            base_image,
            labels,
            registry,
            num_replicas,
            batch_size,
            pkgs_to_install,
        )
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
