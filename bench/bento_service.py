"""The benchmark's models as BentoML 1.4 services with adaptive batching (run in BentoML's venv).

    bentoml serve bench.bento_service:<Noop|Mlp|EfficientNet> --port <port>

BENCH_MAX_LATENCY_MS sets each API's max_latency_ms (the app's SLO in the benchmark).
"""

from __future__ import annotations

import base64
import os
import sys
from typing import Any

import bentoml  # type: ignore[import-not-found]
import numpy as np

sys.path.insert(0, ".")
from bench.workloads import build_efficientnet, load_mlp, mlp_predict

MAX_LATENCY_MS = int(os.environ.get("BENCH_MAX_LATENCY_MS", "60000"))
# One worker: the servers get one core. No access log (a line per request costs CPU). Batches
# up to 64, as MLServer is configured.
SERVICE: dict[str, Any] = {"workers": 1, "logging": {"access": {"enabled": False}}}
BATCHING: dict[str, Any] = {
    "batchable": True,
    "max_batch_size": 64,
    "max_latency_ms": MAX_LATENCY_MS,
}


@bentoml.service(**SERVICE)
class Noop:
    @bentoml.api(**BATCHING)
    def predict(self, input: list[list[float]]) -> list[int]:
        return [1] * len(input)


@bentoml.service(**SERVICE)
class Mlp:
    def __init__(self) -> None:
        self.model = load_mlp()

    @bentoml.api(**BATCHING)
    def predict(self, input: list[list[float]]) -> list[int]:
        return mlp_predict(self.model, np.asarray(input, dtype=np.float32))


@bentoml.service(**SERVICE)
class EfficientNet:
    def __init__(self) -> None:
        self.model = build_efficientnet()

    @bentoml.api(**BATCHING)
    def predict(self, input: list[str]) -> list[int]:
        import torch

        from model_containers.image import LITE_MEAN, LITE_STD, ImagePreprocessing

        preprocessing = ImagePreprocessing(mean=LITE_MEAN, std=LITE_STD)
        pixels = np.stack([preprocessing.decode(base64.b64decode(item)) for item in input])
        with torch.inference_mode():
            return [int(i) for i in self.model(torch.from_numpy(pixels)).argmax(1)]
