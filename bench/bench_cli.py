"""CLI speed: wall time of ``agentstream`` invocations against ``python -c pass``.

    python bench/bench_cli.py               # 15 runs of each, median
    python bench/bench_cli.py --runs 5

Measured (each a fresh process, output to /dev/null, median of ``--runs``; every round
runs the baseline and each case once, in turn, so machine load hits them alike):

- baseline: ``python -c pass`` with the same interpreter;
- ``agentstream --help``, ``agentstream query --help`` and ``--help`` of every command
  and sub-command (goal: each <= 0.2 s);
- ``agentstream query "SELECT 1"`` with the chDB owner's query service up (another
  process holds a store and serves reads; goal <= 0.25 s), and with nobody holding the
  store (the CLI opens chDB itself: no goal, reported);
- a named query (``agent_leaderboard``) through the service;
- the engine's own time for ``SELECT 1`` (``--timing``);
- for scale, the import every command pays whatever it does: typer (pinned below 0.29,
  which coerces every non-flag parameter through pydantic, +~120 ms; rich is imported
  only by the commands that print with it, when they print);
- for every case also the child's CPU time (user + system, from ``wait4``), which load
  from other work on the machine disturbs less than wall time.

It also records the top of ``python -X importtime`` for ``--help`` and for the query
through the service. Figures go to ``bench/results/bench_cli.json``. The console script is
the one next to the interpreter (``bin/agentstream``), as a user runs it without pyenv's
shim.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _common import Figure, write_results

FLOOR = "python -c 'import typer' (framework floor)"
HELP_GOAL_S = 0.2
QUERY_GOAL_S = 0.25

OWNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from projections.analytics.projection import AnalyticsProjection
    p = AnalyticsProjection(sys.argv[1], serve_queries_in=Path(sys.argv[2]))
    p.setup()
    print("ready", flush=True)
    sys.stdin.read()
    p.close()
    """
)


def cli() -> list[str]:
    script = Path(sys.executable).parent / "agentstream"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "agentstream.cli"]


def commands() -> list[list[str]]:
    """Every command and sub-command, as argv prefixes."""
    import typer.main

    from agentstream.cli import app

    group = typer.main.get_command(app)
    out: list[list[str]] = []
    for name, cmd in sorted(group.commands.items()):  # type: ignore[attr-defined]
        out.append([name])
        for sub in sorted(getattr(cmd, "commands", {}) or {}):
            out.append([name, sub])
    return out


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child: user + system) of one invocation."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed: {err.decode()[-500:]}")
    return elapsed, usage.ru_utime + usage.ru_stime


def importtime(argv: list[str], env: dict[str, str], top: int = 12) -> list[dict[str, object]]:
    """The heaviest top-level imports (cumulative µs) of one invocation."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agentstream.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and not m.group(3):  # depth 0: no indent after "| "
            rows.append(
                {"module": m.group(4), "self_us": int(m.group(1)), "cum_us": int(m.group(2))}
            )
    total = sum(int(r["cum_us"]) for r in rows)  # type: ignore[call-overload]
    rows.sort(key=lambda r: -int(r["cum_us"]))  # type: ignore[call-overload]
    return [{"total_us": total}, *rows[:top]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from projections.analytics.projection import AnalyticsProjection
    from projections.analytics.rows import events_table
    from projections.analytics.sample import sample_events

    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    url = f"chdb://{tmp / 'clickhouse'}"
    p = AnalyticsProjection(url)
    p.setup()
    p.apply_table(events_table(list(sample_events(2000, agents=5))))
    p.close()
    env = {
        **os.environ,
        "AGENTSTREAM_DATA_DIR": str(tmp),
        "AGENTSTREAM_CLICKHOUSE_URL": url,
        "COLUMNS": "120",
    }
    base = cli()
    baseline = [sys.executable, "-c", "pass"]
    helps = {"--help": [*base, "--help"]}
    for cmd in commands():
        helps[" ".join(cmd) + " --help"] = [*base, *cmd, "--help"]

    samples: dict[str, list[tuple[float, float]]] = {"python -c pass": []}
    # what the CLI framework alone costs
    floor = [sys.executable, "-c", "import typer"]
    cases: dict[str, list[str]] = {FLOOR: floor, **helps}

    # nobody holds the store: the CLI opens chDB itself
    direct = {'query "SELECT 1" (CLI opens chDB)': [*base, "query", "SELECT 1"]}
    owner = None
    try:
        for _ in range(args.runs):
            samples["python -c pass"].append(run_once(baseline, env))
            for name, argv in direct.items():
                samples.setdefault(name, []).append(run_once(argv, env))
        owner = subprocess.Popen(
            [sys.executable, "-c", OWNER, url, str(tmp / "run")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        cases['query "SELECT 1" (service up)'] = [*base, "query", "SELECT 1"]
        cases["query --named agent_leaderboard (service up)"] = [
            *base, "query", "--named", "agent_leaderboard",
        ]  # fmt: skip
        for _ in range(args.runs):
            samples["python -c pass"].append(run_once(baseline, env))
            for name, argv in cases.items():
                samples.setdefault(name, []).append(run_once(argv, env))
        timing = subprocess.run(
            [*base, "query", "SELECT 1", "--timing"], env=env, capture_output=True, text=True
        ).stderr
        engine_ms = float(m.group(1)) if (m := re.search(r"engine ([\d.]+) ms", timing)) else None
        imports = {
            "--help": importtime(["--help"], env),
            'query "SELECT 1" (service up)': importtime(["query", "SELECT 1"], env),
            "query --help": importtime(["query", "--help"], env),
        }
    finally:
        if owner is not None:
            assert owner.stdin is not None
            owner.stdin.close()
            owner.wait(timeout=60)

    base_s = statistics.median(w for w, _ in samples["python -c pass"])
    base_cpu = statistics.median(c for _, c in samples["python -c pass"])
    figures, rows = [], []
    for name, xs in samples.items():
        med = statistics.median(w for w, _ in xs)
        cpu = statistics.median(c for _, c in xs)
        goal = None
        if name.endswith("--help"):
            goal = HELP_GOAL_S
        elif "SELECT 1" in name and "service" in name:
            goal = QUERY_GOAL_S
        figures.append(
            Figure(name, med * 1e3, "ms", baseline=base_s * 1e3, baseline_name="python -c pass")
        )
        figures.append(
            Figure(
                f"{name} (CPU)", cpu * 1e3, "ms cpu", baseline=base_cpu * 1e3,
                baseline_name="python -c pass (CPU)",
            )
        )  # fmt: skip
        rows.append((name, med, max(w for w, _ in xs), med / base_s, cpu, goal))
    params = {
        "runs": args.runs,
        "cli": base,
        "goals_s": {"--help": HELP_GOAL_S, 'query "SELECT 1" (service up)': QUERY_GOAL_S},
        "met": {n: (m <= g) for n, m, _, _, _, g in rows if g is not None},
        "engine_ms_select_1": engine_ms,
        "importtime_top": imports,
        "load_average": os.getloadavg(),
    }
    path = write_results("bench_cli", figures, params)

    table = Table(title=f"CLI wall time, median of {args.runs} (baseline python -c pass)")
    for col in ("invocation", "median", "max", "x baseline", "CPU", "goal", "met"):
        table.add_column(col, justify="left" if col == "invocation" else "right")
    for name, med, mx, ratio, cpu, goal in rows:
        met = "" if goal is None else ("yes" if med <= goal else "NO")
        table.add_row(
            name, f"{med * 1e3:.0f} ms", f"{mx * 1e3:.0f} ms", f"{ratio:.1f}x",
            f"{cpu * 1e3:.0f} ms", f"{goal * 1e3:.0f} ms" if goal else "-", met,
        )  # fmt: skip
    console = Console(width=max(120, Console().width))
    console.print(table)
    console.print(f"engine time of SELECT 1: {engine_ms} ms; load average {os.getloadavg()}")
    for name, top in imports.items():
        total = top[0]["total_us"]
        heavy = ", ".join(f"{r['module']} {int(r['cum_us']) / 1e3:.0f}" for r in top[1:7])  # type: ignore[call-overload]
        console.print(f"imports of {name}: {int(total) / 1e3:.0f} ms top-level; {heavy} (ms)")  # type: ignore[call-overload]
    console.print(f"written to {path}")


if __name__ == "__main__":
    main()
