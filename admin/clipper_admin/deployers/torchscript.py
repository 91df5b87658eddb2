"""The TorchScript deployer: a scripted or traced program, loaded without its Python class."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from clipper_admin.clipper_admin import ClipperConnection
from clipper_admin.deployers.packaging import (
    Deployment,
    create_endpoint_with,
    model_directory,
    write_tensor_manifest,
)
from clipper_admin.exceptions import ClipperException
from model_containers.image import ImagePreprocessing
from model_containers.torch_runtimes import TORCHSCRIPT_FILE, TorchScriptModel


def save_torchscript_model(model_dir: Path, model: Any) -> None:
    """Writes model.pt from a ScriptModule, an nn.Module (scripted here), or a saved .pt file."""
    import torch

    if isinstance(model, (str, Path)):
        shutil.copy(model, model_dir / TORCHSCRIPT_FILE)
        return
    try:
        program = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.script(model)
        torch.jit.save(program, str(model_dir / TORCHSCRIPT_FILE))
    except Exception as e:
        raise ClipperException(
            f"Error saving TorchScript model: {e}. Pass a torch.jit.trace() result instead"
        ) from e


def deploy_torchscript_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: object,
    input_type: str,
    model: Any,
    input_shape: tuple[int, ...] | None = None,
    input_dtype: str = "float32",
    output: str = "raw",
    image: ImagePreprocessing | None = None,
    class_labels: list[str] | None = None,
    base_image: str = "default",
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
    intra_op_threads: int | None = None,
    make_current: bool = True,
) -> None:
    """Serves a TorchScript program with one call per batch.

    Numeric queries are stacked into one tensor of input_dtype, reshaped to (n, *input_shape);
    with `image`, bytes queries are decoded and preprocessed instead. output is "raw" (the
    output row as JSON), "argmax" (the index of the largest score) or "label" (class_labels
    entry, class index and softmax confidence).
    """
    import torch

    with model_directory(name) as model_dir:
        save_torchscript_model(model_dir, model)
        write_tensor_manifest(
            model_dir,
            TorchScriptModel.runtime_name,
            input_type,
            input_shape,
            input_dtype,
            output,
            image,
            class_labels,
            {
                "torch_version": str(torch.__version__).split("+")[0],
                "intra_op_threads": intra_op_threads,
            },
        )
        Deployment(
            name, version, input_type, base_image, labels, registry, num_replicas, batch_size,
            pkgs_to_install, make_current,
        ).run(clipper_conn, model_dir)  # fmt: skip


def create_endpoint(
    clipper_conn: ClipperConnection,
    name: str,
    input_type: str,
    model: Any,
    default_output: str = "None",
    version: object = 1,
    slo_micros: int = 3000000,
    **deploy_kwargs: Any,
) -> None:
    create_endpoint_with(
        clipper_conn,
        name,
        input_type,
        default_output,
        slo_micros,
        lambda: deploy_torchscript_model(
            clipper_conn, name, version, input_type, model, **deploy_kwargs
        ),
    )
