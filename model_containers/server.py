"""The replica's gRPC server: Predict and GetModelInfo over one model, plus gRPC health."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from clipper_protos import model_pb2, model_pb2_grpc
from management.input_types import InputType
from model_containers.batch import BatchContractError, decode_batch, encode_outputs
from model_containers.metrics import ReplicaMetrics
from model_containers.model import Model, model_raised
from model_containers.watchdog import PredictWatchdog

logger = logging.getLogger(__name__)

# gRPC's limit on one message either way, as the frontend's: a batch's reply larger than this
# fails with an explanation (see encode_outputs) instead of an opaque gRPC error.
MAX_MESSAGE_BYTES = 1024 * 1024 * 1024
# Each open call holds one of the server's threads: a frontend process keeps one PredictStream
# open per replica. Calls beyond this are refused (RESOURCE_EXHAUSTED) instead of waiting for
# a thread that a stream may hold for hours.
MAX_CONCURRENT_CALLS = 128


class ReplicaError(Exception):
    """A failure of one call, with the gRPC status it is reported as."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ErrorInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Maps every error a handler raises to a gRPC status, once, for all methods."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return inner(request, context)
            except ReplicaError as e:
                context.abort(e.code, e.message)
            except Exception as e:
                logger.exception("unexpected error in %s", handler_call_details.method)
                context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class ModelServicer(model_pb2_grpc.ModelServiceServicer):
    def __init__(
        self,
        model: Model,
        name: str,
        version: str,
        input_type: InputType,
        metrics: ReplicaMetrics | None = None,
        watchdog: PredictWatchdog | None = None,
    ) -> None:
        self._model = model
        self._metrics = metrics or ReplicaMetrics()
        self._watchdog: AbstractContextManager[None] = watchdog or nullcontext()
        self._info = model_pb2.ModelInfo(
            model_name=name,
            model_version=version,
            input_type=model_pb2.InputType.ValueType(int(input_type)),
            runtime=model.runtime_name,
        )
        self._input_type = input_type
        # One batch at a time, whichever frontend's stream it came on: a model need not be
        # thread-safe, and two batches at once would only share the replica's cores.
        self._predicting = threading.Lock()

    def Predict(
        self, request: model_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> model_pb2.PredictResponse:
        return self._predict(request)

    def PredictStream(
        self,
        request_iterator: Iterator[model_pb2.PredictRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[model_pb2.PredictResponse]:
        for request in request_iterator:
            try:
                yield self._predict(request)
            except ReplicaError as e:
                kind = (
                    model_pb2.BatchError.INVALID_ARGUMENT
                    if e.code == grpc.StatusCode.INVALID_ARGUMENT
                    else model_pb2.BatchError.INTERNAL
                )
                yield model_pb2.PredictResponse(
                    error=model_pb2.BatchError(kind=kind, message=e.message)
                )

    def _predict(self, request: model_pb2.PredictRequest) -> model_pb2.PredictResponse:
        if request.input_type != int(self._input_type):
            raise ReplicaError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"This replica serves {self._input_type.canonical_name} inputs, "
                f"got {InputType(request.input_type).canonical_name}",
            )
        metrics = self._metrics
        received = time.monotonic()
        try:
            inputs = decode_batch(self._input_type, request.inputs)
        except ValueError as e:
            raise ReplicaError(grpc.StatusCode.INVALID_ARGUMENT, f"Bad input batch: {e}") from e
        parsed = time.monotonic()
        metrics.parse_time_ms.observe((parsed - received) * 1e3)
        try:
            with self._predicting, self._watchdog:
                outputs = self._model.predict(inputs)
                # Clipper's closures could return any iterable of the right length, such as
                # a generator or a map: it is read here, as part of the model's own work.
                if not hasattr(outputs, "__len__") and hasattr(outputs, "__iter__"):
                    outputs = list(outputs)
        # BaseException too: a sys.exit() or KeyboardInterrupt from the model's own code would
        # otherwise end this gRPC worker with the call never answered, and the stream it came
        # on stuck for good. It fails its batch like any other error.
        except BaseException as e:
            logger.exception("predict raised on a batch of %d", len(request.inputs))
            metrics.failed_batches.inc()
            raise ReplicaError(grpc.StatusCode.INTERNAL, model_raised(e)) from e
        handled = time.monotonic()
        try:
            response = encode_outputs(outputs, len(request.inputs), MAX_MESSAGE_BYTES)
        except BatchContractError as e:
            logger.error("%s", e)
            metrics.failed_batches.inc()
            raise ReplicaError(grpc.StatusCode.INTERNAL, str(e)) from e
        metrics.handle_time_ms.observe((handled - parsed) * 1e3)
        metrics.end_to_end_latency_ms.observe((time.monotonic() - received) * 1e3)
        metrics.predictions.inc(len(request.inputs))
        metrics.batch_size.observe(len(request.inputs))
        return response

    def GetModelInfo(
        self, request: model_pb2.ModelInfoRequest, context: grpc.ServicerContext
    ) -> model_pb2.ModelInfo:
        return self._info


class ReplicaServer:
    """The gRPC server of one replica; start() binds and returns the port actually bound.

    grpcio's threaded server, not grpc.aio: each call runs in a thread of its own, so a batch
    is decoded, predicted and encoded in the thread that read it, with no hand-off between an
    event loop and a predict thread. On one core with a no-op model this cut the replica's CPU
    per batch by about a fifth (355 to 416 us against 448 to 594 us at c=1 over 4 alternating
    rounds), and a bare stream round trip took 367 against 450 us.
    """

    def __init__(self, servicer: ModelServicer, host: str, port: int) -> None:
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=MAX_CONCURRENT_CALLS, thread_name_prefix="rpc"),
            interceptors=[ErrorInterceptor()],
            maximum_concurrent_rpcs=MAX_CONCURRENT_CALLS,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        model_pb2_grpc.add_ModelServiceServicer_to_server(servicer, self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._address = f"{host}:{port}"

    async def start(self) -> int:
        port: int = self._server.add_insecure_port(self._address)
        self._server.start()
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        return port

    async def stop(self, grace_s: float) -> None:
        self._health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        # stop() returns at once; its event is set when the grace is over or every call ended.
        stopped = self._server.stop(grace_s)
        await asyncio.to_thread(stopped.wait)
