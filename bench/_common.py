"""Shared helpers for benchmarks: time a callable, compare with a baseline, record, print.

Usage in a ``bench/<name>.py`` script::

    from _common import Figure, best_of, write_results, print_table

    rate = best_of(3, lambda: run_sdk())          # each call returns events/s
    base = best_of(3, lambda: run_raw())
    figures = [
        Figure("sdk publish", rate, "events/s", baseline=base, goal=100_000),
    ]
    path = write_results("bench_producer", figures, params={"events": 200_000})
    print_table("producer", figures)

``write_results`` writes ``bench/results/<name>.json`` with the figures, the parameters,
the machine (CPU model, cores, Python, platform) and the git commit, so a number can always
be traced back to what produced it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Figure:
    """One measured number; ``ratio`` = value / baseline when a baseline is given."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    goal: float | None = None
    goal_ratio: float | None = None

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None

    @property
    def meets_goal(self) -> bool | None:
        """None when there is no goal; higher is better for every goal here."""
        checks = []
        if self.goal is not None:
            checks.append(self.value >= self.goal)
        if self.goal_ratio is not None and self.ratio is not None:
            checks.append(self.ratio >= self.goal_ratio)
        return all(checks) if checks else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "meets_goal": self.meets_goal}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    """The best of ``repeats`` calls of a function that returns a rate (higher is better)."""
    return max(fn() for _ in range(repeats))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "."],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    ).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def write_results(
    name: str, figures: Iterable[Figure], params: dict[str, Any] | None = None
) -> Path:
    """Write ``bench/results/<name>.json``; returns its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    doc = {
        "benchmark": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_sha(),
        "machine": machine(),
        "params": params or {},
        "figures": [f.as_dict() for f in figures],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}{unit}"
    return f"{x:.3g}{unit}"


def print_table(title: str, figures: Iterable[Figure]) -> None:
    """A rich table: figure, value, baseline, ratio, goal, met?"""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("figure", "value", "unit", "baseline", "ratio", "goal", "met"):
        table.add_column(col, justify="left" if col in ("figure", "unit") else "right")
    for f in figures:
        goal = " & ".join(
            g
            for g in (
                _num(f.goal) if f.goal is not None else "",
                f"{f.goal_ratio:.0%} of baseline" if f.goal_ratio is not None else "",
            )
            if g
        )
        met = {None: "", True: "yes", False: "NO"}[f.meets_goal]
        base = _num(f.baseline) + (f" ({f.baseline_name})" if f.baseline_name else "")
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "-"
        table.add_row(f.name, _num(f.value), f.unit, base, ratio, goal or "-", met)
    Console(width=max(120, Console().width)).print(table)


async def with_broker(log_dir: Path, trial: Callable[[str], Any], partitions: int = 6) -> Any:
    """Run ``await trial(bootstrap)`` against a fresh Tansu broker with the topics created.

    Each trial gets its own in-memory log, so runs of a benchmark never see each other's
    records; the broker is stopped whatever the trial does.
    """
    from agentstream.processes import ManagedProcess, free_port, tansu_argv
    from streams.admin import ensure_topics, wait_for_broker

    host = "127.0.0.1"
    port = free_port(host)
    proc = ManagedProcess("broker", tansu_argv(host, port), log_dir / f"tansu-{port}.log")
    proc.start()
    try:
        proc.wait_for_port(host, port, deadline_s=10)
        bootstrap = f"{host}:{port}"
        await wait_for_broker(bootstrap)
        await ensure_topics(bootstrap, partitions)
        return await trial(bootstrap)
    finally:
        proc.stop()
