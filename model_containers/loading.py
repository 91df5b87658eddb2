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
    assert manifest is not None
    if runtime == ClosureModel.runtime_name:
        return ClosureModel(model_dir)
    # Framework runtimes are imported only when used: a closure image has no torch.
    if runtime == "pytorch":
        from model_containers.torch_runtimes import PyTorchModel

        return PyTorchModel(model_dir, manifest)
    if runtime == "torchscript":
        from model_containers.torch_runtimes import TorchScriptModel

        return TorchScriptModel(model_dir, manifest)
    if runtime == "onnx":
        from model_containers.onnx_runtime import OnnxModel

        return OnnxModel(model_dir, manifest)
    raise ModelLoadError(f"Unknown model runtime '{runtime}' in {model_dir}")
