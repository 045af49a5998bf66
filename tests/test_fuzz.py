"""Fuzzing every client input path against a real `revchat serve` (the console script, so its
log can be read for tracebacks): socket frames, cookies, query strings, forms, room names and
slow connections. Whatever one client sends, it is answered as docs/protocol.md says, and the server stays
up, quick and uncorrupted for everyone else.

The socket corpus comes from a seeded generator, so every run sends the same frames; the HTTP
inputs come from Hypothesis (derandomized under CI, see ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import select
import socket
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from revchat.core.sessions import Signer, read_session
from tests.support.live import connect, frame, frame_of, say, sign_in
from tests.support.process import Served, serve

KEY = "k" * 40
MAX_LENGTH = 2000
"""--max-message-length's default: the longest text a say may carry."""
SESSION = "revchat_session"
LOG_NEEDLES = ("Traceback", "Exception", "unexpected error")


# -- the server and plain HTTP -------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One real server for the module, with the per-user limits out of the fuzzer's way."""
    tmp = tmp_path_factory.mktemp("fuzz")
    with serve("--history", f"sqlite:///{tmp}/h.db", "--data-dir", str(tmp), "--secret-key", KEY,
               "--frame-rate", "0", "--rate", "1000", "--burst", "1000", "--user-sockets", "0",
               "--signin-rate", "0", log=tmp / "server.log") as served:
        yield served


def assert_log_clean(server: Served) -> None:
    """The server's log (stdout and stderr) holds no traceback and no unexpected error."""
    output = server.output()
    for needle in LOG_NEEDLES:
        at = output.find(needle)
        assert at < 0, f"{needle!r} in the server log:\n{output[max(0, at - 1500):at + 1500]}"


def assert_private(server: Served, body: bytes) -> None:
    """An answer names no storage detail: no data-dir path, no store URL."""
    data_dir = str(server.log.parent).encode()
    for secret in (data_dir, b"sqlite", b"redis://", b"h.db"):
        assert secret not in body, f"the answer names {secret!r}: {body[:500]!r}"


_clients: dict[int, httpx.Client] = {}


def post(server: Served, path: str, **kwargs: Any) -> httpx.Response:
    """A POST through one kept-alive client per server (a new httpx client costs ~50 ms); it
    keeps no cookies between requests."""
    client = _clients.get(server.port)
    if client is None or client.is_closed:
        client = _clients[server.port] = httpx.Client(base_url=server.url, timeout=10)
    try:
        return client.post(path, **kwargs)
    finally:
        client.cookies.clear()


@pytest.fixture(scope="module", autouse=True)
def close_clients() -> Iterator[None]:
    yield
    for client in _clients.values():
        client.close()
    _clients.clear()


def guest_cookie(server: Served, name: str) -> str:
    """A fresh guest session cookie (a new user, so per-user budgets start full)."""
    response = post(server, "/auth/guest", data={"name": name})
    assert response.status_code == 302, response.text
    return response.cookies[SESSION]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    rest: bytes = b""
    """Bytes after a 101's headers: the first WebSocket frames."""


def exchange(server: Served, head: bytes, timeout: float = 10) -> Answer:
    """Send one hand-built request (``head`` without its blank line) and read its answer.

    Raw, so nothing on the client side cleans up what is sent; a 101 returns at once with
    whatever frames came along with it.
    """
    request = head + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"the server closed without an answer to {request[:300]!r}"
            data += chunk
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        if status == 101:
            return Answer(status, headers, b"", rest + read_frame_bytes(sock, rest))
        size = int(headers.get("content-length", "0"))
        while len(rest) < size:
            chunk = sock.recv(65536)
            assert chunk, "the server closed in the middle of an answer"
            rest += chunk
    return Answer(status, headers, rest[:size])


def read_frame_bytes(sock: socket.socket, have: bytes) -> bytes:
    """More bytes from ``sock`` until ``have`` holds at least one whole server frame."""
    more = b""
    while (found := frame_at(have + more)) is None or len(have + more) < sum(found):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the socket before its first frame"
        more += chunk
    return more


def frame_at(data: bytes) -> tuple[int, int] | None:
    """Where the payload of the unmasked server frame at the start of ``data`` begins, and its
    length; None until its header is in."""
    if len(data) < 2:
        return None
    length, offset = data[1] & 0x7F, 2
    if length >= 126:
        offset += 2 if length == 126 else 8
        if len(data) < offset:
            return None
        length = int.from_bytes(data[2:offset], "big")
    return offset, length


def first_frame(data: bytes) -> dict[str, Any]:
    """The JSON text of the first server frame in ``data``."""
    found = frame_at(data)
    assert found is not None and data[0] == 0x81, f"not a text frame: {data[:20]!r}"
    offset, length = found
    result: dict[str, Any] = json.loads(data[offset:offset + length])
    return result


def get(path: bytes, cookie: bytes | None = None, accept: bytes | None = None,
        extra: bytes = b"") -> bytes:
    """A GET request head with an optional raw Cookie value and Accept header."""
    head = b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close"
    if cookie is not None:
        head += b"\r\nCookie: " + SESSION.encode() + b"=" + cookie
    if accept is not None:
        head += b"\r\nAccept: " + accept
    return head + extra


UPGRADE = (b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13"
           b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")


def handshake(path: bytes, cookie: bytes | None) -> bytes:
    """A WebSocket handshake request head (Connection: Upgrade, so no ``close``)."""
    head = b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1" + UPGRADE
    if cookie is not None:
        head += b"\r\nCookie: " + SESSION.encode() + b"=" + cookie
    return head


async def metric(server: Served, name: str) -> float:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} is not in /metrics:\n{text}"
    return float(found.group(1))


# -- the socket corpus ---------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One client frame (a list: the fragments of one message) and what may answer it.

    ``says``: texts of the sender's own message event that would be a right answer; ``codes``:
    error codes that would be; both empty: nothing answers it (a typing notice).
    """

    what: str
    data: str | bytes | list[str] | list[bytes]
    says: frozenset[str] = frozenset()
    codes: frozenset[str] = frozenset()
    text: bool = True
    """Sent as a text frame (bytes too: invalid UTF-8 in a text frame)."""

    @property
    def answered(self) -> bool:
        return bool(self.says or self.codes)


PIECES = [
    "a", "Z", "7", " ", "hello", "<b>x</b>", "<script>alert(1)</script>", '"', "\\", "'", "/",
    "{", "}", "[", "]", ",", ":", "\t", "\n", "\r", "\u0000", "\u0001", "\u001f", "\u007f",
    "é", "e\u0301", "漢字", "😀", "👩‍👩‍👧", "\u200d", "\u200b", "\u202e", "\u2028", "\u2029",
    "\ufeff", "\ufffd", "\uffff", "\U0010ffff", "\U000e0001", "\u00a0", "\u3000", "ß", "İ",
    "%00", "${x}", "{{7*7}}", "\u0085", "١٢٣", "²",
]
SPACES = ["", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u2003", "\x0b\x0c"]
ODD_VALUES: list[Any] = [None, 0, -1, 1.5, True, False, [], {}, ["say"], {"type": "say"}, "", 2**70]
ERROR_CODES = frozenset({"bad_request", "too_long", "rate_limited", "unavailable"})
BAD = frozenset({"bad_request"})


def some_text(rng: random.Random, size: int) -> str:
    return "".join(rng.choice(PIECES) for _ in range(size))


def encode(rng: random.Random, value: Any) -> str:
    """JSON text, ASCII-escaped or not, compact or not."""
    separators = rng.choice([(",", ":"), (", ", ": "), (" ,", " : ")])
    return json.dumps(value, ensure_ascii=rng.random() < 0.5, separators=separators)


def valid_say(rng: random.Random) -> Probe:
    size = rng.choice([1, 1, 3, 10, 40, 200])
    text = some_text(rng, size)
    if not text.strip():
        text += "x"
    padded = rng.choice(SPACES) + text + rng.choice(SPACES)
    frame: dict[str, Any] = {"type": "say", "text": padded}
    if rng.random() < 0.3:  # extra fields are ignored
        frame[rng.choice(["id", "user", "room", "x", "text2", "TYPE"])] = rng.choice(ODD_VALUES)
    if rng.random() < 0.3:
        frame = dict(reversed(list(frame.items())))
    if len(padded.strip()) > MAX_LENGTH:
        return Probe("too long", encode(rng, frame), codes=frozenset({"too_long"}))
    return Probe("say", encode(rng, frame), says=frozenset({padded.strip()}))


def boundary_say(rng: random.Random) -> Probe:
    """Texts of exactly the longest length (wide characters too) and one character more."""
    char = rng.choice(["x", "é", "漢", "😀"])
    size = MAX_LENGTH + rng.choice([0, 1, rng.randint(2, 2000)])
    text = rng.choice(SPACES) + char * size + rng.choice(SPACES)
    if size <= MAX_LENGTH:
        return Probe("longest say", encode(rng, {"type": "say", "text": text}),
                     says=frozenset({text.strip()}))
    return Probe("too long", encode(rng, {"type": "say", "text": text}),
                 codes=frozenset({"too_long"}))


def surrogate_say(rng: random.Random) -> Probe:
    """A lone surrogate, which JSON escapes can carry and no UTF-8 frame or store can."""
    text = some_text(rng, rng.randint(0, 20))
    at = rng.randint(0, len(text))
    lone = f"\\u{rng.randint(0xD800, 0xDFFF):04x}"
    if rng.random() < 0.3:
        lone = "\\ude00\\ud83d"  # a pair the wrong way round is two lone ones
    body = json.dumps(text[:at], ensure_ascii=True)[:-1] + lone + json.dumps(text[at:])[1:]
    return Probe("lone surrogate", '{"type":"say","text":' + body + "}", codes=BAD)


def empty_say(rng: random.Random) -> Probe:
    text = "".join(rng.choice(SPACES) for _ in range(rng.randint(0, 6)))
    return Probe("empty say", encode(rng, {"type": "say", "text": text}), codes=BAD)


def textless_say(rng: random.Random) -> Probe:
    frame: dict[str, Any] = {"type": "say"}
    if rng.random() < 0.8:
        frame["text"] = rng.choice([v for v in ODD_VALUES if v != ""])
    return Probe("say without text", encode(rng, frame), codes=BAD)


def unknown_type(rng: random.Random) -> Probe:
    kind = rng.choice([
        "Say", "SAY", " say", "say ", "say\u0000", "message", "welcome", "error", "join", "leave",
        "", "typing ", "Typing", some_text(rng, 5), "x" * rng.randint(41, 9000),
        *[v for v in ODD_VALUES if v != ""],
    ])
    frame = encode(rng, {"type": kind, "text": "hi"})
    if rng.random() < 0.25:
        frame = rng.choice([
            '{"type":"\\ud800","text":"hi"}', '{"type":"sa\\udfffy"}', '{"type":1e999}',
            '{"type":-1e999,"text":"x"}', '{"text":"no type"}', "{}",
        ])
    return Probe("unknown type", frame, codes=BAD)


def not_an_object(rng: random.Random) -> Probe:
    frame = rng.choice([
        "[]", '[{"type":"say","text":"x"}]', '"say"', "1", "null", "true", "false", "1e999",
        "-0", '""', '"\\ud800"', encode(rng, [some_text(rng, 3), 1, None]), " 12 ",
    ])
    return Probe("not an object", frame, codes=BAD)


def deeply_nested(rng: random.Random) -> Probe:
    depth = rng.choice([10_000, 12_000])
    frame = rng.choice([
        "[" * depth,
        "[" * depth + "]" * depth,
        '{"a":' * 9000 + "1" + "}" * 9000,
        '{"type":"say","text":' + "[" * depth + "]" * depth + "}",
        '{"type":"say","text":"x","deep":' + "[" * depth + "]" * depth + "}",
    ])
    return Probe("deeply nested", frame, codes=BAD)


def moderately_nested(rng: random.Random) -> Probe:
    """Nesting well inside any parser's limit, beside a good say: the message stands."""
    depth = rng.randint(1, 200)
    text = "nested " + some_text(rng, 3)
    frame = '{"type":"say","x":' + "[" * depth + "]" * depth + "," + \
        '"text":' + json.dumps(text) + "}"
    return Probe("nested extra field", frame, says=frozenset({text.strip()}))


def invalid_json(rng: random.Random) -> Probe:
    frame = rng.choice([
        "", " ", "}", "]", ",", ":", "'", "x", "\x00", "{'type':'say','text':'x'}",
        "{type:say}", '{"type":"say","text":"x",}', '{"type":"say","text":"x"',
        '{"type":"say","text":"x"}}', '{"type":"say","text":"x"} trailing', "nul", "tru",
        '{"type":"say","text":"\\x41"}', '{"type":"say","text":"a\tb"}',
        '{"type":"say","text":"a\x00b"}', '{"type":"say"\x00,"text":"x"}', '\x00{"type":"typing"}',
        '{"type":"typing"}\x00', '{"type":"say","text":"\\u12"}', '{"type":"say","text":"\\ud800\\"}',
        '{"type":"typing",}', "\ufeff{\"type\":\"typing\"}", "{\"type\":\"typing\"}{}",
    ])
    if rng.random() < 0.3:
        frame = rng.choice("}],:'x") + some_text(rng, rng.randint(0, 50))
    return Probe("invalid JSON", frame, codes=BAD)


def odd_numbers(rng: random.Random) -> Probe:
    text = "number " + str(rng.randint(0, 99))
    number = rng.choice(["1e999", "-1e999", "1e-999", "-0.0", "0e0", "123456789012345678901234567890",
                         "1.0000000000000000000000001", "1E400"])
    if rng.random() < 0.5:
        return Probe("odd number beside", '{"type":"say","text":' + json.dumps(text) +
                     ',"n":' + number + "}", says=frozenset({text}))
    return Probe("odd number as text", '{"type":"say","text":' + number + "}", codes=BAD)


def unparseable_numbers(rng: random.Random) -> Probe:
    """Numbers JSON allows and Python's reader may refuse (4300+ digits; NaN): either answer
    is right, as long as there is one."""
    text = "digits " + str(rng.randint(0, 99))
    number = rng.choice(["9" * rng.randint(4301, 20000), "-" + "1" * 5000, "NaN", "Infinity",
                         "-Infinity"])
    return Probe("huge number", '{"type":"say","text":' + json.dumps(text) + ',"n":' + number + "}",
                 says=frozenset({text}), codes=BAD)


def duplicate_keys(rng: random.Random) -> Probe:
    """Repeated keys: either occurrence may win, but the frame is answered once."""
    a, b = "first " + some_text(rng, 2), "second " + some_text(rng, 2)
    x, y = json.dumps(a), json.dumps(b)
    case = rng.randrange(4)
    if case == 0:
        return Probe("duplicate text", f'{{"type":"say","text":{x},"text":{y}}}',
                     says=frozenset({a.strip(), b.strip()}))
    if case == 1:
        return Probe("duplicate type", f'{{"type":"say","type":"say","text":{x}}}',
                     says=frozenset({a.strip()}))
    if case == 2:
        return Probe("duplicate, one bad", f'{{"type":"say","text":{x},"text":""}}',
                     says=frozenset({a.strip()}), codes=BAD)
    return Probe("duplicate, one unknown", f'{{"type":"nope","type":"say","text":{x}}}',
                 says=frozenset({a.strip()}), codes=BAD)


def nul_say(rng: random.Random) -> Probe:
    """An escaped NUL is text like any other: stored and sent back unchanged."""
    text = rng.choice(["a\u0000b", "\u0000x", "x\u0000", "\u0000" * 5 + "y"])
    return Probe("NUL in text", json.dumps({"type": "say", "text": text}), says=frozenset({text}))


def typing(rng: random.Random) -> Probe:
    frame = rng.choice([
        '{"type":"typing"}', '{"type": "typing", "text": "x"}', '{"text":"hi","type":"typing"}',
        '{"type":"typing","x":"\\ud800"}', '{"type":"typing","text":' + json.dumps("x" * 30_000) + "}",
        '{"type":"typing","type":"typing"}', ' {"type":"typing"} ', '{"type":"typing","n":1e999}',
    ])
    return Probe("typing", frame)


def binary(rng: random.Random) -> Probe:
    data = rng.choice([
        b"", b'{"type":"say","text":"binary"}', b'{"type":"typing"}',
        bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))),
    ])
    return Probe("binary", data, codes=BAD, text=False)


def invalid_utf8(rng: random.Random) -> Probe:
    data = rng.choice([
        b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80",
        b'{"type":"say","text":"\xe2\x82"}', b'{"type":"say","text":"ok\xff"}',
        b'{"type":"typing"}\xc3', bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 50))),
    ])
    try:
        data.decode()
    except UnicodeDecodeError:
        return Probe("invalid UTF-8", data, codes=BAD)
    return Probe("invalid UTF-8", data + b"\xff", codes=BAD)


def fragmented(rng: random.Random) -> Probe:
    """One message in several frames, cut anywhere (inside a UTF-8 sequence too)."""
    text = "frag " + some_text(rng, rng.randint(1, 30))
    whole = json.dumps({"type": "say", "text": text}, ensure_ascii=False).encode()
    cuts = sorted(rng.sample(range(1, len(whole)), min(rng.randint(1, 4), len(whole) - 1)))
    parts = [whole[i:j] for i, j in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    case = rng.randrange(3)
    if case == 0:
        return Probe("fragments", parts, says=frozenset({text.strip()}))
    if case == 1:
        return Probe("binary fragments", parts, codes=BAD, text=False)
    return Probe("fragments, bad UTF-8", [*parts[:-1], parts[-1] + b"\xff"], codes=BAD)


KINDS: list[tuple[Callable[[random.Random], Probe], int]] = [
    (valid_say, 25), (boundary_say, 3), (surrogate_say, 6), (empty_say, 4), (textless_say, 4),
    (unknown_type, 8), (not_an_object, 4), (deeply_nested, 3), (moderately_nested, 2),
    (invalid_json, 8), (odd_numbers, 4), (unparseable_numbers, 2), (duplicate_keys, 4),
    (nul_say, 2), (typing, 6), (binary, 4), (invalid_utf8, 5), (fragmented, 6),
]
FRAME_BUDGET = 60_000
"""Every fuzz frame stays under --max-frame-size (64 KiB), which closes the socket with 1009."""


def corpus(seed: int, size: int) -> list[Probe]:
    """``size`` frames, the same for the same seed, from every kind above."""
    rng = random.Random(seed)
    makers = [make for make, _ in KINDS]
    weights = [weight for _, weight in KINDS]

    def draw(make: Callable[[random.Random], Probe]) -> Probe:
        while wire_size(probe := make(rng)) >= FRAME_BUDGET:
            pass
        return probe

    probes = [draw(rng.choices(makers, weights)[0]) for _ in range(size)]
    for kind in makers:  # every kind at least once, whatever the draw
        probes.insert(rng.randrange(len(probes)), draw(kind))
    return probes


def wire_size(probe: Probe) -> int:
    parts = probe.data if isinstance(probe.data, list) else [probe.data]
    return sum(len(p.encode() if isinstance(p, str) else p) for p in parts)


def test_corpus_stays_under_the_frame_limit() -> None:
    """Every generated frame fits under 64 KiB, and the corpus holds every kind and outcome."""
    probes = corpus(2024, 3000)
    assert max(wire_size(p) for p in probes) < FRAME_BUDGET
    kinds = {p.what for p in probes}
    assert {"say", "lone surrogate", "deeply nested", "binary", "invalid UTF-8", "typing",
            "fragments", "too long", "duplicate text"} <= kinds
    assert sum(p.answered for p in probes) > 2000


async def send(ws: ClientConnection, probe: Probe) -> None:
    if isinstance(probe.data, list):
        fragments: list[str | bytes] = list(probe.data)
        await ws.send(iter(fragments), text=probe.text)
    else:
        await ws.send(probe.data, text=probe.text)


@dataclass
class Watcher:
    """A bystander in the fuzzed room: it reads everything until the last message."""

    ws: ClientConnection
    sender: str
    last: str
    seen: list[tuple[str, str]]

    async def run(self) -> None:
        while True:
            got = await frame(self.ws, timeout=60)
            if got["type"] == "message" and got["user"]["id"] == self.sender:
                self.seen.append((got["id"], got["text"]))
                if got["text"] == self.last:
                    return


async def test_socket_fuzz_answers_every_frame_and_harms_nobody(server: Served) -> None:
    """Thousands of random frames each get one answer (their own message or an error frame)
    or none (typing); the socket stays open; a bystander sees exactly the stored messages;
    fresh clients still talk in both directions and in another room; nothing is logged."""
    probes = corpus(2024, 3000)
    fuzzer_cookie = await sign_in(server.url, "Fuzzer")
    watcher_cookie = await sign_in(server.url, "Watcher")
    last = "the last fuzz message"
    async with connect(server.port, "fuzz", watcher_cookie) as watching:
        seen = (await frame_of(watching, "welcome"))["you"]
        while (await frame_of(watching, "join"))["user"] != seen:
            pass
        async with connect(server.port, "fuzz", fuzzer_cookie) as ws:
            me = (await frame_of(ws, "welcome"))["you"]
            await fuzz_room(server, watching, ws, me, probes, last)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert await metric(server, "revchat_unexpected_errors_total") == 0
    assert_log_clean(server)


async def fuzz_room(server: Served, watching: ClientConnection, ws: ClientConnection,
                    me: dict[str, Any], probes: list[Probe], last: str) -> None:
    """Fuzz from ``ws`` while ``watching`` reads; then check what everyone got."""
    while (await frame_of(ws, "join"))["user"] != me:
        pass
    watcher = Watcher(watching, me["id"], last, [])
    watch = asyncio.create_task(watcher.run())
    try:
        mine = await fuzz(ws, me, probes, last)
    finally:
        if not watch.done():
            watch.cancel()
    await asyncio.wait_for(watch, 30)
    assert watcher.seen == mine, "the bystander saw other messages than the fuzzer stored"
    assert watching.state is State.OPEN
    assert len(mine) > 700
    ids = [int(i) for i, _ in mine]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    await fresh_clients_talk(server, mine)


async def fuzz(ws: ClientConnection, me: dict[str, Any], probes: list[Probe],
               last: str) -> list[tuple[str, str]]:
    """Send every probe, check its answer, then ``last``; the (id, text) of each own message."""
    mine: list[tuple[str, str]] = []
    for number, probe in enumerate(probes):
        await send(ws, probe)
        if not probe.answered:
            continue
        got = await frame(ws, timeout=10)
        where = f"frame {number} ({probe.what}): {str(probe.data)[:200]!r} got {str(got)[:300]}"
        if got["type"] == "message":
            assert got["user"]["id"] == me["id"] and got["text"] in probe.says, where
            mine.append((got["id"], got["text"]))
        else:
            assert got["type"] == "error" and got["code"] in probe.codes, where
            assert got["code"] in ERROR_CODES and isinstance(got["message"], str), where
    # Typing frames are answered to nobody: the next answer is this say's own message.
    await say(ws, last)
    got = await frame(ws)
    assert got["type"] == "message" and got["text"] == last, got
    mine.append((got["id"], got["text"]))
    assert ws.state is State.OPEN
    await asyncio.wait_for(await ws.ping(), 5)
    return mine


async def fresh_clients_talk(server: Served, mine: list[tuple[str, str]]) -> None:
    """Two new users join the fuzzed room and another one: each sees the other's messages, and
    the fuzzed room's archive and history are the fuzzer's stored messages, newest last."""
    alice, bob = await sign_in(server.url, "Alice"), await sign_in(server.url, "Bob")
    async with connect(server.port, "fuzz", alice) as a1, connect(server.port, "fuzz", bob) as b1, \
            connect(server.port, "elsewhere", alice) as a2, \
            connect(server.port, "elsewhere", bob) as b2:
        welcome = await frame_of(a1, "welcome")
        archived = [(e["id"], e["text"]) for e in welcome["archive"] if e["type"] == "message"]
        assert len(archived) >= 40 and archived == mine[-len(archived):]
        for ws in (b1, a2, b2):
            await frame_of(ws, "welcome")
        for room, (x, y) in {"fuzz": (a1, b1), "elsewhere": (a2, b2)}.items():
            await say(x, f"hello from Alice in {room}")
            await say(y, f"hello from Bob in {room}")
            for ws in (x, y):
                texts = {(await frame_of(ws, "message"))["text"] for _ in range(2)}
                assert texts == {f"hello from Alice in {room}", f"hello from Bob in {room}"}
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            history = await client.get("/rooms/fuzz/history?limit=200",
                                       headers={"cookie": f"{SESSION}={alice}"})
        assert history.status_code == 200
        stored = [(e["id"], e["text"]) for e in history.json()["events"] if e["type"] == "message"]
        assert {text for _, text in stored[-2:]} == {"hello from Alice in fuzz",
                                                    "hello from Bob in fuzz"}
        fuzzed = stored[:-2]
        assert len(fuzzed) >= 150 and fuzzed == mine[-len(fuzzed):]


@pytest.mark.parametrize("shape", ["one text frame", "binary frame", "fragments"])
async def test_frame_over_the_limit_closes_only_its_socket(server: Served, shape: str) -> None:
    """A 70 KiB message closes its own socket with 1009; another client in the room goes on."""
    big, other = await sign_in(server.url, "Big"), await sign_in(server.url, "Other")
    async with connect(server.port, "big", other) as bystander, \
            connect(server.port, "big", big) as ws:
        await frame_of(bystander, "welcome")
        await frame_of(ws, "welcome")
        text = json.dumps({"type": "say", "text": "x" * 70 * 1024})
        if shape == "one text frame":
            await ws.send(text)
        elif shape == "binary frame":
            await ws.send(text.encode())
        else:
            await ws.send(iter(text[i:i + 8192] for i in range(0, len(text), 8192)))
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        assert ws.close_code == 1009
        await say(bystander, "still here")
        assert (await frame_of(bystander, "message"))["text"] == "still here"
        assert bystander.state is State.OPEN
    assert_log_clean(server)


# -- HTTP -----------------------------------------------------------------------------------


def signed_out(server: Served, cookie: bytes) -> None:
    """With ``cookie`` as the session, every page answers as to someone signed out."""
    lenient = b"\n" in cookie or len(cookie) > 7500  # the HTTP layer may refuse the header
    for path, want in ((b"/", 200), (b"/rooms/lobby", 302), (b"/rooms/lobby/history", 401)):
        answer = exchange(server, get(path, cookie))
        assert answer.status < 500, (path, cookie[:100], answer)
        assert_private(server, answer.body)
        if lenient and 400 <= answer.status < 500 and answer.status != want:
            continue
        assert answer.status == want, (path, cookie[:100], answer.status, answer.body[:300])
        if path == b"/":
            assert b'action="/auth/guest"' in answer.body
            assert b'action="/auth/logout"' not in answer.body
        if want == 302:
            assert answer.headers["location"] == "/"
    answer = exchange(server, handshake(b"/rooms/lobby/socket", cookie))
    assert answer.status == 403 or (lenient and 400 <= answer.status < 500), (cookie[:100], answer)


@pytest.fixture(scope="module")
def good_cookie(server: Served) -> str:
    return guest_cookie(server, "Cookie Monster")


COOKIE_BYTES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.sampled_from([b"", b'""', b'"x"', b"\x00", b"\x80\xff\xfe", b"\xc3(", b"a\rb", b";", b"=",
                     b"\\", b"\x1b[2J", b".", b"..", b"a.b", b"a.b.c", b"%00", b"%ff", b"e30.x"]),
    st.integers(2000, 20_000).map(lambda n: b"a" * n),
    st.lists(st.tuples(st.sampled_from([b"a", b"revchat_session", b"REVCHAT_SESSION", b"x y",
                                        b"revchat_session ", b"\xff"]),
                       st.binary(max_size=40)), max_size=200)
    .map(lambda pairs: b"junk; " + b"; ".join(k + b"=" + v for k, v in pairs)),
)


@settings(max_examples=80)
@given(COOKIE_BYTES)
def test_odd_cookies_read_as_signed_out(server: Served, cookie: bytes) -> None:
    """Any bytes as the session cookie (non-ASCII, control characters, huge, many cookies)
    read as signed out: the sign-in form, a redirect, 401, a refused handshake; never a 5xx."""
    signed_out(server, cookie.replace(b"\r\n", b"\r"))
    assert_log_clean(server)


@settings(max_examples=40)
@given(st.integers(0, 10**6), st.sampled_from(["flip", "cut", "grow", "twice", "case"]),
       st.characters(codec="utf-8"))
def test_tampered_cookies_read_as_signed_out(server: Served, good_cookie: str, at: int, how: str,
                                             char: str) -> None:
    """A real session cookie changed anywhere in its signed part reads as signed out."""
    payload, _, signature = good_cookie.rpartition(".")
    i = at % len(payload)
    if how == "flip":
        if char == payload[i]:
            char = "A" if payload[i] != "A" else "B"
        tampered = payload[:i] + char + payload[i + 1:] + "." + signature
    elif how == "cut":
        tampered = good_cookie[:i]
    elif how == "grow":
        tampered = payload[:i] + char + payload[i:] + "." + signature
    elif how == "twice":
        tampered = good_cookie + "." + good_cookie
    else:
        tampered = payload.swapcase() + "." + signature
    signed_out(server, tampered.encode())
    answer = exchange(server, get(b"/", good_cookie.encode()))  # the real one still works
    assert answer.status == 200 and b'action="/auth/logout"' in answer.body


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
USERS = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({"id": JSON_VALUES, "name": JSON_VALUES},
                          optional={"avatar": JSON_VALUES}),
)


@settings(max_examples=40)
@given(st.fixed_dictionaries({}, optional={"u": USERS, "s": JSON_VALUES, "t": JSON_VALUES,
                                           "x": JSON_VALUES}), st.booleans())
def test_signed_cookies_with_odd_bodies_never_fail(server: Served, body: dict[str, Any],
                                                    now: bool) -> None:
    """A correctly signed cookie whose body is not what revchat writes (old formats, odd types)
    signs in or reads as signed out; pages and the handshake never answer 5xx."""
    serializer = URLSafeSerializer(KEY, salt="revchat.session",
                                   signer_kwargs={"digest_method": hashlib.sha256})
    if now:
        body = {**body, "t": int(time.time() * 1000)}
    token = serializer.dumps(body)
    session = read_session(Signer(KEY, "session"), token)
    cookie = token.encode()
    for path in (b"/", b"/rooms/lobby", b"/rooms/lobby/history"):
        answer = exchange(server, get(path, cookie))
        assert answer.status < 500, (body, answer)
        if session is None:
            assert answer.status == {b"/": 200, b"/rooms/lobby": 302}.get(path, 401), (body, answer)
        else:  # the history is rate limited per user, and odd bodies repeat user ids
            assert answer.status in (200, 429) if b"history" in path else answer.status == 200
    answer = exchange(server, handshake(b"/rooms/oddbodies/socket", cookie))
    assert answer.status == (403 if session is None else 101), (body, answer)
    if answer.status == 101:
        welcome = first_frame(answer.rest)
        assert session is not None and welcome["type"] == "welcome"
        assert welcome["you"] == session.user.as_dict()
    assert_log_clean(server)


class Budget:
    """A fresh user every 25 history reads, so the per-user limit (bursts of 30) never bites."""

    def __init__(self, server: Served) -> None:
        self.server = server
        self.used = 0
        self.cookie = ""

    def next(self) -> str:
        if self.used % 25 == 0:
            self.cookie = guest_cookie(self.server, f"Reader {self.used}")
        self.used += 1
        return self.cookie


@pytest.fixture(scope="module")
def budget(server: Served) -> Budget:
    return Budget(server)


@pytest.fixture(scope="module")
def lobby_ids(server: Served) -> list[str]:
    """Ids of events stored in the lobby, for ``before`` values that exist."""
    cookie = guest_cookie(server, "Lobby Writer")

    async def write() -> list[str]:
        async with connect(server.port, "lobby", cookie) as ws:
            await frame_of(ws, "welcome")
            ids = [(await frame_of(ws, "join"))["id"]]
            for i in range(5):
                await say(ws, f"lobby {i}")
                ids.append((await frame_of(ws, "message"))["id"])
            return ids

    return asyncio.run(write())


NUMBERS = st.one_of(
    st.sampled_from(["²", "-1", "0", "1", "50", "200", "201", "18446744073709551615",
                     "18446744073709551616", "9223372036854775807", "9223372036854775808",
                     "1-2-3", "1-0", "0-0", "5-", "-5", " 5", "5 ", "+5", "0x10", "1e2", "1.0",
                     "٣", "\uff15", "00", "050", "0050", "9" * 30, "1" * 4301, "\u0000", "NaN", ""]),
    st.integers(-(10**30), 10**30).map(str),
    st.text(max_size=25),
)
RAW_QUERY = st.sampled_from([b"%ED%A0%80", b"%ZZ", b"%", b"%C3", b"%00", b"%FF%FE", b"+", b"%2B5",
                             b"&&", b"=", b"1;2", b"%E2%82", b"\xff", b"1%00", b"%F0%9F%98%80"])


def number_ok(raw: str, low: int, high: int) -> bool | None:
    """Is ``raw`` a whole number from ``low`` to ``high`` in ASCII digits? None when it is one
    with leading zeros: either answer is fine then."""
    if not (raw.isascii() and raw.isdigit()):
        return False
    digits = raw.lstrip("0") or "0"
    if len(digits) > 25 or not low <= int(digits) <= high:
        return False
    return None if digits != raw else True


def verdict(*parts: bool | None) -> bool | None:
    return False if False in parts else None if None in parts else True


def limit_ok(raw: str) -> bool | None:
    """A blank limit is no limit (the default page)."""
    return True if not raw else number_ok(raw, 1, 200)


def before_ok(raw: str) -> bool | None:
    """An event id: one number, or two joined by "-" (Redis), each up to 64 bits."""
    parts = raw.split("-")
    if not raw:
        return True
    return False if len(parts) > 2 else verdict(*(number_ok(p, 0, 2**64 - 1) for p in parts))


@settings(max_examples=200)
@given(limit=st.none() | NUMBERS | RAW_QUERY, before=st.none() | NUMBERS | RAW_QUERY,
       real_before=st.booleans(), twice=st.booleans(),
       accept=st.sampled_from([None, b"text/html", b"application/json", b"*/*"]))
def test_history_query_strings(server: Served, budget: Budget, lobby_ids: list[str],
                               limit: str | bytes | None, before: str | bytes | None,
                               real_before: bool, twice: bool, accept: bytes | None) -> None:
    """Any ``limit`` and ``before`` get 200 with a page when they are a number from 1 to 200 and
    an event id, else 400; never a 5xx, never a storage detail."""
    if real_before and before is None:
        before = lobby_ids[len(lobby_ids) // 2]
    parts, known = [], True
    for name, value in (("limit", limit), ("before", before)):
        if value is None:
            continue
        if isinstance(value, bytes):
            known = False
            parts.append(name.encode() + b"=" + value)
        else:
            parts.append(name.encode() + b"=" + quote(value, safe="").encode())
    if twice and parts:
        key, _, value = parts[0].partition(b"=")
        parts.append(key + b"=x")  # the first value is the one read...
        known = known and bool(value)  # ...unless it is blank, which counts as none
    query = b"&".join(parts)
    answer = exchange(server, get(b"/rooms/lobby/history?" + query, budget.next().encode(), accept))
    assert answer.status < 500, (query, answer)
    assert_private(server, answer.body)
    if len(query) > 7000 and answer.status == 413:
        return  # the request head is over Sanic's 8 KiB: refused before any parsing
    want: bool | None = None
    if known:
        want = verdict(limit_ok(limit or ""), before_ok(before or ""))  # type: ignore[arg-type]
    if want is not None:
        assert answer.status == (200 if want else 400), (query, answer.status, answer.body[:300])
    assert answer.status in (200, 400), (query, answer.status, answer.body[:300])
    if answer.status == 200:
        page = json.loads(answer.body)
        assert set(page) == {"events", "more"} and isinstance(page["more"], bool)
        assert all(e["room"] == "lobby" for e in page["events"])
        if known and isinstance(limit, str) and limit:
            assert len(page["events"]) <= int(limit)
        if known and isinstance(before, str) and before and "-" not in before:
            assert all(int(e["id"]) < int(before) for e in page["events"])
    elif accept != b"text/html":
        assert "error" in json.loads(answer.body)
    assert_log_clean(server)


SINCE = st.one_of(
    st.sampled_from(["", "²", "-1", "1-2-3", "18446744073709551616", "9223372036854775808",
                     "99999999999999999999999", "٣", "abc", "1e3", " ", "\u0000", "\ud7ff"]),
    st.text(max_size=20).filter(lambda s: not re.fullmatch(r"[0-9]+(-[0-9]+)?", s)),
).map(lambda s: quote(s, safe="").encode()) | RAW_QUERY


@settings(max_examples=30)
@given(since=SINCE)
def test_socket_since_junk_gives_a_plain_welcome(server: Served, budget: Budget,
                                                 since: bytes) -> None:
    """``?since=`` that is no event id opens the socket with the plain archive (resumed false)."""
    answer = exchange(server, handshake(b"/rooms/lobby/socket?since=" + since,
                                        budget.next().encode()))
    if not since.isascii():
        assert answer.status == 400, (since, answer)  # a URL is ASCII: refused as it is read
        return
    assert answer.status == 101, (since, answer)
    welcome = first_frame(answer.rest)
    assert welcome["type"] == "welcome" and welcome["resumed"] is False, (since, welcome)
    assert_log_clean(server)


def name_problem(name: str) -> bool:
    """The nickname rule (docs/protocol.md): 1-32 characters, none of them control, format, surrogate, private
    or unassigned, nor a line or paragraph separator."""
    bad = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
    return not 1 <= len(name) <= 32 or any(unicodedata.category(c) in bad for c in name)


NAMES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["  Ann  ", "A" * 32, " " + "B" * 32 + " ", "C" * 33, "\u200b", "a\u202eb",
                     "\u3000Ann\u3000", "漢字", "😀" * 32, "e\u0301", "<script>", "a\x00b",
                     "\U000f0000", "\u0378", "a\u2028b", "O'Neil", '"quoted"', "a&b=c", "%41"]),
)


@settings(max_examples=120)
@given(name=st.none() | NAMES, extra=st.dictionaries(st.text(max_size=8), st.text(max_size=20),
                                                      max_size=3),
       kind=st.sampled_from(["form", "form", "multipart", "json", "text", "none", "latin-1"]),
       origin=st.sampled_from(["none", "same", "same", "foreign", "null", "odd"]),
       padding=st.sampled_from([0, 0, 0, 1000, 60_000, 70_000]))
def test_guest_form_fuzz(server: Served, name: str | None, extra: dict[str, str], kind: str,
                         origin: str, padding: int) -> None:
    """POST /auth/guest with any fields, body size, content type and Origin: 302 with a session
    for the trimmed name when it is a good name in a URL-encoded form, else 400 (multipart and
    other encodings included), 403 (foreign origin) or 413 (over 64 KiB); never a 5xx."""
    fields = {k: v for k, v in extra.items() if k != "name"}
    if name is not None:
        fields["name"] = name
    if padding:
        fields["padding"] = "p" * padding
    headers: dict[str, str] = {}
    if origin != "none":
        headers["origin"] = {"same": server.url, "foreign": "http://evil.example", "null": "null",
                             "odd": "http://127.0.0.1:1"}[origin]
    request: dict[str, Any] = {}
    if kind == "form":
        request["data"] = fields
    elif kind == "multipart":
        request["files"] = {k: (None, v) for k, v in fields.items()} or {"x": (None, "")}
    else:
        body = {"json": json.dumps(fields), "text": str(fields),
                "none": "&".join(f"{k}={v}" for k, v in fields.items()),
                "latin-1": "name=" + quote((name or "").encode()) + "&padding=" + "p" * padding,
                }[kind]
        request["content"] = body.encode("utf-8", "surrogatepass")
        if kind != "none":
            headers["content-type"] = {"json": "application/json", "text": "text/plain",
                                       "latin-1": "application/x-www-form-urlencoded; charset=latin-1"}[kind]
    response = post(server, "/auth/guest", headers=headers, **request)
    status = response.status_code
    assert status < 500, (fields, kind, origin, status, response.text[:300])
    assert_private(server, response.content)
    if padding > 64 * 1024:
        assert status == 413, (kind, status)
    elif origin in ("foreign", "null", "odd"):
        assert status == 403, (origin, status)
    elif kind == "form" and name is not None and not name_problem(name.strip()):
        assert status == 302, (name, kind, status, response.text[:300])
        session = read_session(Signer(KEY, "session"), response.cookies[SESSION])
        assert session is not None and session.user.name == name.strip(), (name, session)
    elif kind in ("form", "multipart", "json", "text", "none"):
        assert status == 400, (name, kind, status, response.text[:300])
    else:
        assert status in (302, 400), (name, kind, status)
    assert_log_clean(server)


@settings(max_examples=80)
@given(room=st.one_of(st.text(max_size=70), st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
                      st.sampled_from(["..", ".", "lobby/..", "LOBBY", "a" * 64, "a" * 65, "%2e%2e",
                                       "lobby%00", "\u0000", "ǅ", "K", "ﬀ"])),
       signed_in=st.booleans(), accept=st.sampled_from([None, b"text/html"]))
def test_room_names_in_the_path(server: Served, budget: Budget, room: str, signed_in: bool,
                                accept: bytes | None) -> None:
    """Any room name in the path: the page (200, or 302 when signed out) for 1-64 letters,
    digits, - and _; 404 (or 400 for a path no router takes) otherwise; never a 5xx."""
    cookie = budget.next().encode() if signed_in else None
    path = quote(room, safe="").encode()
    valid = re.fullmatch(r"[A-Za-z0-9_-]{1,64}", room, re.ASCII) is not None
    for suffix, ok in ((b"", 200 if signed_in else 302), (b"/history", 200 if signed_in else 401)):
        answer = exchange(server, get(b"/rooms/" + path + suffix, cookie, accept))
        assert answer.status < 500, (room, answer)
        assert_private(server, answer.body)
        if valid:
            assert answer.status == ok, (room, suffix, answer.status)
        else:
            assert answer.status in (400, 404), (room, suffix, answer.status, answer.body[:200])
    answer = exchange(server, handshake(b"/rooms/" + path + b"/socket", cookie))
    assert answer.status < 500
    if not valid:
        assert answer.status in (400, 403, 404), (room, answer.status)
    assert_log_clean(server)


# -- slow clients ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server that gives a connection one second to send its request's headers."""
    tmp = tmp_path_factory.mktemp("slow")
    with serve("--history", "memory://", "--data-dir", str(tmp), "--secret-key", KEY,
               "--header-timeout", "1", log=tmp / "server.log") as served:
        yield served


@pytest.mark.parametrize("how", ["silent", "drip"])
def test_slowloris_connections_are_dropped(slow_server: Served, how: str) -> None:
    """A connection that sends nothing, or drips header lines and never ends them, is closed
    within a few header timeouts, and another client is answered meanwhile."""
    slow = socket.create_connection(("127.0.0.1", slow_server.port), timeout=10)
    start = time.monotonic()
    got, closed_after, answered = b"", None, False
    try:
        if how == "drip":
            slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        while closed_after is None and time.monotonic() - start < 15:
            try:
                if how == "drip":
                    slow.sendall(b"X-Slow: 1\r\n")
                readable, _, _ = select.select([slow], [], [], 0.25)  # also the drip's pace
                data = slow.recv(4096) if readable else None
            except OSError:
                data = b""
            if data == b"":
                closed_after = time.monotonic() - start
            got += data or b""
            if not answered:  # someone else is served while the slow one hangs on
                t0 = time.monotonic()
                assert httpx.get(f"{slow_server.url}/healthz", timeout=5).status_code == 200
                assert time.monotonic() - t0 < 3
                answered = True
    finally:
        slow.close()
    assert closed_after is not None, f"still open after 15 s of {how}; it got {got[:100]!r}"
    assert closed_after < 6, closed_after
    assert b" 200 " not in got, "headers that never ended were answered"
    assert_log_clean(slow_server)
