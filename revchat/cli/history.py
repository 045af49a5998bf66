"""``revchat history export|purge``: a room's stored events, outside the server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer

from revchat.backends.factory import open_broker
from revchat.cli.common import fail, with_settings
from revchat.core.errors import BrokerUnavailable
from revchat.core.events import stored_room_name
from revchat.settings.config import Loaded

history_cli = typer.Typer(help="Export or purge a room's history.", no_args_is_help=True,
                          rich_markup_mode=None)


def _room(raw: str) -> str:
    name = stored_room_name(raw)
    if name is None:
        fail(f"{raw!r} is not a room name (1-64 letters, digits, - or _)")
    return name


async def _export(loaded: Loaded, room: str, out: TextIO) -> int:
    broker = open_broker(loaded.settings.broker, **loaded.settings.store_options())
    await broker.open()
    count = 0
    try:
        async for event in broker.history.export(room):
            out.write(event.json + "\n")
            count += 1
    finally:
        await broker.close()
    return count


async def _purge(loaded: Loaded, room: str) -> int:
    broker = open_broker(loaded.settings.broker, **loaded.settings.store_options())
    await broker.open()
    try:
        return await broker.history.purge(room)
    finally:
        await broker.close()


@history_cli.command("export")
@with_settings
def export(
    loaded: Loaded,
    room: Annotated[str, typer.Argument(help="The room to export.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file "
                                                "instead of stdout.")] = None,
) -> None:
    """Write a room's history as JSON lines, oldest first (the events' socket shape)."""
    name = _room(room)
    try:
        if output is None:
            count = asyncio.run(_export(loaded, name, sys.stdout))
        else:
            with output.open("w", encoding="utf-8") as out:
                count = asyncio.run(_export(loaded, name, out))
    except (BrokerUnavailable, OSError) as exc:
        fail(str(exc), code=1)
    typer.echo(f"exported {count} events of {name}", err=True)


@history_cli.command("purge")
@with_settings
def purge(
    loaded: Loaded,
    room: Annotated[str, typer.Argument(help="The room to empty.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every event of a room (asks first unless --yes)."""
    name = _room(room)
    if not yes and not typer.confirm(f"Delete all history of room {name}?", default=False):
        fail("nothing deleted", code=1)
    try:
        count = asyncio.run(_purge(loaded, name))
    except BrokerUnavailable as exc:
        fail(str(exc), code=1)
    typer.echo(f"deleted {count} events of {name}")
