"""The PyTorch deployer, with Clipper's signatures: a module plus func(model, inputs)."""

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
from model_containers.manifest import ModelManifest
from model_containers.torch_runtimes import FUNC_FILE, MODULE_FILE, WEIGHTS_FILE, PyTorchModel


def save_pytorch_model(
    model_dir: Path, func: Callable[..., Any], pytorch_model: Any, intra_op_threads: int | None
) -> None:
    import torch

    try:
        with (model_dir / FUNC_FILE).open("wb") as f:
            cloudpickle.dump(func, f)
        torch.save(pytorch_model.state_dict(), model_dir / WEIGHTS_FILE)
        with (model_dir / MODULE_FILE).open("wb") as f:
            cloudpickle.dump(pytorch_model, f)
    except Exception as e:
        raise ClipperException(f"Error saving torch model: {e}") from e
    ModelManifest(
        runtime=PyTorchModel.runtime_name,
        options={
            "torch_version": str(torch.__version__).split("+")[0],
            "intra_op_threads": intra_op_threads,
        },
    ).write(model_dir)


def create_endpoint(
    clipper_conn: ClipperConnection,
    name: str,
    input_type: str,
    func: Callable[..., Any],
    pytorch_model: Any,
    default_output: str = "None",
    version: object = 1,
    slo_micros: int = 3000000,
    labels: list[str] | None = None,
    registry: str | None = None,
    base_image: str = "default",
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
    intra_op_threads: int | None = None,
) -> None:
    create_endpoint_with(
        clipper_conn,
        name,
        input_type,
        default_output,
        slo_micros,
        lambda: deploy_pytorch_model(
            clipper_conn,
            name,
            version,
            input_type,
            func,
            pytorch_model,
            base_image,
            labels,
            registry,
            num_replicas,
            batch_size,
            pkgs_to_install,
            intra_op_threads,
        ),
    )


def deploy_pytorch_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: object,
    input_type: str,
    func: Callable[..., Any],
    pytorch_model: Any,
    base_image: str = "default",
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
    intra_op_threads: int | None = None,
    make_current: bool = True,
) -> None:
    """Serves pytorch_model: each batch runs func(model, inputs) under torch.inference_mode()."""
    with model_directory(name) as model_dir:
        save_pytorch_model(model_dir, func, pytorch_model, intra_op_threads)
        Deployment(
            name, version, input_type, base_image, labels, registry, num_replicas, batch_size,
            pkgs_to_install, make_current,
        ).run(clipper_conn, model_dir)  # fmt: skip
