"""The benchmark's models as MLServer custom runtimes (run inside MLServer's own venv)."""

from __future__ import annotations

import base64
import sys

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

sys.path.insert(0, ".")
from bench.workloads import build_efficientnet, load_mlp, mlp_predict


class NoopRuntime(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("output", np.ones(len(x)))]
        )


class MlpRuntime(MLModel):
    async def load(self) -> bool:
        self._model = load_mlp()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        labels = np.asarray(mlp_predict(self._model, x))
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("output", labels)]
        )


class EfficientNetRuntime(MLModel):
    async def load(self) -> bool:
        self._model = build_efficientnet()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        import torch

        from model_containers.image import LITE_MEAN, LITE_STD, ImagePreprocessing

        preprocessing = ImagePreprocessing(mean=LITE_MEAN, std=LITE_STD)
        data = payload.inputs[0].data.root  # one base64 string per request in the batch
        pixels = np.stack([preprocessing.decode(base64.b64decode(item)) for item in data])
        with torch.inference_mode():
            labels = self._model(torch.from_numpy(pixels)).argmax(1).numpy()
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("output", labels)]
        )
