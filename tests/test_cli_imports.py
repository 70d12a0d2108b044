"""The CLI starts fast because heavy libraries load only in the commands that use them.

Speed itself is measured in bench/bench_cli.py (never a timed assertion here); these tests
check the cause: which modules an invocation imports (``python -X importtime``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentstream.cli import build_app, command_index

# libraries that cost tens to hundreds of ms to import; none may load for --help
HEAVY = {
    "pandas", "numpy", "torch", "sentence_transformers", "chromadb", "faust", "mode",
    "aiokafka", "chdb", "clickhouse_connect", "pyarrow", "pydantic_settings", "falkordb",
    "fastapi", "starlette", "uvicorn", "grpc", "aiohttp", "opentelemetry", "msgspec",
}  # fmt: skip

# what --help needs none of: pydantic is what typer 0.29 coerces every parameter through
# (+~120 ms: pyproject.toml pins typer<0.29), rich is the tables and colours of a command's
# output (~30-40 ms: agentstream.console makes its consoles on first use; help is click's
# plain text, rich_markup_mode=None)
NOT_FOR_HELP = {"pydantic", "pydantic_core", "rich"}


def imported(*argv: str, env: dict[str, str] | None = None) -> set[str]:
    """Top-level package names imported by ``agentstream ARGV``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agentstream.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def _why(heavy: set[str]) -> str:
    return (
        f"imports {sorted(heavy)} at start-up: import them inside the command function "
        "(a module-level import in agentstream/commands/*.py runs for every --help)"
    )


def _why_not_for_help(loaded: set[str]) -> str:
    return (
        f"--help imports {sorted(loaded)}: rich belongs inside the function that prints "
        "(agentstream.console's consoles are lazy; import rich.table where a table is made); "
        "pydantic means typer builds its parameter coercion (typer>=0.29) or a command "
        "module loads the settings model at import"
    )


def _sub_commands() -> list[tuple[str, str]]:
    """(group, command) for every command of a sub-app (``replay debug``, ``memory run``)."""
    app = build_app()
    return sorted(
        (g.name, c.name)
        for g in app.registered_groups
        if g.name and g.typer_instance is not None
        for c in g.typer_instance.registered_commands
        if c.name
    )


def test_top_level_help_imports_no_heavy_library():
    loaded = imported("--help")
    assert not loaded & HEAVY, _why(loaded & HEAVY)
    assert not loaded & NOT_FOR_HELP, _why_not_for_help(loaded & NOT_FOR_HELP)


@pytest.mark.parametrize("command", sorted(command_index()))
def test_each_command_help_imports_no_heavy_library(command):
    loaded = imported(command, "--help")
    assert not loaded & HEAVY, _why(loaded & HEAVY)
    assert not loaded & NOT_FOR_HELP, _why_not_for_help(loaded & NOT_FOR_HELP)


@pytest.mark.parametrize("group,command", _sub_commands())
def test_each_sub_command_help_imports_neither_rich_nor_pydantic(group, command):
    loaded = imported(group, command, "--help")
    assert not loaded & (HEAVY | NOT_FOR_HELP), _why_not_for_help(loaded & NOT_FOR_HELP)


def test_help_lists_every_command_and_option_in_plain_text():
    """Lazy consoles and plain click help keep --help informative: every command with its
    summary, every option of a command with its help text."""
    done = subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for name in command_index():
        if name not in ("supervise", "gate"):  # hidden: internal entry points of the stack
            assert f"  {name} " in done.stdout, name
    done = subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "query", "--help"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    for option, words in (
        ("--named", "run a named query"),
        ("--format", "output format"),
        ("--timing", "engine's time"),
        ("--max-rows", "rows printed"),
    ):
        assert option in done.stdout and words in done.stdout, option
    assert "\x1b[" not in done.stdout  # no colour codes: plain text to a pipe


def test_the_demo_default_matches_without_importing_the_demo():
    import agentstream.commands.demo as command
    import agentstream.demo as demo

    assert command.DEFAULT_EVENTS == demo.DEFAULT_EVENTS == demo.DemoConfig().events


def test_the_index_finds_every_command():
    """Loading one module per command gives exactly the commands of the full app."""
    full = build_app()
    names = {c.name for c in full.registered_commands} | {g.name for g in full.registered_groups}
    assert set(command_index()) == names
    one = build_app(["query", "SELECT 1"])
    assert [c.name for c in one.registered_commands] == ["query"]


OWNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from projections.analytics.projection import AnalyticsProjection
    from projections.analytics.rows import events_table
    from projections.analytics.sample import sample_events
    p = AnalyticsProjection(sys.argv[1], serve_queries_in=Path(sys.argv[2]))
    p.setup()
    p.apply_table(events_table(list(sample_events(100, agents=2))))
    print("ready", flush=True)
    sys.stdin.read()
    p.close()
    """
)


@pytest.fixture
def served(tmp_path) -> Iterator[dict[str, str]]:
    url = f"chdb://{tmp_path / 'clickhouse'}"
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, url, str(tmp_path / "run")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield {
            **os.environ,
            "AGENTSTREAM_DATA_DIR": str(tmp_path),
            "AGENTSTREAM_CLICKHOUSE_URL": url,
        }
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)


def test_a_query_through_the_owner_loads_neither_engine_nor_arrow(served):
    """Through the chDB owner's service the CLI needs no engine, no Arrow, no settings
    model: the owner checks, runs and renders."""
    for argv in (["query", "SELECT 1"], ["query", "-n", "agent_leaderboard", "-f", "csv"]):
        loaded = imported(*argv, env=served)
        assert not loaded & HEAVY, argv
        # typer<0.29 parses the parameters without pydantic (see NOT_FOR_HELP)
        assert "pydantic" not in loaded, argv


def test_the_cli_without_an_owner_still_answers(tmp_path):
    """The direct route (the CLI opens chDB itself) loads what it needs on demand."""
    url = f"chdb://{tmp_path / 'clickhouse'}"
    env = {**os.environ, "AGENTSTREAM_DATA_DIR": str(tmp_path), "AGENTSTREAM_CLICKHOUSE_URL": url}
    subprocess.run(
        [sys.executable, "-c", OWNER.replace("sys.stdin.read()", ""), url, str(tmp_path / "x")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    done = subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "query", "SELECT 41 + 1 AS n", "-f", "csv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['"n"', "42"]
    assert Path(tmp_path / "clickhouse").is_dir()
