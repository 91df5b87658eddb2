"""The ONNX runtime: an ONNX graph run by onnxruntime, one session call per batch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from model_containers.cpu_budget import available_cpus
from model_containers.manifest import ModelManifest
from model_containers.model import ModelLoadError
from model_containers.tensor import TensorModel

ONNX_FILE = "model.onnx"

logger = logging.getLogger(__name__)


class OnnxModel(TensorModel):
    runtime_name = "onnx"

    def __init__(self, model_dir: Path, manifest: ModelManifest) -> None:
        super().__init__(model_dir, manifest)
        # onnxruntime's default is one thread per physical core of the machine, whatever CPUs
        # this process may use; on a replica pinned to fewer cores its threads spin against each
        # other (a 1-core replica ran the benchmark's MLP at half speed with 2 threads).
        self.intra_op_threads = int(manifest.options.get("intra_op_threads") or available_cpus())
        self._output_name: str | None = manifest.options.get("output_name")
        self._session: Any = None
        self._input_name = ""

    def load(self) -> None:
        try:
            import onnxruntime
        except ImportError as e:
            raise ModelLoadError(
                "This model needs onnxruntime, which this container does not have: deploy it "
                "with the onnx base image (base_image='default') or pkgs_to_install=['onnxruntime']"
            ) from e
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        logger.info("onnxruntime with %d intra-op threads", self.intra_op_threads)
        self._session = onnxruntime.InferenceSession(
            str(self.model_dir / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"the ONNX graph must have one input, it has {len(inputs)}")
        self._input_name = inputs[0].name
        dims = inputs[0].shape
        # The graph's own shape past the batch axis, when it is fixed: each input is then
        # checked against it, and flat inputs are reshaped to it.
        fixed = len(dims) >= 2 and all(isinstance(d, int) and d > 0 for d in dims[1:])
        if self.input_shape is None and fixed:
            self.input_shape = tuple(dims[1:])
        outputs = [o.name for o in self._session.get_outputs()]
        if self._output_name is not None and self._output_name not in outputs:
            raise ModelLoadError(f"output {self._output_name!r} is not among {outputs}")
        self.warm_up()
        self.ready = True

    def run(self, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        names = [self._output_name] if self._output_name else None
        result = self._session.run(names, {self._input_name: batch})[0]
        return np.asarray(result)
