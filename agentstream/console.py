"""Shared terminal output: one rich console, and the one way errors reach the user.

The consoles are made on first use, not at import: importing rich's console costs ~30 ms,
which every command module would otherwise pay at start-up, ``--help`` included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, cast

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from agentstream.settings import Settings


class _LazyConsole:
    """Stands for a rich ``Console`` that is created (and rich imported) on first use."""

    __slots__ = ("_made", "_stderr")

    def __init__(self, stderr: bool) -> None:
        object.__setattr__(self, "_stderr", stderr)
        object.__setattr__(self, "_made", None)

    def _console(self) -> Console:
        made = self._made
        if made is None:
            from rich.console import Console

            made = Console(stderr=self._stderr)
            object.__setattr__(self, "_made", made)
        return made

    def __getattr__(self, name: str) -> Any:
        return getattr(self._console(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._console(), name, value)

    def __enter__(self) -> Console:
        return self._console().__enter__()

    def __exit__(self, *exc: object) -> None:
        self._console().__exit__(*exc)  # type: ignore[arg-type]


console = cast("Console", _LazyConsole(stderr=False))
err_console = cast("Console", _LazyConsole(stderr=True))


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_or_exit(**overrides: object) -> Settings:
    """Load the settings, or exit with one line naming the bad setting (no pydantic dump)."""
    from pydantic import ValidationError

    from agentstream.settings import load_settings

    try:
        return load_settings(**overrides)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if where:
            fail(f"settings: {where}: {msg} — fix AGENTSTREAM_{where.upper()} or the config file")
        fail(f"settings: {msg} — fix that AGENTSTREAM_* variable or the config file")
