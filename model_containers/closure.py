"""The python-closure runtime: a cloudpickled function saved as func.pkl by the python deployer."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from model_containers.manifest import ModelManifest
from model_containers.model import Model, ModelLoadError

FUNC_FILE = "func.pkl"


def load_pickled(path: Path) -> Any:
    """Unpickles a cloudpickle file, naming the cause when this environment cannot load it."""
    try:
        with path.open("rb") as f:
            return cloudpickle.load(f)
    except ImportError as e:
        raise ModelLoadError(
            f"Loading {path.name} failed with {type(e).__name__}: {e}. The model needs a Python "
            f"package this container does not have; deploy it with pkgs_to_install=[...]"
        ) from e
    except Exception as e:
        manifest = ModelManifest.read(path.parent)
        mismatch = manifest.environment_mismatch() if manifest else None
        hint = f" ({mismatch})" if mismatch else ""
        raise ModelLoadError(
            f"Loading {path.name} failed with {type(e).__name__}: {e}{hint}"
        ) from e


class ClosureModel(Model):
    runtime_name = "python_closure"

    def __init__(self, model_dir: Path) -> None:
        super().__init__()
        self._model_dir = model_dir
        self._func: Callable[[Any], Sequence[Any]] | None = None

    def load(self) -> None:
        path = self._model_dir / FUNC_FILE
        if not path.exists():
            raise ModelLoadError(f"{path} does not exist: the model directory holds no closure")
        modules = self._model_dir / "modules"
        if modules.is_dir():
            sys.path.append(str(modules))
        func = load_pickled(path)
        if not callable(func):
            raise ModelLoadError(f"{path} holds a {type(func).__name__}, not a function")
        self._func = func
        self.ready = True

    def predict(self, inputs: Any) -> Sequence[Any]:
        assert self._func is not None, "predict() before load()"
        return self._func(inputs)
