"""The ONNX runtime sizes its thread pool to the CPUs the replica may use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from model_containers.loading import create_model
from model_containers.manifest import ModelManifest
from model_containers.onnx_runtime import ONNX_FILE, OnnxModel


def _doubling_graph(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "g", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture
def one_cpu() -> Iterator[None]:
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(own)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)


def _load(model_dir: Path, **options: object) -> OnnxModel:
    _doubling_graph(model_dir / ONNX_FILE)
    ModelManifest(runtime="onnx", options={"input_type": "floats", **options}).write(model_dir)
    model = create_model(model_dir)
    assert isinstance(model, OnnxModel)
    model.load()
    return model


def test_a_replica_pinned_to_one_cpu_runs_one_thread(tmp_path: Path, one_cpu: None) -> None:
    model = _load(tmp_path)
    assert model.intra_op_threads == 1
    batch = np.ones((3, 2), dtype=np.float32)
    assert model.run(batch).tolist() == (batch * 2).tolist()


def test_intra_op_threads_from_the_deployer_win(tmp_path: Path, one_cpu: None) -> None:
    assert _load(tmp_path, intra_op_threads=3).intra_op_threads == 3
