"""The public port's listening site: connections read by PredictProtocol, kept alive, swept
when idle and drained at shutdown."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from query_frontend.predict_protocol import (
    KEEPALIVE_TIMEOUT_S,
    SWEEPS_PER_TIMEOUT,
    Connections,
    PredictCall,
    protocol_factory,
)


class PredictSite(web.BaseSite):
    """Listens on the public port with PredictProtocol, handing other requests to the runner's
    aiohttp server; stopping it drains the connections it still serves."""

    def __init__(
        self,
        runner: web.BaseRunner,
        predict: PredictCall,
        *,
        host: str | None = None,
        port: int = 0,
        sock: socket.socket | None = None,
        backlog: int = 1024,
        max_body_bytes: int,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
        shutdown_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._predict = predict
        self._host = host
        self._port = port
        self._sock = sock
        self._max_body_bytes = max_body_bytes
        self._keepalive_timeout_s = keepalive_timeout_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._connections = Connections()
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host or '0.0.0.0'}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        fallback = self._runner.server
        assert fallback is not None
        factory = protocol_factory(self._predict, fallback, self._connections, self._max_body_bytes)

        if self._sock is not None:
            self._server = await loop.create_server(factory, sock=self._sock, backlog=self._backlog)
        else:
            self._server = await loop.create_server(
                factory, self._host, self._port, backlog=self._backlog, reuse_address=True
            )
        self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()

        interval_s = self._keepalive_timeout_s / SWEEPS_PER_TIMEOUT

        def sweep() -> None:
            self._connections.close_idle(loop.time() - self._keepalive_timeout_s)
            self._sweep = loop.call_later(interval_s, sweep)

        self._sweep = loop.call_later(interval_s, sweep)

    async def stop(self) -> None:
        await super().stop()
        if self._sweep is not None:
            self._sweep.cancel()
        await self._connections.drain(self._shutdown_timeout_s)
