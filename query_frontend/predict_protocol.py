"""The public port's HTTP/1.1 connections: predict requests answered straight from the socket,
every other request handed to the aiohttp application."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import httptools

from query_frontend.codec import BinaryInput, binary_input
from query_frontend.errors import BAD_REQUEST, QueryError, internal_error

logger = logging.getLogger(__name__)

# Answers one predict request: (app name, request body, its connection's transport, and what
# a binary body holds, or None for JSON) to the reply's JSON body; raises QueryError for a reply
# with an error status.
PredictCall = Callable[[str, bytes, asyncio.Transport, BinaryInput | None], Awaitable[bytes]]

# Requests read ahead of their answers on one connection (HTTP/1.1 pipelining) before the
# connection stops being read until the answers catch up.
MAX_PIPELINED = 16
# As aiohttp's own limits (8 KiB a line): a request line and headers longer than this get a 400.
MAX_HEAD_BYTES = 64 * 1024
# How long a connection ended by an error reply is still read, so that it is not reset.
LINGER_S = 2.0
# As aiohttp's own connections: an idle keep-alive connection is closed after this long. So is
# one that stopped sending in the middle of a request (aiohttp would wait for it for good): a
# client could otherwise hold connections open until the process runs out of them.
KEEPALIVE_TIMEOUT_S = 75.0
# Idle connections are looked for this many times per keep-alive timeout.
SWEEPS_PER_TIMEOUT = 5
_PREDICT_SUFFIX = b"/predict"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_JSON_HEAD = (
    b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n"
)
_KEEP_ALIVE = b"Connection: keep-alive\r\n\r\n"
_CLOSE = b"Connection: close\r\n\r\n"
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class _Date:
    """The Date header's value, formatted once a second rather than once a reply."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


class _Stop(Exception):
    """Raised from a parser callback: nothing more of this connection's bytes is parsed."""


class _Predict:
    __slots__ = ("app", "binary", "body", "http_1_0", "keep_alive")

    def __init__(
        self, app: str, body: bytes, binary: BinaryInput | None, keep_alive: bool, http_1_0: bool
    ) -> None:
        self.app = app
        self.body = body
        self.binary = binary
        self.keep_alive = keep_alive
        self.http_1_0 = http_1_0


class _Reply:
    """A reply made without the model (an error in the request itself); the connection ends."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _HandOver:
    """The rest of the connection goes to aiohttp, starting with these bytes."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


_Work = _Predict | _Reply | _HandOver


class Connections:
    """The site's open connections: closed when idle too long, and drained at shutdown."""

    def __init__(self) -> None:
        self._open: set[PredictProtocol] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, connection: PredictProtocol) -> None:
        self._open.add(connection)
        self._empty.clear()

    def discard(self, connection: PredictProtocol) -> None:
        self._open.discard(connection)
        if not self._open:
            self._empty.set()

    def close_idle(self, idle_since: float) -> None:
        for connection in list(self._open):
            connection.close_if_idle(idle_since)

    async def drain(self, timeout_s: float) -> None:
        """Ends every connection once its answers are written, or all of them after timeout_s."""
        for connection in list(self._open):
            connection.finish()
        try:
            await asyncio.wait_for(self._empty.wait(), timeout_s)
        except TimeoutError:
            logger.warning("%d connections still busy at shutdown: closed", len(self._open))
            for connection in list(self._open):
                connection.abort()


class PredictProtocol(asyncio.Protocol):
    """One client connection: predict requests are parsed (httptools) and answered here.

    The first request that is not a predict, and everything after it, goes to an aiohttp
    request handler that takes over the connection: the bytes of that request are passed on
    as they came, or, where the request began inside a read that also held the end of an
    earlier one and so its first byte is not known, rebuilt from what was parsed, with
    "Connection: close" so that aiohttp ends the connection after answering it.
    """

    def __init__(
        self,
        predict: PredictCall,
        fallback: Callable[[], asyncio.Protocol],
        connections: Connections,
        max_body_bytes: int,
        date: _Date,
    ) -> None:
        self._predict = predict
        self._fallback = fallback
        self._connections = connections
        self._max_body_bytes = max_body_bytes
        self._date = date
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        # The bytes of the message being parsed, from its first, while they are known: the
        # message began at the start of a read.
        self._raw: list[bytes] | None = None
        self._between_messages = True
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._head_bytes = 0
        # Bytes read while a request's line and headers were incomplete, after the read that
        # began them: httptools buffers an unfinished header itself, without a limit.
        self._in_head = False
        self._head_read_bytes = 0
        self._app: str | None = None
        self._binary: BinaryInput | None = None
        self._rebuild = False
        self._stopped = False  # a callback raised _Stop: the parser's error is expected
        self._work: deque[_Work] = deque()
        self._busy = False
        self._in_flight: asyncio.Task[None] | None = None
        self._ended = False  # nothing more is read: the last work is queued
        self._finishing = False  # shutdown: end the connection once its answers are written
        self._eof = False
        self._lingering = False
        self._reading_paused = False
        self._writing_paused = False
        self._last_active = self._loop.time()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        sock = self._transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        self._last_active = self._loop.time()
        if self._in_head:
            self._head_read_bytes += len(data)
            if self._head_read_bytes > MAX_HEAD_BYTES:
                self._end_with(_head_too_large())
                self._update_reading()
                return
        if self._between_messages:
            self._raw = [data]
        elif self._raw is not None:
            self._raw.append(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            # Not told by the error's __context__: raising sets it to the exception that this
            # thread is handling, if any, and a compiled coroutine suspended inside an except
            # block leaves its exception as the thread's until it resumes.
            if not self._stopped:
                raise
        except httptools.HttpParserError as e:
            self._end_with(_error_reply(QueryError(BAD_REQUEST, f"Malformed HTTP request: {e}")))
        self._update_reading()

    def eof_received(self) -> bool:
        if self._lingering:
            return False
        if self._busy or self._work:
            # A client may half-close after its last request and still read the answers.
            self._eof = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        self._work.clear()
        self._connections.discard(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._between_messages = False
        self._url.clear()
        self._headers.clear()
        self._body.clear()
        self._body_bytes = 0
        self._head_bytes = 0
        self._in_head = True
        self._head_read_bytes = 0
        self._app = None
        self._binary = None
        self._rebuild = False

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._end_with(_head_too_large())
            raise self._stop()

    def on_headers_complete(self) -> None:
        self._in_head = False
        # A request to upgrade the connection (curl --http2 asks for h2c) is aiohttp's: llhttp
        # would skip its body, and nothing here upgrades.
        is_post = self._parser.get_method() == b"POST" and not self._parser.should_upgrade()
        app = self._predict_app() if is_post else None
        if app is None:
            if self._raw is not None:
                self._hand_over_message()
                raise self._stop()
            # The message began after an earlier one in the same read: it is read whole and
            # rebuilt (see the class's docstring).
            self._rebuild = True
            return
        self._app = app
        self._raw = None
        expect_continue = False
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length" and value.isdigit() and int(value) > self._max_body_bytes:
                self._end_with(_too_large(self._max_body_bytes))
                raise self._stop()
            if lower == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
            if lower == b"content-type":
                self._binary = binary_input(value.decode("latin-1"), self._query())
        # Not while an earlier request's answer is due: it must go first, and the client
        # sends the body after its own wait without the 100.
        idle = not self._busy and not self._work
        if expect_continue and idle and self._parser.get_http_version() == "1.1":
            self._write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body_bytes and not self._rebuild:
            self._end_with(_too_large(self._max_body_bytes))
            raise self._stop()
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._between_messages = True
        self._raw = None
        if self._rebuild:
            self._end_with(_HandOver(self._rebuilt_message()))
            raise self._stop()
        assert self._app is not None
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._queue(
            _Predict(
                self._app,
                body,
                self._binary,
                self._parser.should_keep_alive(),
                self._parser.get_http_version() == "1.0",
            )
        )

    # The connection's work, one piece at a time, in the order the requests came

    def _queue(self, work: _Work) -> None:
        self._work.append(work)
        if not self._busy:
            self._next()

    def _next(self) -> None:
        while self._work and not self._busy:
            work = self._work.popleft()
            if isinstance(work, _Predict):
                self._busy = True
                # Held here: the loop itself keeps only a weak reference to a task.
                self._in_flight = self._loop.create_task(self._answer(work))
            elif isinstance(work, _Reply):
                self._write(work.data)
                self._linger()
            else:
                self._give_to_aiohttp(work.data)
        if not self._busy and not self._work and (self._eof or self._finishing):
            self._close()

    async def _answer(self, work: _Predict) -> None:
        transport = self._transport
        assert transport is not None
        try:
            body = await self._predict(work.app, work.body, transport, work.binary)
            status = 200
        except QueryError as e:
            body, status = e.body(), e.status
        except Exception:
            logger.exception("unexpected error in POST /%s/predict", work.app)
            error = internal_error()
            body, status = error.body(), error.status
        self._busy = False
        self._in_flight = None
        if transport.is_closing():
            return
        keep_alive = work.keep_alive and not self._finishing
        head = _JSON_HEAD % (status, _REASONS[status], len(body), self._date.value())
        if not keep_alive:
            head += _CLOSE
        elif work.http_1_0:
            head += _KEEP_ALIVE
        else:
            head += b"\r\n"
        transport.write(head + body)
        self._last_active = self._loop.time()
        if not keep_alive:
            self._close()
            return
        self._next()
        self._update_reading()

    # Ways a connection ends, or leaves this protocol

    def _stop(self) -> _Stop:
        """What a parser callback raises to stop parsing this connection's bytes."""
        self._stopped = True
        return _Stop()

    def _end_with(self, work: _Work) -> None:
        """Queues the connection's last work: nothing after it is read."""
        self._ended = True
        self._queue(work)

    def _hand_over_message(self) -> None:
        assert self._raw is not None
        self._end_with(_HandOver(b"".join(self._raw)))

    def _give_to_aiohttp(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._connections.discard(self)
        handler = self._fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        if data:
            handler.data_received(data)
        if self._eof:
            handler.eof_received()

    def _rebuilt_message(self) -> bytes:
        major_minor = self._parser.get_http_version()
        head = [
            self._parser.get_method() + b" " + b"".join(self._url) + f" HTTP/{major_minor}".encode()
        ]
        for name, value in self._headers:
            lower = name.lower()
            if lower not in (b"connection", b"content-length", b"transfer-encoding", b"keep-alive"):
                head.append(name + b": " + value)
        body = b"".join(self._body)
        head.append(b"Content-Length: %d" % len(body))
        head.append(b"Connection: close")
        return b"\r\n".join(head) + b"\r\n\r\n" + body

    def _query(self) -> str:
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        parts = url.split(b"?", 1)
        return parts[1].decode("latin-1") if len(parts) == 2 else ""

    def _predict_app(self) -> str | None:
        """The app a POST to this URL predicts for, or None for any other route."""
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        path = url.split(b"?", 1)[0]
        if path.endswith(b"/"):
            path = path[:-1]
        # Compiled by mypyc, a bytes slice that ends before it starts raises SystemError where
        # Python gives b"": "/predict" and "//predict" name no app, and must not reach the slice.
        end = len(path) - len(_PREDICT_SUFFIX)
        if end <= 1 or not path.startswith(b"/") or not path.endswith(_PREDICT_SUFFIX):
            return None
        app = path[1:end]
        if b"/" in app:
            return None
        try:
            name = app.decode()
        except UnicodeDecodeError:
            return None
        return unquote(name) if "%" in name else name

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _linger(self) -> None:
        """Ends the connection after an error reply, reading (and dropping) what the client
        still sends for a while: closed with its bytes unread, the socket would be reset, and
        the reset can destroy the reply before the client reads it."""
        transport = self._transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            self._close()
            return
        self._ended = True
        self._lingering = True
        transport.write_eof()
        self._update_reading()
        self._loop.call_later(LINGER_S, self._close)

    def _close(self) -> None:
        self._ended = True
        if self._transport is not None:
            self._transport.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or transport.get_protocol() is not self:
            return
        pause = self._writing_paused or len(self._work) >= MAX_PIPELINED
        pause = pause or (self._ended and not self._lingering)
        if pause and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not pause and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    # Called by Connections

    def close_if_idle(self, idle_since: float) -> None:
        # Between requests or within one: a request that stops arriving is as idle.
        idle = not self._busy and not self._work
        if idle and self._last_active < idle_since:
            self._close()

    def finish(self) -> None:
        self._finishing = True
        if not self._busy and not self._work:
            self._close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _error_reply(error: QueryError) -> _Reply:
    body = error.body()
    head = _JSON_HEAD % (error.status, _REASONS[error.status], len(body), _Date().value())
    return _Reply(head + _CLOSE + body)


def _head_too_large() -> _Reply:
    cause = f"The request line and headers are over {MAX_HEAD_BYTES} bytes"
    return _error_reply(QueryError(BAD_REQUEST, cause))


def _too_large(max_body_bytes: int) -> _Reply:
    cause = f"The request body is over {max_body_bytes} bytes"
    return _error_reply(QueryError("Request Entity Too Large", cause, status=413))


def protocol_factory(
    predict: PredictCall,
    fallback: Callable[[], asyncio.Protocol],
    connections: Connections,
    max_body_bytes: int,
) -> Callable[[], PredictProtocol]:
    """What the listening server calls for each new connection."""
    date = _Date()

    def factory() -> PredictProtocol:
        return PredictProtocol(predict, fallback, connections, max_body_bytes, date)

    return factory
