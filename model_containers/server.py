"""The replica's gRPC server: Predict and GetModelInfo over one model, plus gRPC health."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from clipper_protos import model_pb2, model_pb2_grpc
from management.input_types import InputType
from model_containers.batch import BatchContractError, decode_batch, encode_outputs
from model_containers.metrics import ReplicaMetrics
from model_containers.model import Model

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class ReplicaError(Exception):
    """A failure of one call, with the gRPC status it is reported as."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps every error a handler raises to a gRPC status, once, for all methods."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except ReplicaError as e:
                await context.abort(e.code, e.message)
            except Exception as e:
                logger.exception("unexpected error in %s", handler_call_details.method)
                await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

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
    ) -> None:
        self._model = model
        self._metrics = metrics or ReplicaMetrics()
        self._info = model_pb2.ModelInfo(
            model_name=name,
            model_version=version,
            input_type=model_pb2.InputType.ValueType(int(input_type)),
            runtime=model.runtime_name,
        )
        self._input_type = input_type
        # One thread: predict runs off the event loop, one batch at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")

    async def Predict(
        self, request: model_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.PredictResponse:
        return await self._predict(request)

    async def PredictStream(
        self,
        request_iterator: AsyncIterator[model_pb2.PredictRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[model_pb2.PredictResponse]:
        async for request in request_iterator:
            try:
                yield await self._predict(request)
            except ReplicaError as e:
                kind = (
                    model_pb2.BatchError.INVALID_ARGUMENT
                    if e.code == grpc.StatusCode.INVALID_ARGUMENT
                    else model_pb2.BatchError.INTERNAL
                )
                yield model_pb2.PredictResponse(
                    error=model_pb2.BatchError(kind=kind, message=e.message)
                )

    async def _predict(self, request: model_pb2.PredictRequest) -> model_pb2.PredictResponse:
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
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self._model.predict, inputs)
        except Exception as e:
            logger.exception("predict raised on a batch of %d", len(request.inputs))
            metrics.failed_batches.inc()
            raise ReplicaError(
                grpc.StatusCode.INTERNAL, f"Model raised {type(e).__name__}: {e}"
            ) from e
        handled = time.monotonic()
        try:
            response = encode_outputs(outputs, len(request.inputs))
        except BatchContractError as e:
            logger.error("%s", e)
            metrics.failed_batches.inc()
            raise ReplicaError(grpc.StatusCode.INTERNAL, str(e)) from e
        metrics.handle_time_ms.observe((handled - parsed) * 1e3)
        metrics.end_to_end_latency_ms.observe((time.monotonic() - received) * 1e3)
        metrics.predictions.inc(len(request.inputs))
        metrics.batch_size.observe(len(request.inputs))
        return response

    async def GetModelInfo(
        self, request: model_pb2.ModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> model_pb2.ModelInfo:
        return self._info

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class ReplicaServer:
    """The gRPC server of one replica; start() binds and returns the port actually bound."""

    def __init__(self, servicer: ModelServicer, host: str, port: int) -> None:
        self._servicer = servicer
        self._server = grpc.aio.server(
            interceptors=[ErrorInterceptor()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        model_pb2_grpc.add_ModelServiceServicer_to_server(servicer, self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._address = f"{host}:{port}"

    async def start(self) -> int:
        port: int = self._server.add_insecure_port(self._address)
        await self._server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        return port

    async def stop(self, grace_s: float) -> None:
        await self._health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace_s)
        self._servicer.shutdown()
