"""Every use of Sanic's internals, in one place: a Sanic upgrade that changes them breaks here,
and tests/test_adapter.py names what is missing.

revchat writes server frames straight to the transport and reads client frames as they are
parsed, where Sanic would use a task and a lock per socket; it pings every socket from one task;
and it bounds how long a request may take to arrive. For that it reaches past Sanic's public API
into: the connection's transport (``ws.io_proto.transport``), the websockets protocol object
(``ws.ws_proto``: ``send_ping``, ``data_to_send``, ``state``), the pong waiters (``ws.pings``),
the frame assembler (``ws.assembler``), ``end_connection`` and ``fail_connection``, and the HTTP
protocol's timer (``_http``, ``_time``, ``check_timeouts``, ``Stage``). Model: websockets'
``asyncio/connection.py``, where one method touches the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
import time
from typing import Any

from sanic.exceptions import RequestCancelled, RequestTimeout
from sanic.http.constants import Stage
from sanic.server.protocols.websocket_protocol import WebSocketProtocol
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from revchat.core.codes import NO_PONG, SLOW_CONSUMER

REQUIRED: dict[type, tuple[str, ...]] = {
    WebsocketImplProtocol: ("io_proto", "ws_proto", "pings", "assembler", "end_connection",
                            "fail_connection"),
    WebSocketProtocol: ("data_received", "check_timeouts", "connection_lost", "send", "websocket",
                        "transport", "request_timeout", "loop", "app", "_http", "_time", "_task",
                        "_callback_check_timeouts"),
}
"""The Sanic classes this module relies on and what it uses of each (tests/test_adapter.py
checks them against the installed Sanic)."""


_SHORT = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_frame(text: str) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455 §5.2), as servers send them."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return _SHORT.pack(0x81, 126, size) + payload
    return _LONG.pack(0x81, 127, size) + payload


class WebSocketSink:
    """The engine's view of one socket: its transport's write and buffer size, and a close."""

    __slots__ = ("_ws", "get_write_buffer_size", "write")

    def __init__(self, ws: WebsocketImplProtocol) -> None:
        transport = ws.io_proto.transport  # type: ignore[union-attr]
        assert transport is not None, "the handshake has completed"
        self._ws = ws
        self.write = transport.write
        self.get_write_buffer_size = transport.get_write_buffer_size

    def close(self, code: int, reason: str) -> None:
        self._ws.end_connection(code, reason)  # type: ignore[no-untyped-call]


class Pinger:
    """Pings every socket of this worker from one task, where Sanic would keep a task per socket
    (a few KB each, for 50,000 idle sockets): a ping every ``interval`` seconds, and a socket
    whose pong has not come ``timeout`` seconds after its ping is closed with 1011.
    """

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self._sockets: dict[WebsocketImplProtocol, tuple[float, asyncio.Future[None] | None]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="revchat-pinger")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def add(self, ws: WebsocketImplProtocol) -> None:
        self._sockets[ws] = (time.monotonic(), None)

    def discard(self, ws: WebsocketImplProtocol) -> None:
        self._sockets.pop(ws, None)

    async def _run(self) -> None:
        period = max(0.01, min(self.interval, self.timeout or self.interval) / 4)
        while True:
            await asyncio.sleep(period)
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        for ws, (sent, pong) in list(self._sockets.items()):
            if ws.ws_proto.state is not State.OPEN:
                continue  # closing: its handler discards it
            if pong is not None and not pong.done():
                if self.timeout and now - sent >= self.timeout:
                    del self._sockets[ws]
                    ws.fail_connection(*NO_PONG.args)
                continue
            if now - sent >= self.interval:
                self._sockets[ws] = (now, self._ping(ws))

    @staticmethod
    def _ping(ws: WebsocketImplProtocol) -> asyncio.Future[None] | None:
        transport = ws.io_proto.transport if ws.io_proto else None
        if transport is None or transport.is_closing():
            return None
        data = secrets.token_bytes(4)
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ws.pings[data] = pong  # Sanic resolves it when the pong arrives
        ws.ws_proto.send_ping(data)
        for chunk in ws.ws_proto.data_to_send():
            transport.write(chunk)
        return pong


def body_pending(http: Any) -> bool:
    """True while Sanic's ``Http`` has a request body still to read.

    ``request_body`` exists only from the connection's first request on; Sanic calls
    ``check_timeouts`` before that too, and swallows an AttributeError there by never checking
    the connection's timeouts again (a slowloris client sent its first bytes early).
    """
    return bool(getattr(http, "request_body", None))


class Protocol(WebSocketProtocol):
    """Sanic's WebSocket protocol, with two limits Sanic's own lacks.

    * A request's headers and body must all arrive within ``REQUEST_TIMEOUT`` of its first
      byte. Sanic's timers restart on every chunk, so a client dripping a header line (or a
      body byte) a second (slowloris) would hold the connection for hours.
    * A socket's own frames (pongs, the close frame) are written at once, as revchat's events
      are, and bounded the same way: beyond ``--queue-size`` unsent bytes the socket is closed
      (1013). Sanic would make each pong wait until the peer reads, in a task of its own, so a
      client that sends pings and reads nothing would grow the server's memory as fast as it
      can send.
    """

    __slots__ = ("_began",)

    def data_received(self, data: bytes) -> None:
        if self.websocket is None:
            http = getattr(self, "_http", None)
            if http is None or (http.stage is Stage.IDLE and not body_pending(http)):
                self._began = time.monotonic()  # the first bytes of a request (Sanic's clock)
        super().data_received(data)  # type: ignore[no-untyped-call]

    def check_timeouts(self) -> None:
        http = getattr(self, "_http", None)
        began = getattr(self, "_began", None)
        if http is not None and began is not None and self.websocket is None:
            if http.stage is Stage.REQUEST:
                self._time = min(self._time, began)  # time the headers from their first byte
            elif body_pending(http) and time.monotonic() - began > self.request_timeout:
                # The body comes in the handler's stage (and, after an answer, is read to its
                # end while idle), where Sanic's timer restarts on every byte too: the whole
                # request has the deadline of its headers.
                if http.stage is Stage.HANDLER and self._task:
                    http.exception = RequestTimeout("Request Timeout")
                    self._task.cancel()
                    self._callback_check_timeouts = self.loop.call_later(
                        max(0.1, self.request_timeout / 2), self.check_timeouts)
                elif self.transport is not None:
                    self.transport.abort()  # answered already; the rest is not worth waiting for
                return
        super().check_timeouts()  # type: ignore[no-untyped-call]

    def connection_lost(self, exc: Exception | None) -> None:
        # Sanic cancels the handler now, but a cancellation can be lost inside a Redis call (on
        # Python 3.11 redis-py's wait_for swallows it): then the handler goes on to wait for a
        # message that can never come, and its socket stays a member for good. Waking the inbox
        # ends it however the cancellation fared.
        inbox = getattr(self.websocket, "assembler", None)
        super().connection_lost(exc)  # type: ignore[no-untyped-call]
        if isinstance(inbox, Inbox):
            inbox.close()

    async def send(self, data: bytes) -> None:
        websocket, transport = self.websocket, self.transport
        if websocket is None or transport is None:
            await super().send(data)  # type: ignore[no-untyped-call]
            return
        if transport.is_closing():
            raise RequestCancelled()
        transport.write(data)
        if transport.get_write_buffer_size() > self.app.ctx.settings.queue_size:
            websocket.fail_connection(*SLOW_CONSUMER.args)


class Gone(Exception):
    """The socket's connection is lost (see :meth:`Inbox.close`)."""


class Inbox:
    """Stands in for Sanic's frame assembler, which holds one message at a time: when a client
    sends several messages and closes, Sanic closes the connection and cancels the handler with
    the rest still unread. Here every complete message is queued as soon as it is parsed, so the
    handler can still publish it after the socket is gone. Reading pauses while ``limit``
    messages wait, which bounds memory as Sanic's assembler did.
    """

    def __init__(self, ws: WebsocketImplProtocol, limit: int = 64) -> None:
        self._transport = ws.io_proto.transport  # type: ignore[union-attr]
        # A list and one waiter: an idle socket costs less than a deque and an asyncio.Event.
        self._messages: list[str | bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: list[bytes | bytearray | memoryview] = []
        self._text = True
        self._limit = limit
        self.full = False
        """Reading is paused because ``limit`` messages wait."""
        self._closed = self._transport is None or self._transport.is_closing()
        previous = ws.assembler
        ws.assembler = self  # type: ignore[assignment]
        # A message that arrived before the handler started waits in Sanic's assembler.
        if previous.message_complete.is_set():
            joiner: str | bytes = "" if previous.decoder is not None else b""
            self._push(joiner.join(previous.chunks))  # type: ignore[arg-type]
            previous.message_complete.clear()
            previous.chunks = []
            previous.message_fetched.set()

    async def put(self, frame: Frame) -> None:
        """Called by Sanic for each data frame (and each ping, which Sanic has answered), in
        order; never waits."""
        if frame.opcode > Opcode.BINARY:  # CONT, TEXT, BINARY are 0, 1, 2 (an IntEnum)
            return  # a ping: not a message
        if frame.opcode is not Opcode.CONT:
            self._text = frame.opcode is Opcode.TEXT
            self._chunks = []
        self._chunks.append(frame.data)
        if frame.fin:
            data = b"".join(self._chunks)
            self._chunks = []
            if self._text:
                try:
                    self._push(data.decode())
                    return
                except UnicodeDecodeError:
                    pass  # answered as a bad (binary) frame
            self._push(data)

    def _push(self, message: str | bytes) -> None:
        self._messages.append(message)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if len(self._messages) >= self._limit and not self.full and self._transport:
            self._transport.pause_reading()
            self.full = True

    def close(self) -> None:
        """The connection is lost: :meth:`get` raises :class:`Gone` once nothing is left."""
        self._closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> str | bytes:
        while not self._messages:
            if self._closed:
                raise Gone()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._messages.pop(0)
        if self.full and len(self._messages) < self._limit // 2 and self._transport:
            self.full = False
            self._transport.resume_reading()
        return message

    def drain(self) -> list[str | bytes]:
        """What is left once the socket is gone."""
        left = list(self._messages)
        self._messages.clear()
        return left
