"""A replica's gRPC server, run in-process on port 0 and called over a real channel."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cloudpickle
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clipper_protos import model_pb2, model_pb2_grpc
from management.input_types import InputType
from model_containers.loading import create_model
from model_containers.manifest import ModelManifest
from model_containers.model import ItemError, ModelLoadError
from model_containers.server import ModelServicer, ReplicaServer


def _save(directory: Path, func: Callable[[Any], Any]) -> Path:
    with (directory / "func.pkl").open("wb") as f:
        cloudpickle.dump(func, f)
    ModelManifest(runtime="python_closure").write(directory)
    return directory


class Served:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.stub = model_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    servers: list[ReplicaServer] = []
    channels: list[grpc.aio.Channel] = []

    async def start(
        func: Callable[[Any], Any], input_type: InputType = InputType.DOUBLES
    ) -> Served:
        model = create_model(_save(tmp_path, func))
        model.load()
        server = ReplicaServer(ModelServicer(model, "m", "1", input_type), "127.0.0.1", 0)
        port = await server.start()
        servers.append(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return Served(channel)

    yield start
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop(0)


def _doubles(*rows: list[float]) -> model_pb2.PredictRequest:
    return model_pb2.PredictRequest(
        input_type=model_pb2.DOUBLES,
        inputs=[np.asarray(r, dtype="<f8").tobytes() for r in rows],
    )


async def test_batch_is_one_call_with_a_2d_array(serve: Callable[..., Any]) -> None:
    def model(xs: Any) -> list[str]:
        return [f"{xs.shape}:{xs.dtype}:{float(x.sum())}" for x in xs]

    stub = (await serve(model)).stub
    response = await stub.Predict(_doubles([1, 2], [3, 4], [5, 6]))
    assert [o.value for o in response.outputs] == [
        "(3, 2):float64:3.0",
        "(3, 2):float64:7.0",
        "(3, 2):float64:11.0",
    ]


async def test_ragged_batch_is_an_object_array(serve: Callable[..., Any]) -> None:
    stub = (await serve(lambda xs: [f"{xs.dtype}:{len(x)}" for x in xs])).stub
    response = await stub.Predict(_doubles([1], [2, 3]))
    assert [o.value for o in response.outputs] == ["object:1", "object:2"]


async def test_a_model_may_change_its_inputs_in_place(serve: Callable[..., Any]) -> None:
    def model(xs: Any) -> list[str]:
        xs -= 1.0
        return [str(float(x.sum())) for x in xs]

    stub = (await serve(model)).stub
    response = await stub.Predict(_doubles([1, 2], [3, 4]))
    assert [o.value for o in response.outputs] == ["1.0", "5.0"]


async def test_inputs_that_are_not_whole_values_are_invalid(serve: Callable[..., Any]) -> None:
    stub = (await serve(lambda xs: ["x"] * len(xs))).stub
    # Two 4-byte inputs make 8 bytes, one double's worth, but neither is a double.
    request = model_pb2.PredictRequest(input_type=model_pb2.DOUBLES, inputs=[b"abcd", b"efgh"])
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Predict(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a whole number of float64 values" in (e.value.details() or "")


async def test_outputs_are_stringified(serve: Callable[..., Any]) -> None:
    stub = (await serve(lambda xs: np.arange(len(xs)) * 1.5)).stub
    response = await stub.Predict(_doubles([1], [2]))
    assert [o.value for o in response.outputs] == ["0.0", "1.5"]


async def test_a_raising_model_fails_its_batch_and_keeps_serving(
    serve: Callable[..., Any],
) -> None:
    def model(xs: Any) -> list[float]:
        if xs[0][0] < 0:
            raise RuntimeError("boom")
        return [1.0] * len(xs)

    stub = (await serve(model)).stub
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Predict(_doubles([-1.0]))
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert e.value.details() == "Model raised RuntimeError: boom"
    response = await stub.Predict(_doubles([1.0]))
    assert response.outputs[0].value == "1.0"


@pytest.mark.parametrize(
    "error",
    [SystemExit(3), KeyboardInterrupt()],
    ids=["sys.exit", "KeyboardInterrupt"],
)
async def test_a_model_that_raises_even_a_base_exception_fails_only_its_batch_on_a_stream(
    serve: Callable[..., Any], error: BaseException
) -> None:
    def model(xs: Any) -> list[float]:
        if xs[0][0] < 0:
            raise error
        return [1.0] * len(xs)

    stub = (await serve(model)).stub
    stream = stub.PredictStream()
    await stream.write(_doubles([-1.0]))
    failed = await asyncio.wait_for(stream.read(), 5)
    assert (
        failed.error.message
        == {
            "SystemExit": "Model raised SystemExit: 3",
            "KeyboardInterrupt": "Model raised KeyboardInterrupt",
        }[type(error).__name__]
    )
    await stream.write(_doubles([1.0]))
    answered = await asyncio.wait_for(stream.read(), 5)
    assert answered.outputs[0].value == "1.0"
    await stream.done_writing()


@pytest.mark.parametrize(
    "result",
    [lambda n: (i * 1.5 for i in range(n)), lambda n: map(str, range(n)), lambda n: (1, 2)],
    ids=["generator", "map", "tuple"],
)
async def test_any_iterable_of_one_output_per_input_is_accepted(
    serve: Callable[..., Any], result: Callable[[int], Any]
) -> None:
    # As Clipper's closure containers took them: they stringified whatever the model returned.
    stub = (await serve(lambda xs: result(len(xs)))).stub
    response = await stub.Predict(_doubles([1.0], [2.0]))
    assert [o.value for o in response.outputs] == [str(v) for v in result(2)]


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (["only one"], "Expected model to return 2 outputs, found 1 outputs"),
        ("a string", "Model must return a list with one output per input; it returned str"),
        (None, "it returned NoneType"),
        (7, "it returned int"),
        (iter([1.0]), "Expected model to return 2 outputs, found 1 outputs"),
    ],
)
async def test_contract_violations_fail_the_batch(
    serve: Callable[..., Any], result: Any, message: str
) -> None:
    stub = (await serve(lambda xs: result)).stub
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Predict(_doubles([1.0], [2.0]))
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert message in (e.value.details() or "")


async def test_item_errors_fail_only_their_input(serve: Callable[..., Any]) -> None:
    stub = (await serve(lambda xs: [ItemError("bad") if x[0] < 0 else "ok" for x in xs])).stub
    response = await stub.Predict(_doubles([1.0], [-1.0], [2.0]))
    assert [o.WhichOneof("result") for o in response.outputs] == ["value", "error", "value"]
    assert response.outputs[1].error == "bad"


async def test_wrong_input_type_is_invalid_argument(serve: Callable[..., Any]) -> None:
    stub = (await serve(lambda xs: ["x"] * len(xs))).stub
    request = model_pb2.PredictRequest(input_type=model_pb2.STRINGS, inputs=[b"a"])
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Predict(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_model_info_and_health(serve: Callable[..., Any]) -> None:
    served = await serve(lambda xs: xs, InputType.STRINGS)
    stub = served.stub
    info = await stub.GetModelInfo(model_pb2.ModelInfoRequest())
    assert (info.model_name, info.model_version, info.input_type, info.runtime) == (
        "m",
        "1",
        model_pb2.STRINGS,
        "python_closure",
    )
    health = health_pb2_grpc.HealthStub(served.channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"neither a manifest nor a func\.pkl"):
        create_model(tmp_path)
    ModelManifest(runtime="tensorflow-1.x").write(tmp_path)
    with pytest.raises(ModelLoadError, match=r"Unknown model runtime 'tensorflow-1\.x'"):
        create_model(tmp_path)
    ModelManifest(runtime="python_closure").write(tmp_path)
    (tmp_path / "func.pkl").write_bytes(b"not a pickle")
    model = create_model(tmp_path)
    with pytest.raises(ModelLoadError, match=r"Loading func\.pkl failed with"):
        model.load()


async def test_the_stream_answers_in_order_and_survives_a_failed_batch(
    serve: Callable[..., Any],
) -> None:
    def model(xs: Any) -> list[float]:
        if xs[0][0] < 0:
            raise ValueError("negative")
        return [float(x[0]) * 2 for x in xs]

    served = await serve(model)
    stream = served.stub.PredictStream()
    answers = []
    for first in (1.0, -1.0, 3.0):
        await stream.write(_doubles([first], [first + 1]))
        answers.append(await stream.read())
    await stream.done_writing()
    assert [o.value for o in answers[0].outputs] == ["2.0", "4.0"]
    assert answers[1].error.kind == model_pb2.BatchError.INTERNAL
    assert answers[1].error.message == "Model raised ValueError: negative"
    assert not answers[1].outputs
    assert [o.value for o in answers[2].outputs] == ["6.0", "8.0"]


async def test_batches_from_several_streams_reach_the_model_one_at_a_time(
    serve: Callable[..., Any],
) -> None:
    # Several frontend processes each keep a stream open to the replica; the model (which
    # need not be thread-safe) must still see one batch at a time.
    def model(xs: Any) -> list[str]:
        started = time.monotonic()
        time.sleep(0.02)
        return [f"{started} {time.monotonic()}"] * len(xs)

    served = await serve(model)

    async def one_stream(first: float) -> list[tuple[float, float]]:
        stream = served.stub.PredictStream()
        spans = []
        for k in range(3):
            await stream.write(_doubles([first + k]))
            start, end = (await stream.read()).outputs[0].value.split()
            spans.append((float(start), float(end)))
        await stream.done_writing()
        return spans

    spans = sorted(s for one in await asyncio.gather(*map(one_stream, range(4))) for s in one)
    assert len(spans) == 12
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
