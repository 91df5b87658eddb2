"""The python-closure deployer: a function (and what it closes over) served as a model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

from clipper_admin.clipper_admin import ClipperConnection
from clipper_admin.deployers.packaging import (
    Deployment,
    create_endpoint_with,
    model_directory,
)
from clipper_admin.exceptions import ClipperException
from model_containers.closure import FUNC_FILE, ClosureModel
from model_containers.manifest import ModelManifest


def save_python_function(model_dir: Path, func: Callable[..., Any]) -> None:
    """Writes func.pkl (cloudpickle, with what func closes over) and the manifest."""
    try:
        with (model_dir / FUNC_FILE).open("wb") as f:
            cloudpickle.dump(func, f)
    except Exception as e:
        # cloudpickle names the object it could not pickle but not why that matters here.
        raise ClipperException(
            f"The function cannot be pickled, so it cannot be sent to its replicas: "
            f"{type(e).__name__}: {e}. Create locks, connections, threads and open files inside "
            f"the function (or in a module it imports) instead of closing over them"
        ) from e
    ModelManifest(runtime=ClosureModel.runtime_name).write(model_dir)


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
    create_endpoint_with(
        clipper_conn,
        name,
        input_type,
        default_output,
        slo_micros,
        lambda: deploy_python_closure(
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
        ),
    )


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
    make_current: bool = True,
) -> None:
    """Deploys func as version `version` of model `name`; it becomes the current version,
    unless make_current is False and the model has one (see ClipperConnection.deploy_model)."""
    with model_directory(name) as model_dir:
        save_python_function(model_dir, func)
        Deployment(
            name, version, input_type, base_image, labels, registry, num_replicas, batch_size,
            pkgs_to_install, make_current,
        ).run(clipper_conn, model_dir)  # fmt: skip
