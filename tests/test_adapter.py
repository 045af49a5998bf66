"""The Sanic adapter's contract: what revchat/web/adapter.py uses of Sanic's internals is still
there in the installed Sanic. When an upgrade removes one, this fails and names it, rather than
pings or message intake breaking with no test saying why."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
import sanic
from hypothesis import given, settings
from hypothesis import strategies as st
from sanic.http.constants import Stage
from sanic.http.http1 import Http
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from revchat.web import adapter
from tests.support.live import Live


def defines(cls: type, attribute: str) -> bool:
    """``cls`` has ``attribute`` on the class, in a __slots__, or sets it in an __init__."""
    for klass in cls.__mro__:
        if attribute in vars(klass) or attribute in getattr(klass, "__slots__", ()):
            return True
        init = vars(klass).get("__init__")
        if init is not None and f"self.{attribute} =" in inspect.getsource(init):
            return True
    return False


@pytest.mark.parametrize("cls", sorted(adapter.REQUIRED, key=lambda c: c.__name__),
                         ids=lambda c: c.__name__)
def test_the_sanic_classes_have_what_the_adapter_uses(cls: type) -> None:
    missing = [a for a in adapter.REQUIRED[cls] if not defines(cls, a)]
    assert missing == [], f"Sanic {sanic.__version__}'s {cls.__name__} no longer has {missing}"


def test_sanic_http_has_the_stages_and_fields_the_timer_reads() -> None:
    """The request timer reads Http.stage (IDLE, REQUEST, HANDLER), request_body and exception."""
    assert {"IDLE", "REQUEST", "HANDLER"} <= {stage.name for stage in Stage}
    missing = [a for a in ("stage", "request_body", "exception") if a not in Http.__slots__]
    assert missing == [], f"Sanic {sanic.__version__}'s Http no longer has {missing}"


async def test_a_live_socket_has_what_the_adapter_uses(live: Live) -> None:
    """On a real upgraded socket: the inbox took the place of Sanic's assembler, the transport is
    reachable, and a ping the Pinger writes is answered by a pong that Sanic resolves."""
    seen: list[Any] = []
    real = adapter.Inbox.__init__

    def spy(self: adapter.Inbox, ws: Any, limit: int = 64) -> None:
        seen.append(ws)
        real(self, ws, limit)

    adapter.Inbox.__init__ = spy  # type: ignore[method-assign]
    try:
        cookie = await live.sign_in("Ann")
        async with live.connect("lobby", cookie) as client:
            await client.recv()  # the welcome: the handler has made its inbox
            ws = seen[0]
            assert isinstance(ws.assembler, adapter.Inbox)
            assert ws.io_proto.transport is not None
            pong = adapter.Pinger._ping(ws)
            assert pong is not None, "the Pinger could not write a ping"
            await asyncio.wait_for(pong, 10)
    finally:
        adapter.Inbox.__init__ = real  # type: ignore[method-assign]


# -- the pure parts, without a server ---------------------------------------------------------


@given(st.text(max_size=70_000))
@settings(max_examples=60)
def test_text_frame_is_what_websockets_reads(text: str) -> None:
    """Every text, of every length class (7-bit, 16-bit and 64-bit sizes), framed as a server
    frame that the websockets library parses back to the same text."""
    data = adapter.text_frame(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    else:  # pragma: no cover - the frame was incomplete
        raise AssertionError("websockets wanted more bytes than the frame has")
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert frame.data.decode() == text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class FakeTransport:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1

    def is_closing(self) -> bool:
        return False


class FakeAssembler:
    """What Inbox reads of Sanic's assembler when a message came before the handler started."""

    def __init__(self, chunks: list[str] | None = None) -> None:
        self.message_complete = asyncio.Event()
        self.message_fetched = asyncio.Event()
        self.decoder = object()
        self.chunks: list[str] = chunks or []
        if chunks:
            self.message_complete.set()


class FakeSocket:
    def __init__(self, assembler: FakeAssembler) -> None:
        self.io_proto = type("Proto", (), {"transport": FakeTransport()})()
        self.assembler: Any = assembler


def data(opcode: Opcode, payload: bytes, fin: bool = True) -> Frame:
    return Frame(opcode, payload, fin=fin)


async def test_inbox_queues_whole_messages_in_order_and_pauses_when_full() -> None:
    """Fragments are joined, pings are not messages, invalid UTF-8 comes through as bytes, a
    message Sanic's assembler already held comes first, and reading pauses at the limit and
    resumes at half of it."""
    ws = FakeSocket(FakeAssembler(["ear", "ly"]))
    inbox = adapter.Inbox(ws, limit=4)  # type: ignore[arg-type]
    assert ws.assembler is inbox
    await inbox.put(data(Opcode.TEXT, b"hel", fin=False))
    await inbox.put(data(Opcode.PING, b"x"))
    await inbox.put(data(Opcode.CONT, b"lo"))
    await inbox.put(data(Opcode.TEXT, b"\xff"))
    transport = ws.io_proto.transport
    assert transport.paused == 0
    await inbox.put(data(Opcode.BINARY, b"\x00"))
    assert inbox.full and transport.paused == 1
    assert [await inbox.get() for _ in range(3)] == ["early", "hello", b"\xff"]
    assert transport.resumed == 1 and not inbox.full
    inbox.close()
    assert await inbox.get() == b"\x00"
    with pytest.raises(adapter.Gone):
        await inbox.get()


async def test_a_closed_inbox_wakes_a_waiting_reader() -> None:
    """A handler waiting for a message ends (Gone) when the connection is lost."""
    inbox = adapter.Inbox(FakeSocket(FakeAssembler()))  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)  # one loop pass: it is now waiting (Gone either way)
    inbox.close()
    with pytest.raises(adapter.Gone):
        await waiting
