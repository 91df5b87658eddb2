"""PyTorch runtimes: a module with Clipper's func(model, inputs), and TorchScript programs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_containers.closure import load_pickled
from model_containers.cpu_budget import available_cpus
from model_containers.manifest import ModelManifest
from model_containers.model import Model, ModelLoadError
from model_containers.tensor import TensorModel

FUNC_FILE = "func.pkl"
MODULE_FILE = "pytorch_model.pkl"
WEIGHTS_FILE = "pytorch_weights.pkl"
TORCHSCRIPT_FILE = "model.pt"

logger = logging.getLogger(__name__)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ModelLoadError(
            "This model needs PyTorch, which this container does not have: deploy it with "
            "the pytorch base image (base_image='default') or pkgs_to_install=['torch']"
        ) from e
    return torch


def _set_threads(torch: Any, manifest: ModelManifest) -> None:
    # PyTorch counts the machine's cores: more threads than a CPU quota allows get throttled.
    threads = int(manifest.options.get("intra_op_threads") or available_cpus())
    torch.set_num_threads(threads)
    logger.info("PyTorch with %d intra-op threads", threads)


class PyTorchModel(Model):
    """Clipper's PyTorch contract: func(model, inputs) once per batch, in eval mode."""

    runtime_name = "pytorch"

    def __init__(self, model_dir: Path, manifest: ModelManifest) -> None:
        super().__init__()
        self._dir = model_dir
        self._manifest = manifest
        self._torch: Any = None
        self._module: Any = None
        self._func: Callable[[Any, Any], Sequence[Any]] | None = None

    def load(self) -> None:
        torch = self._torch = _import_torch()
        _set_threads(torch, self._manifest)
        module = load_pickled(self._dir / MODULE_FILE)
        state = torch.load(self._dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        module.eval()
        self._module = module
        self._func = load_pickled(self._dir / FUNC_FILE)
        self.ready = True

    def predict(self, inputs: Any) -> Sequence[Any]:
        assert self._func is not None, "predict() before load()"
        with self._torch.inference_mode():
            return self._func(self._module, inputs)


class TorchScriptModel(TensorModel):
    """A TorchScript program: no Python class is needed to load it; one call per batch."""

    runtime_name = "torchscript"

    def __init__(self, model_dir: Path, manifest: ModelManifest) -> None:
        super().__init__(model_dir, manifest)
        self._manifest = manifest
        self._torch: Any = None
        self._program: Any = None

    def load(self) -> None:
        torch = self._torch = _import_torch()
        _set_threads(torch, self._manifest)
        self._program = torch.jit.load(str(self.model_dir / TORCHSCRIPT_FILE), map_location="cpu")
        self._program.eval()
        self.warm_up()
        self.ready = True

    def run(self, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        torch = self._torch
        try:
            with torch.inference_mode():
                result = self._program(torch.from_numpy(np.ascontiguousarray(batch)))
        except RuntimeError as e:
            short = _without_script_traceback(e)
            if short is e:
                raise
            raise short from e
        if isinstance(result, (tuple, list)):
            result = result[0]
        array: np.ndarray[Any, Any] = result.detach().cpu().numpy()
        return array


_SCRIPT_FAILURE = "The following operation failed in the TorchScript interpreter."


def _without_script_traceback(error: RuntimeError) -> RuntimeError:
    """The interpreter's error without the traceback before it: the client gets the cause (the
    replica's log keeps the whole of it), not this machine's file paths."""
    text = str(error)
    if not text.startswith(_SCRIPT_FAILURE):
        return error
    last = text.strip().rsplit("\n", 1)[-1]
    kind, _, message = last.partition(": ")
    return RuntimeError(message if message and kind.endswith("Error") else last)
