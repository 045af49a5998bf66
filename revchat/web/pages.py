"""The sign-in page, the room page and a room's history."""

from __future__ import annotations

from sanic import Blueprint, HTTPResponse, Request, json, redirect
from sanic.exceptions import BadRequest, NotFound

from revchat.core.events import ROOM_PATTERN, id_key, stored_room_name
from revchat.core.protocol import whole_number
from revchat.web.context import context
from revchat.web.requests import current_user, page, settings_of

bp = Blueprint("pages")

HISTORY_PAGE = 50
HISTORY_MAX = 200
HISTORY_RATE = (5.0, 30)
"""Scroll-back requests per user and second, and at once: every one is a read on the store."""


def room_name(raw: str) -> str:
    """A room's stored name (lower case); 404 for anything but 1-64 letters, digits, - and _."""
    name = stored_room_name(raw)
    if name is None:
        raise NotFound("no such room")
    return name


@bp.get("/")
async def index(request: Request) -> HTTPResponse:
    """Sign-in page, or the welcome and room chooser once signed in."""
    return await page(request, "index.html")


@bp.get("/rooms")
async def choose(request: Request) -> HTTPResponse:
    """The room chooser's form: go to the named room."""
    raw = (request.args.get("room") or "").strip()
    name = stored_room_name(raw)
    if name is None:
        return await page(request, "index.html", status=400,
                          error="Room names are 1-64 letters, digits, - or _.", room=raw[:64])
    return redirect(f"/rooms/{name}")


@bp.get(f"/rooms/<room:{ROOM_PATTERN}>")
async def room_page(request: Request, room: str) -> HTTPResponse:
    """The chat page of a room; not signed in: back to the sign-in page."""
    name = room_name(room)
    if current_user(request) is None:
        return redirect("/")
    settings = settings_of(request)
    return await page(request, "room.html", room=name,
                      max_length=settings.max_message_length)


@bp.get(f"/rooms/<room:{ROOM_PATTERN}>/history")
async def history(request: Request, room: str) -> HTTPResponse:
    """Older events, oldest first: ``{"events": [...], "more": bool}``; 401 when not signed in."""
    name = room_name(room)
    user = current_user(request)
    if user is None:
        return json({"error": "not signed in"}, status=401)
    limit = whole_number(request.args.get("limit", str(HISTORY_PAGE)), 1, HISTORY_MAX)
    if limit is None:
        raise BadRequest(f"limit must be a whole number from 1 to {HISTORY_MAX}")
    before = request.args.get("before") or None
    if before is not None and id_key(before) is None:
        raise BadRequest("before must be an event id")
    reads = context(request).history_reads
    if not reads.allow(user.id, ""):
        return json({"error": "too many history requests; wait a moment"}, status=429)
    engine = context(request).engine
    events, more = await engine.broker.history.before(name, before, limit)
    body = '{"events":[' + ",".join(e.json for e in events) + '],"more":' + \
        ("true" if more else "false") + "}"
    return HTTPResponse(body, content_type="application/json")
