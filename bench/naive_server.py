"""The naive approach of the tutorials: FastAPI and uvicorn, the model called once per request.

Run in its own venv: python bench/naive_server.py <workload> <port>
"""

from __future__ import annotations

import base64
import sys
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request

sys.path.insert(0, ".")
from bench.workloads import build_efficientnet, load_mlp, mlp_predict

app = FastAPI()
state: dict[str, Any] = {}


@app.post("/{name}/predict")
async def predict(name: str, request: Request) -> dict[str, Any]:
    body = await request.json()
    workload = state["workload"]
    if workload == "noop":
        return {"output": 1, "default": False}
    if workload == "mlp":
        return {"output": mlp_predict(state["model"], np.asarray([body["input"]]))[0]}
    import torch

    from model_containers.image import LITE_MEAN, LITE_STD, ImagePreprocessing

    pixels = ImagePreprocessing(mean=LITE_MEAN, std=LITE_STD).decode(
        base64.b64decode(body["input"])
    )
    with torch.inference_mode():
        scores = state["model"](torch.from_numpy(pixels[None]))
    return {"output": int(scores.argmax(1)[0])}


def main() -> None:
    workload, port = sys.argv[1], int(sys.argv[2])
    state["workload"] = workload
    if workload == "mlp":
        state["model"] = load_mlp()
    elif workload == "efficientnet":
        sys.path.insert(0, "admin")
        state["model"] = build_efficientnet()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", workers=1)


if __name__ == "__main__":
    main()
