"""The ``revchat`` command (Typer): ``serve``, ``config show|check``, ``history export|purge``.

The flags of ``serve`` and ``config`` are built from :data:`revchat.settings.options.OPTIONS`, so a setting
is declared once. Every bad value ends with one line on stderr and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from revchat import __version__
from revchat.cli.common import fail, with_settings
from revchat.cli.history import history_cli
from revchat.settings.config import Loaded, Settings
from revchat.settings.options import OPTIONS, shown
from revchat.settings.startup import SECRET_KEY_FILE, problems

cli = typer.Typer(
    name="revchat",
    help="revchat: a self-hosted real-time chat-room server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_cli = typer.Typer(help="Show or check the effective settings.", no_args_is_help=True,
                         rich_markup_mode=None)
cli.add_typer(config_cli, name="config")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"revchat {__version__}")
        raise typer.Exit()


@cli.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """revchat: a self-hosted real-time chat-room server."""


@cli.command("serve")
@with_settings
def serve(loaded: Loaded) -> None:
    """Run the chat server (http://127.0.0.1:9000 by default)."""
    from revchat.web.server import ServeError, run

    found = problems(loaded.settings)
    if found:
        fail("\n".join(found))
    try:
        run(loaded.settings)
    except ServeError as exc:
        fail(str(exc), code=1)


@config_cli.command("show")
@with_settings
def config_show(loaded: Loaded) -> None:
    """Print every effective setting, its value and its source (default, env or flag)."""
    width = max(len(o.name) for o in OPTIONS)
    for option in OPTIONS:
        value = getattr(loaded.settings, option.name)
        source = loaded.sources[option.name]
        shown_value = shown(option, value)
        if option.name == "secret_key" and not value:
            shown_value = f"(kept in {loaded.settings.data_dir / SECRET_KEY_FILE})"
        if source == "default" and option.default is None:
            source = "derived"  # type: ignore[assignment]
        typer.echo(f"{option.name:<{width}}  {shown_value:<40}  {source}")


@config_cli.command("check")
@with_settings(lenient=True)
def config_check(loaded: Loaded) -> None:
    """Validate the settings: exit 1 with one line per problem (every one of them)."""
    found = [*loaded.problems, *problems(loaded.settings)]
    if not loaded.problems:  # with defaults standing in, trying the stores would mislead
        found.extend(reachability(loaded.settings))
    for line in found:
        typer.echo(line, err=True)
    if found:
        raise typer.Exit(1)
    typer.echo("configuration ok")


def reachability(settings: Settings) -> list[str]:
    """Problems found by trying the configured history and broker for real."""
    from revchat.web.server import ServeError, preflight

    try:
        preflight(settings)
    except ServeError as exc:
        return [str(exc)]
    return []


cli.add_typer(history_cli, name="history")


def main() -> None:
    """Console-script entry point."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("revchat")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        cli()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)
