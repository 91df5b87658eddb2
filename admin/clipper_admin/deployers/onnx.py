"""The ONNX deployer: an ONNX graph, or a scikit-learn model via skl2onnx, on onnxruntime."""

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
from model_containers.onnx_runtime import ONNX_FILE, OnnxModel


def sklearn_to_onnx(estimator: Any) -> tuple[bytes, str | None]:
    """Converts a fitted scikit-learn estimator or pipeline; returns the graph and output name.

    Classifiers answer with their predicted label, like estimator.predict().
    """
    try:
        from skl2onnx import to_onnx
    except ImportError as e:
        raise ClipperException("Converting a scikit-learn model needs skl2onnx") from e
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise ClipperException("The scikit-learn model must be fitted before it is deployed")
    import numpy as np

    sample = np.zeros((1, int(n_features)), dtype=np.float32)
    try:
        graph = to_onnx(estimator, sample, options={"zipmap": False}, target_opset=17)
    except Exception as e:
        raise ClipperException(f"skl2onnx could not convert {type(estimator).__name__}: {e}") from e
    outputs = [o.name for o in graph.graph.output]
    return graph.SerializeToString(), "label" if "label" in outputs else None


def save_onnx_model(model_dir: Path, model: Any) -> str | None:
    """Writes model.onnx from a ModelProto, serialized bytes, a file, or a scikit-learn model."""
    if isinstance(model, (str, Path)):
        shutil.copy(model, model_dir / ONNX_FILE)
        return None
    if isinstance(model, bytes):
        (model_dir / ONNX_FILE).write_bytes(model)
        return None
    if hasattr(model, "SerializeToString"):
        (model_dir / ONNX_FILE).write_bytes(model.SerializeToString())
        return None
    if hasattr(model, "fit") and hasattr(model, "predict"):
        graph, output_name = sklearn_to_onnx(model)
        (model_dir / ONNX_FILE).write_bytes(graph)
        return output_name
    raise ClipperException(
        f"Cannot deploy a {type(model).__name__} as ONNX: pass an onnx.ModelProto, its bytes, "
        "a .onnx path, or a fitted scikit-learn model"
    )


def deploy_onnx_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: object,
    input_type: str,
    model: Any,
    input_shape: tuple[int, ...] | None = None,
    input_dtype: str = "float32",
    output: str = "raw",
    output_name: str | None = None,
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
    """Serves an ONNX graph with one session call per batch (see deploy_torchscript_model)."""
    import onnxruntime

    with model_directory(name) as model_dir:
        default_output_name = save_onnx_model(model_dir, model)
        write_tensor_manifest(
            model_dir,
            OnnxModel.runtime_name,
            input_type,
            input_shape,
            input_dtype,
            output,
            image,
            class_labels,
            {
                "output_name": output_name or default_output_name,
                "onnxruntime_version": onnxruntime.__version__,
                "intra_op_threads": intra_op_threads,
            },
        )
        Deployment(
            name, version, input_type, base_image, labels, registry, num_replicas, batch_size,
            pkgs_to_install, make_current,
        ).run(clipper_conn, model_dir)  # fmt: skip


def deploy_sklearn_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: object,
    input_type: str,
    estimator: Any,
    **deploy_kwargs: Any,
) -> None:
    """A fitted scikit-learn model or pipeline, converted to ONNX and served by onnxruntime."""
    deploy_onnx_model(clipper_conn, name, version, input_type, estimator, **deploy_kwargs)


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
        lambda: deploy_onnx_model(clipper_conn, name, version, input_type, model, **deploy_kwargs),
    )
