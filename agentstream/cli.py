"""The ``agentstream`` command.

Each module in ``agentstream/commands/`` defines ``register(app)`` and adds its own
commands, so adding a command never touches this file. Command modules import heavy
libraries (chDB, torch, faust, pyarrow) inside the command functions, to keep start-up fast.

Start-up imports only what the invocation needs: ``agentstream query …`` loads the module
that registers ``query`` (found by reading the command modules' ``register`` lines, not by
importing them); ``agentstream --help`` and anything unrecognised load every module. The
module attribute ``app`` (what tests drive with ``CliRunner``) always has every command.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

COMMANDS_PACKAGE = "agentstream.commands"
# app.command("name") / app.add_typer(x, name="name") in a module's register()
_REGISTERS = re.compile(
    r"""(?<![\w.])app\.command\(\s*["']([\w-]+)["']"""
    r"""|(?<![\w.])app\.add_typer\([^)]*name\s*=\s*["']([\w-]+)["']"""
)


def new_app() -> typer.Typer:
    import typer

    app = typer.Typer(
        name="agentstream",
        help="Event-sourced stream processing for AI agents.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # click's plain help: typer's rich help imports ~0.1 s more
    )
    app.callback()(_root)  # a group even when only one command is loaded
    return app


def _root() -> None:
    """Event-sourced stream processing for AI agents."""


def _modules() -> list[str]:
    folder = Path(__file__).parent / "commands"
    return sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")


def command_index() -> dict[str, str]:
    """Command name -> the module whose ``register`` adds it (read from the source)."""
    folder = Path(__file__).parent / "commands"
    index: dict[str, str] = {}
    for name in _modules():
        try:
            text = (folder / f"{name}.py").read_text()
        except OSError:
            continue
        for m in _REGISTERS.finditer(text):
            index.setdefault(m.group(1) or m.group(2), name)
    return index


def _register(app: typer.Typer, modules: list[str]) -> None:
    for name in modules:
        importlib.import_module(f"{COMMANDS_PACKAGE}.{name}").register(app)


def _names(app: typer.Typer) -> set[str]:
    return {c.name for c in app.registered_commands if c.name} | {
        g.name for g in app.registered_groups if g.name
    }


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """An app with the commands this command line needs (every command when unsure)."""
    app = new_app()
    words = [a for a in (argv or []) if not a.startswith("-")]
    if words:
        module = command_index().get(words[0])
        if module is not None:
            _register(app, [module])
            if words[0] in _names(app):
                return app
            app = new_app()  # the index was wrong about this module: load everything
    _register(app, _modules())
    return app


def __getattr__(name: str) -> Any:
    """``agentstream.cli.app``: the app with every command (built on first use)."""
    if name == "app":
        full = build_app()
        globals()["app"] = full
        return full
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    build_app(sys.argv[1:])()


if __name__ == "__main__":
    main()
