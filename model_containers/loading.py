"""Picks the runtime for a model directory and loads the model."""

from __future__ import annotations

from pathlib import Path

from model_containers.closure import FUNC_FILE, ClosureModel
from model_containers.manifest import ModelManifest
from model_containers.model import Model, ModelLoadError


def create_model(model_dir: Path) -> Model:
    """The model for a directory, by its manifest's runtime (a bare func.pkl is a closure)."""
    manifest = ModelManifest.read(model_dir)
    runtime = manifest.runtime if manifest else None
    if runtime is None:
        if (model_dir / FUNC_FILE).exists():
            return ClosureModel(model_dir)
        raise ModelLoadError(f"{model_dir} has neither a manifest nor a {FUNC_FILE}")
    if runtime == ClosureModel.runtime_name:
        return ClosureModel(model_dir)
    raise ModelLoadError(f"Unknown model runtime '{runtime}' in {model_dir}")
