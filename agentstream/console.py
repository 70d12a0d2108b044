"""Shared terminal output: one rich console, and the one way errors reach the user."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from agentstream.settings import Settings

console = Console()
err_console = Console(stderr=True)


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
