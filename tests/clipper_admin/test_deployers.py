"""PyTorch, TorchScript, ONNX and image models deployed on a real local cluster: served outputs
match the same model called directly."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clipper_admin import ClipperConnection, ClipperException
from clipper_admin.deployers import onnx as onnx_deployer
from clipper_admin.deployers import pytorch as pytorch_deployer
from clipper_admin.deployers import torchscript as torchscript_deployer
from model_containers.image import ImagePreprocessing
from tests.conftest import new_connection, predict


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target


@pytest.fixture(scope="module")
def net(digits: tuple[np.ndarray, np.ndarray]) -> torch.nn.Module:
    x, y = digits
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClipperConnection]:
    connection = new_connection(tmp_path_factory.mktemp("deployers"), "deployers")
    connection.start_clipper()
    yield connection
    connection.stop_all(graceful=False)


def _batch(conn: ClipperConnection, app: str, inputs: list[Any]) -> list[dict[str, Any]]:
    predictions: list[dict[str, Any]] = predict(conn, app, {"input_batch": inputs})[
        "batch_predictions"
    ]
    assert not any(p["default"] for p in predictions), predictions
    return predictions


def test_pytorch_module_with_clipper_func(
    conn: ClipperConnection, net: torch.nn.Module, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits

    def func(model: torch.nn.Module, inputs: np.ndarray) -> list[int]:
        assert not model.training and torch.is_inference_mode_enabled()
        return model(torch.from_numpy(np.asarray(inputs, dtype=np.float32))).argmax(1).tolist()

    pytorch_deployer.create_endpoint(conn, "pt-digits", "floats", func, net, intra_op_threads=1)
    served = [p["output"] for p in _batch(conn, "pt-digits", x[:64].tolist())]
    with torch.inference_mode():
        assert served == net(torch.from_numpy(x[:64])).argmax(1).tolist()


def test_torchscript_batched_raw_outputs(
    conn: ClipperConnection, net: torch.nn.Module, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = digits
    program = torch.jit.trace(net, torch.zeros(1, 64))
    torchscript_deployer.create_endpoint(conn, "ts-digits", "floats", program, batch_size=32)
    served = np.array([p["output"] for p in _batch(conn, "ts-digits", x[:40].tolist())])
    with torch.inference_mode():
        direct = program(torch.from_numpy(x[:40])).numpy()
    np.testing.assert_allclose(served, direct, rtol=1e-5, atol=1e-6)


def test_torchscript_from_a_saved_file_with_input_shape(
    conn: ClipperConnection, digits: tuple[np.ndarray, np.ndarray], tmp_path: Any
) -> None:
    x, _ = digits
    torch.manual_seed(1)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10)
    ).eval()
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.trace(cnn, torch.zeros(1, 1, 8, 8)), str(path))
    torchscript_deployer.create_endpoint(
        conn, "ts-file", "doubles", str(path), input_shape=(1, 8, 8), output="argmax"
    )
    served = [p["output"] for p in _batch(conn, "ts-file", x[:30].astype(float).tolist())]
    with torch.inference_mode():
        assert served == cnn(torch.from_numpy(x[:30]).reshape(-1, 1, 8, 8)).argmax(1).tolist()


def test_sklearn_pipeline_as_onnx_in_one_call(
    conn: ClipperConnection, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    onnx_deployer.deploy_sklearn_model(conn, "sk-digits", 1, "floats", pipeline)
    conn.register_application("sk-digits", "floats", "-1", 3000000)
    conn.link_model_to_app("sk-digits", "sk-digits")
    served = [p["output"] for p in _batch(conn, "sk-digits", x[:100].tolist())]
    graph, _ = onnx_deployer.sklearn_to_onnx(pipeline)
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    direct = session.run(["label"], {session.get_inputs()[0].name: x[:100]})[0].tolist()
    assert served == direct
    assert np.mean(np.array(served) == pipeline.predict(x[:100])) >= 0.99


def test_a_malformed_input_gets_its_own_explained_default(
    conn: ClipperConnection, net: torch.nn.Module, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    program = torch.jit.trace(net, torch.zeros(1, 64))
    torchscript_deployer.create_endpoint(conn, "ts-bad-input", "floats", program, output="argmax")
    classifier = LogisticRegression(max_iter=200).fit(x, y)
    onnx_deployer.create_endpoint(conn, "onnx-bad-input", "floats", classifier)
    inputs = [x[0].tolist(), x[1].tolist()[:5], x[2].tolist()]
    for app, explanation in (
        # Without an input shape, the framework's own error, without TorchScript's traceback.
        ("ts-bad-input", "Model raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
        # The ONNX graph's input shape: the input is checked against it first.
        ("onnx-bad-input", "input has 5 values; the model takes 64 (input shape [64])"),
    ):
        first, bad, last = predict(conn, app, {"input_batch": inputs})["batch_predictions"]
        assert not first["default"] and not last["default"], (first, last)
        assert bad["default"]
        assert bad["default_explanation"].startswith(f"Model failed to predict: {explanation}")
        assert "Traceback" not in bad["default_explanation"]


def _png(pixels: np.ndarray, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_image_model_decodes_batches_and_explains_a_corrupt_image(
    conn: ClipperConnection,
) -> None:
    torch.manual_seed(2)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 5, stride=4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()
    preprocessing = ImagePreprocessing(crop_size=32, resize_size=40)
    torchscript_deployer.create_endpoint(
        conn,
        "images",
        "bytes",
        torch.jit.trace(cnn, torch.zeros(1, 3, 32, 32)),
        default_output="no-label",
        image=preprocessing,
        output="label",
        class_labels=["red", "green", "blue"],
        batch_size=8,
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(4)]
    encoded = [_png(images[0]), _png(images[1], "JPEG"), _png(images[2], "WEBP"), _png(images[3])]
    corrupt = base64.b64encode(b"\x89PNG but not really").decode()
    predictions = predict(conn, "images", {"input_batch": [*encoded[:2], corrupt, *encoded[2:]]})[
        "batch_predictions"
    ]
    bad = predictions.pop(2)
    assert bad["default"] is True and bad["output"] == "no-label"
    assert "cannot decode image (19 bytes): not a PNG, JPEG, WebP" in bad["default_explanation"]
    decoded = [preprocessing.decode(base64.b64decode(e)) for e in encoded]
    with torch.inference_mode():
        logits = cnn(torch.from_numpy(np.stack(decoded)))
    probabilities = torch.softmax(logits, 1)
    for prediction, row, p in zip(
        predictions, logits.argmax(1).tolist(), probabilities, strict=True
    ):
        assert prediction["default"] is False
        assert prediction["output"]["label"] == ["red", "green", "blue"][row]
        assert prediction["output"]["class_index"] == row
        assert prediction["output"]["confidence"] == pytest.approx(float(p[row]), abs=1e-5)


def test_tensor_deploy_options_are_checked_before_deploying(conn: ClipperConnection) -> None:
    program = torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    with pytest.raises(ClipperException, match="image model takes bytes"):
        torchscript_deployer.deploy_torchscript_model(
            conn, "bad", 1, "floats", program, image=ImagePreprocessing()
        )
    with pytest.raises(ClipperException, match="needs class_labels"):
        torchscript_deployer.deploy_torchscript_model(
            conn, "bad", 1, "floats", program, output="label"
        )
    with pytest.raises(ClipperException, match="Cannot deploy a dict as ONNX"):
        onnx_deployer.deploy_onnx_model(conn, "bad", 1, "floats", {"not": "a model"})
    assert not [m for m in conn.get_all_models() if m.startswith("bad:")]
