"""The ONNX runtime: its thread pool sized to the replica's CPUs, and each input checked
against the graph's input shape, so that one malformed input fails alone."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from management.input_types import InputType
from model_containers.batch import decode_batch
from model_containers.loading import create_model
from model_containers.manifest import ModelManifest
from model_containers.model import ItemError
from model_containers.onnx_runtime import ONNX_FILE, OnnxModel


def _graph(path: Path, shape: list[int | None], op: str = "Mul", constant: int = 1) -> None:
    """y = x * 2 (Mul), or x + 1 for a constant of `constant` ones (Add)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    value = [2.0] if op == "Mul" else [1.0] * constant
    c = helper.make_tensor("c", TensorProto.FLOAT, [len(value)], value)
    graph = helper.make_graph([helper.make_node(op, ["x", "c"], ["y"])], "g", [x], [y], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _doubling_graph(path: Path) -> None:
    _graph(path, [None, 2])


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


def _model(model_dir: Path, graph: Callable[[Path], None]) -> OnnxModel:
    graph(model_dir / ONNX_FILE)
    ModelManifest(runtime="onnx", options={"input_type": "floats"}).write(model_dir)
    model = create_model(model_dir)
    assert isinstance(model, OnnxModel)
    model.load()
    return model


def _batch(*inputs: list[float]) -> Any:
    """A batch as the replica hands it over: stacked when equal in length, else ragged."""
    return decode_batch(InputType.FLOATS, [np.asarray(x, dtype="<f4").tobytes() for x in inputs])


def _messages(outputs: Sequence[Any]) -> list[str]:
    return [o.message if isinstance(o, ItemError) else o for o in outputs]


def test_an_input_the_graph_shape_rules_out_fails_alone(tmp_path: Path) -> None:
    model = _model(tmp_path, lambda p: _graph(p, [None, 2]))
    wrong = "input has 3 values; the model takes 2 (input shape [2])"
    outputs = model.predict(_batch([1, 2], [1, 2, 3], [3, 4]))
    assert _messages(outputs) == ["[2.0, 4.0]", wrong, "[6.0, 8.0]"]
    # Equal in length, and all wrong.
    assert _messages(model.predict(_batch([1, 2, 3], [4, 5, 6]))) == [wrong, wrong]


def test_flat_inputs_take_the_graphs_input_shape(tmp_path: Path) -> None:
    model = _model(tmp_path, lambda p: _graph(p, [None, 2, 2]))
    assert model.predict(_batch([1, 2, 3, 4])) == ["[[2.0, 4.0], [6.0, 8.0]]"]


def test_without_a_fixed_shape_each_length_runs_and_fails_alone(tmp_path: Path) -> None:
    # x + [1, 1]: any number of rows, but only 2 columns broadcast.
    model = _model(tmp_path, lambda p: _graph(p, [None, None], "Add", constant=2))
    outputs = model.predict(_batch([1, 2], [1, 2, 3], [5, 6]))
    assert outputs[0] == "[2.0, 3.0]"
    assert isinstance(outputs[1], ItemError)
    assert outputs[1].message.startswith("Model raised ")
    assert outputs[2] == "[6.0, 7.0]"
    # One length only, and it fails: the whole batch fails, as any model error does.
    with pytest.raises(Exception, match="Add"):
        model.predict(_batch([1, 2, 3]))
