"""The ``agentstream`` command.

Each module in ``agentstream/commands/`` defines ``register(app)`` and adds its own
commands, so adding a command never touches this file. Command modules import heavy
libraries (chDB, torch, faust) inside the command functions, to keep ``--help`` fast.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

from agentstream import commands

app = typer.Typer(
    name="agentstream",
    help="Event-sourced stream processing for AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(app)


_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
