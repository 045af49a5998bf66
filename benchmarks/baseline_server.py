"""The baseline: a minimal chat server written the usual way with ``websockets`` and uvloop.

It speaks the part of revchat's socket protocol (SPEC §4) that the benchmarks use, so one load
generator drives both: ``/rooms/ROOM/socket``, the user taken from the ``revchat_session``
cookie's payload (not verified: this is a benchmark), a welcome frame with members and the last 50
events, join/leave/message events with ``id`` and ``timestamp``, ``say`` and ``typing`` frames.
Each event is encoded once and sent with ``websockets.broadcast`` (one write per subscriber per
event, no coalescing). Nothing is stored beyond the in-memory archive.

    .venv/bin/python benchmarks/baseline_server.py --port 9001
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
ids = itertools.count(1)


@dataclass(eq=False)
class Room:
    name: str
    subs: set[ServerConnection] = field(default_factory=set)
    presence: Counter[str] = field(default_factory=Counter)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    archive: deque[str] = field(default_factory=lambda: deque(maxlen=50))


rooms: dict[str, Room] = {}


def user_of(cookie_header: str | None) -> dict[str, Any] | None:
    for part in (cookie_header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == "revchat_session" and value:
            # itsdangerous: [.]base64(json or, after a ".", zlib(json)).signature
            compressed = value.startswith(".")
            payload = value.lstrip(".").split(".", 1)[0]
            try:
                raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
                data = json.loads(zlib.decompress(raw) if compressed else raw)
                user = data["u"]
                return {"id": str(user["id"]), "name": str(user["name"]),
                        "avatar": user.get("avatar")}
            except (ValueError, KeyError, TypeError, zlib.error):
                return None
    return None


def publish(room: Room, kind: str, user: dict[str, Any], text: str = "") -> None:
    event = dumps({"type": kind, "id": str(next(ids)), "room": room.name, "user": user,
                   "timestamp": int(time.time() * 1000), "text": text})
    room.archive.append(event)
    broadcast(room.subs, event)


def error(code: str, message: str) -> str:
    return dumps({"type": "error", "code": code, "message": message})


async def handler(ws: ServerConnection) -> None:
    parts = ws.request.path.split("?", 1)[0].split("/") if ws.request else []
    user = user_of(ws.request.headers.get("Cookie")) if ws.request else None
    if len(parts) != 4 or parts[1] != "rooms" or parts[3] != "socket" or user is None:
        await ws.close(1008, "bad path or no session")
        return
    room = rooms.get(parts[2])
    if room is None:
        room = rooms[parts[2]] = Room(parts[2])
    room.presence[user["id"]] += 1
    first = room.presence[user["id"]] == 1
    room.users[user["id"]] = user
    head = dumps({"type": "welcome", "room": room.name, "you": user,
                  "members": [room.users[uid] for uid in room.presence], "resumed": False})
    await ws.send(head[:-1] + ',"archive":[' + ",".join(room.archive) + "]}")
    room.subs.add(ws)
    if first:
        publish(room, "join", user)
    try:
        async for message in ws:
            if not isinstance(message, str):
                await ws.send(error("bad_request", "frames must be JSON text"))
                continue
            try:
                frame = json.loads(message)
            except ValueError:
                await ws.send(error("bad_request", "the frame is not valid JSON"))
                continue
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "say":
                text = frame.get("text")
                text = text.strip() if isinstance(text, str) else ""
                if not 1 <= len(text) <= 2000:
                    await ws.send(error("bad_request", "bad text"))
                    continue
                publish(room, "message", user, text)
            elif kind == "typing":
                notice = dumps({"type": "typing", "room": room.name, "user": user})
                broadcast([s for s in room.subs if s is not ws], notice)
            else:
                await ws.send(error("bad_request", "unknown frame type"))
    finally:
        room.subs.discard(ws)
        room.presence[user["id"]] -= 1
        if room.presence[user["id"]] <= 0:
            del room.presence[user["id"]]
            room.users.pop(user["id"], None)
            publish(room, "leave", user)
        if not room.subs and not room.presence:
            rooms.pop(room.name, None)


async def main(port: int, backlog: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=65536,
                     ping_interval=20, ping_timeout=20, backlog=backlog) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--backlog", type=int, default=100,
                        help="listen backlog (100, asyncio's default, as Sanic's)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main(args.port, args.backlog))
