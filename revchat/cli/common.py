"""What the CLI's commands share: every setting as a flag, and one-line failures."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, get_type_hints

import typer

from revchat.settings.config import load
from revchat.settings.options import OPTIONS, SettingError, shown


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with one line on stderr per line of ``message``."""
    for line in message.splitlines() or [""]:
        typer.echo(f"revchat: {line}", err=True)
    raise typer.Exit(code)


def _option_parameters() -> list[inspect.Parameter]:
    params = []
    for option in OPTIONS:
        envs = ", ".join(option.envs)
        default = "" if option.default is None else f" [default: {shown(option, option.default)}]"
        help_text = f"{option.help}{default} [env: {envs}]"
        info: Any
        if option.switch:
            name = option.flag[2:]
            info = typer.Option(f"--{name}/--no-{name}", help=help_text, show_default=False)
            annotation: Any = Annotated[bool | None, info]
        else:
            info = typer.Option(option.flag, help=help_text, metavar=option.metavar,
                                show_default=False)
            annotation = Annotated[str | None, info]
        params.append(
            inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=annotation)
        )
    return params


def with_settings(command: Callable[..., None] | None = None, *,
                  lenient: bool = False) -> Any:
    """Give a command every setting's flag besides its own parameters.

    The command's first parameter, ``loaded``, receives the loaded settings; a bad value ends the
    command with one line per bad value (exit 2). With ``lenient`` the command receives them in
    ``loaded.problems`` instead (``config check``).
    """
    if command is None:
        return lambda command: _with_settings(command, lenient)
    return _with_settings(command, lenient)


def _with_settings(command: Callable[..., None], lenient: bool) -> Callable[..., None]:
    hints = get_type_hints(command, include_extras=True)
    own = [
        p.replace(annotation=hints[p.name])
        for p in inspect.signature(command).parameters.values()
        if p.name != "loaded"
    ]
    names = {p.name for p in own}

    def run(**kwargs: Any) -> None:
        flags = {k: v for k, v in kwargs.items() if k not in names}
        try:
            loaded = load(flags, lenient=lenient)
        except SettingError as exc:
            fail(str(exc))
        command(loaded, **{k: v for k, v in kwargs.items() if k in names})

    params = own + _option_parameters()
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__name__ = command.__name__
    run.__doc__ = command.__doc__
    return run
