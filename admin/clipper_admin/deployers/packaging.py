"""What every deployer shares: a temporary model directory, its deploy, create_endpoint."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipper_admin.clipper_admin import ClipperConnection
from clipper_admin.container_manager import CLIPPER_TEMP_DIR
from clipper_admin.exceptions import ClipperException
from management.input_types import InputType, parse_input_type
from model_containers.image import ImagePreprocessing
from model_containers.manifest import ModelManifest
from model_containers.tensor import LABELS_FILE, OUTPUT_FORMATS

logger = logging.getLogger(__name__)


@contextmanager
def model_directory(name: str) -> Iterator[Path]:
    """A fresh directory for a model's files, removed once the model is deployed."""
    Path(CLIPPER_TEMP_DIR).mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(suffix="clipper", prefix=f"{name}-", dir=CLIPPER_TEMP_DIR))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Deployment:
    """Where and how a saved model directory is deployed: the arguments every deployer takes."""

    name: str
    version: object
    input_type: str
    base_image: str = "default"
    labels: list[str] | None = None
    registry: str | None = None
    num_replicas: int = 1
    batch_size: int = -1
    pkgs_to_install: list[str] | None = None
    make_current: bool = True

    def run(self, clipper_conn: ClipperConnection, model_dir: Path) -> None:
        logger.info("Deploying %s:%s from %s", self.name, self.version, model_dir)
        clipper_conn.build_and_deploy_model(
            self.name,
            self.version,
            self.input_type,
            str(model_dir),
            self.base_image,
            self.labels,
            self.registry,
            self.num_replicas,
            self.batch_size,
            self.pkgs_to_install,
            make_current=self.make_current,
        )


def create_endpoint_with(
    clipper_conn: ClipperConnection,
    name: str,
    input_type: str,
    default_output: str,
    slo_micros: int,
    deploy: Callable[[], None],
) -> None:
    """Registers an app, deploys a model of the same name with deploy(), and links the two."""
    clipper_conn.register_application(name, input_type, default_output, slo_micros)
    deploy()
    clipper_conn.link_model_to_app(name, name)


def write_tensor_manifest(
    model_dir: Path,
    runtime: str,
    input_type: str,
    input_shape: tuple[int, ...] | None,
    input_dtype: str,
    output: str,
    image: ImagePreprocessing | None,
    class_labels: list[str] | None,
    extra_options: dict[str, Any],
) -> None:
    """The manifest of a TorchScript or ONNX model, checked before anything is deployed."""
    if output not in OUTPUT_FORMATS:
        raise ClipperException(f"output must be one of {OUTPUT_FORMATS}, not {output!r}")
    if image is not None and parse_input_type(input_type) is not InputType.BYTES:
        raise ClipperException(f"An image model takes bytes inputs, not {input_type}")
    if output == "label" and not class_labels:
        raise ClipperException("output='label' needs class_labels")
    if class_labels:
        (model_dir / LABELS_FILE).write_text(json.dumps(list(class_labels)))
    options = {
        "input_shape": list(input_shape) if input_shape else None,
        "input_dtype": input_dtype,
        "output": output,
        "image": image.to_dict() if image else None,
        **extra_options,
    }
    ModelManifest(runtime=runtime, options=options).write(model_dir)
