"""Web UI benchmark: API latency over HTTP and time to a usable run page in Chromium, each
next to the CLI command that answers the same question on the same data.

    python bench/bench_ui.py [--events 1000000] [--repeats 40]

1. A real stack in a temp dir: Tansu, FalkorDB, ``agentstream worker`` and ``agentstream
   project analytics graph`` as child processes. The simulator publishes ``--events``
   events (12 agents), plus three synthetic runs of 500, 2,000 and 5,000 events by their
   own team of four agents. The bench waits until the processor and both projections have
   committed everything.
2. ``agentstream ui`` runs as its own process; requests go over loopback HTTP, one at a
   time: the runs list (first page, a filtered page, a deep page), the 2,000-event run's
   timeline, and debugger steps (the timeline is built once, then each step is served).
3. Chromium (Debian's, via Playwright) opens the 500- and 5,000-event run pages; "usable"
   is when the lanes are labelled and every action bar is painted on the canvas, timed
   from asking Playwright to navigate until it sees that (its IPC and polling included);
   "painted" is the same moment by the page's own clock from the navigation's start; and
   the longest main-thread task until then says whether the page froze on the way. The
   1-minute load average is recorded with every figure (the machine is shared).
4. Baselines, same data, same run: ``agentstream query`` for the runs list and the run's
   events, ``agentstream replay debug --run R --json`` for a step (the CLI rebuilds the
   timeline on every call). Ratio = UI time / CLI time (below 1: the UI is faster).

Goals (issue 12): API p95 <= 150 ms for the list and the timeline, <= 50 ms per step, a
5,000-event run usable in <= 1.5 s. Writes bench/results/bench_ui.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, print_table, write_results
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agentstream.processes import ManagedProcess, falkordb_argv, free_port, tansu_argv
from agentstream.settings import Settings, load_settings
from agentstream.stack import settings_env
from schemas.envelope import Event
from streams.admin import ensure_topics, wait_for_broker
from streams.emitter import EventFactory
from streams.simulator import SimulationConfig, generate

HOST = "127.0.0.1"
CLI = [sys.executable, "-m", "agentstream.cli"]
BIG_RUNS = {500: "run-big-500", 2000: "run-big-2000", 5000: "run-big-5000"}
GOALS = {"list_p95_ms": 150, "timeline_p95_ms": 150, "step_p95_ms": 50, "usable_5000_s": 1.5}


# --- the workload ------------------------------------------------------------------------


def big_run(n: int, run_id: str, start: datetime) -> list[Event]:
    """One run of exactly ``n`` events by a team of four (planner messages, then each
    worker thinks, decides, calls a tool and sometimes learns), causes chained like the
    simulator's."""
    rng = random.Random(n)
    t = [start]

    def clock() -> datetime:
        t[0] += timedelta(milliseconds=rng.randint(5, 400))
        return t[0]

    team = [f"{run_id}-{r}" for r in ("planner", "coder", "tester", "reviewer")]
    f = {a: EventFactory(a, run_id=run_id, source="/bench/ui", clock=clock) for a in team}
    out: list[Event] = [f[team[0]].run_started(f"synthetic run of {n} events")]
    last = {a: out[0] for a in team}
    tools = ("read_file", "run_tests", "lint", "git", "shell", "search_code")
    while len(out) < n - 1:
        a = team[1 + rng.randrange(3)] if rng.random() > 0.1 else team[0]
        left = n - 1 - len(out)
        if a == team[0] or left < 4:
            to = team[1 + rng.randrange(3)]
            e = f[a].message(to, f"next step for {to}", causes=(last[a].id,))
            out.append(e)
            last[a] = last[to] = e
            continue
        th = f[a].thought(
            "looking at the failing test again " * 4,
            model="gpt-4o",
            input_tokens=900,
            output_tokens=120,
            causes=(last[a].id,),
        )
        d = f[a].decision("call a tool", confidence=0.8, causes=(th.id,))
        s = f[a].action_started(
            rng.choice(tools), {"path": "src/x.py"}, expected="ok", causes=(d.id,)
        )
        ok = rng.random() > 0.15
        c = f[a].action_completed(
            s,
            status="ok" if ok else "error",
            result="done" if ok else "boom",
            actual="ok" if ok else "boom",
        )
        out += [th, d, s, c]
        last[a] = c
    out.append(f[team[0]].run_finished("failed", "synthetic", causes=(last[team[0]].id,)))
    return out[:n]


def tiny_runs(n: int, start: datetime) -> Iterator[Event]:
    """``n`` runs of three events (started, thought, finished) by 40 agents: many rows in
    the runs list for few events."""
    for i in range(n):
        at = start + timedelta(seconds=i)
        f = EventFactory(f"tiny-{i % 40}", run_id=f"run-tiny-{i:06d}", clock=lambda at=at: at)
        s = f.run_started(f"tiny run {i}")
        t = f.thought("quick look", model="gpt-4o-mini", input_tokens=10, causes=(s.id,))
        yield from (s, t, f.run_finished("succeeded" if i % 7 else "failed", causes=(t.id,)))


# --- the stack ----------------------------------------------------------------------------


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        kport, gport = free_port(HOST), free_port(HOST)
        self.settings: Settings = load_settings(
            data_dir=root / "data",
            kafka_url=f"kafka://{HOST}:{kport}",
            graph_url=f"falkordb://{HOST}:{gport}",
            metrics_port_base=0,  # free ports for the parts' metrics, never the defaults
        )
        self.kport, self.gport = kport, gport
        self.procs: list[ManagedProcess] = []
        self.ui: subprocess.Popen[str] | None = None
        self.url = ""

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **settings_env(self.settings)}

    def start(self) -> None:
        broker = ManagedProcess("broker", tansu_argv(HOST, self.kport), self.logs / "tansu.log")
        broker.start()
        self.procs.append(broker)
        broker.wait_for_port(HOST, self.kport, deadline_s=10)
        (self.root / "falkordb").mkdir()
        graph = ManagedProcess(
            "graph", falkordb_argv(HOST, self.gport, self.root / "falkordb"), self.logs / "g.log"
        )
        graph.start()
        self.procs.append(graph)
        graph.wait_for_port(HOST, self.gport, deadline_s=15)
        bootstrap = self.settings.bootstrap_servers
        asyncio.run(wait_for_broker(bootstrap))
        asyncio.run(ensure_topics(bootstrap, 6))
        for name, argv in (("worker", ["worker"]), ("project", ["project", "analytics", "graph"])):
            p = ManagedProcess(name, [*CLI, *argv], self.logs / f"{name}.log")
            p.start(env=self.env)
            self.procs.append(p)

    def start_ui(self) -> None:
        self.ui = subprocess.Popen(
            [*CLI, "ui", "--port", "0"], env=self.env, stdout=subprocess.PIPE, text=True
        )
        assert self.ui.stdout is not None
        line = self.ui.stdout.readline()
        self.url = line.split("UI: ", 1)[1].split("/runs", 1)[0].strip()

    def stop(self) -> None:
        if self.ui is not None:
            self.ui.terminate()
            self.ui.wait(10)
        for p in reversed(self.procs):
            p.stop()


async def publish(bootstrap: str, events: Iterable[Event], total: int, bar: Progress) -> None:
    from streams.producer import EventProducer

    task = bar.add_task("publish", total=total)
    producer = EventProducer(bootstrap)
    await producer.start()
    try:
        for i, e in enumerate(events):
            await producer.send(e)
            if i % 5000 == 0:
                bar.update(task, completed=i)
        await producer.flush()
    finally:
        await producer.close()
    bar.update(task, completed=total)


async def committed(bootstrap: str) -> tuple[int, int]:
    """(records committed by the slowest of processor/analytics/graph, records in the log)."""
    from schemas.topics import EPISODES, EVENTS, STATE, VIOLATIONS
    from streams.processor import committed_offsets
    from streams.state_reader import fetch_high_watermarks

    groups = {
        "agentstream-processor": (EVENTS,),
        "agentstream-analytics": (EVENTS, VIOLATIONS, EPISODES, STATE),
        "agentstream-graph": (EVENTS, VIOLATIONS),
    }
    hws = {
        t: await fetch_high_watermarks(bootstrap, t) for t in (EVENTS, VIOLATIONS, EPISODES, STATE)
    }
    total = sum(sum(hws[t].values()) for t in (EVENTS, VIOLATIONS, EPISODES, STATE))
    worst = None
    for group, topics in groups.items():
        lag = 0
        for t in topics:
            done = await committed_offsets(bootstrap, group, t, hws[t])
            lag += sum(max(0, hw - done.get(p, 0)) for p, hw in hws[t].items())
        worst = lag if worst is None else max(worst, lag)
    return total - (worst or 0), total


def wait_caught_up(stack: Stack, bar: Progress, timeout_s: float) -> float:
    t0 = time.monotonic()
    task = bar.add_task("process + project", total=None)
    while True:
        done, total = asyncio.run(committed(stack.settings.bootstrap_servers))
        bar.update(task, completed=done, total=total)
        if done >= total:
            return time.monotonic() - t0
        for p in stack.procs:
            if p.proc is not None and p.proc.poll() is not None:
                raise RuntimeError(f"{p.name} exited; see {p.log_path}")
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"not caught up after {timeout_s}s: {done}/{total}")
        time.sleep(2)


# --- measuring ------------------------------------------------------------------------------


def http_ms(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=300) as r:
        r.read()
        assert r.status == 200, url
    return (time.perf_counter() - t0) * 1000


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def cli_s(args: list[str], env: dict[str, str], stdin: str | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [*CLI, *args], env=env, input=stdin, capture_output=True, text=True, check=True, timeout=900
    )
    return time.perf_counter() - t0


PAINTED_JS = """
window.__painted = null; window.__longest = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longest = Math.max(window.__longest, e.duration);
}).observe({ type: 'longtask', buffered: true });
new MutationObserver(() => {
  const c = document.querySelector('canvas[data-bars-painted]');
  if (c && window.__painted === null && c.dataset.barsPainted === String(window.__bars)) {
    window.__painted = performance.now();
  }
}).observe(document, { attributes: true, subtree: true, attributeFilter: ['data-bars-painted'] });
"""


def browser_usable(url: str, run_id: str, bars: int, repeats: int) -> dict[str, list[float]]:
    """Per try: ``wall`` seconds from asking Playwright to navigate until it sees the lanes
    labelled and every action bar painted (its polling and IPC included); ``painted``
    seconds from the navigation's start to the end of that first full drawing, by the page's
    own clock; ``longest`` the longest main-thread task (ms) until then; and ``frames``, the
    canvas's own draw time (ms) for each of 10 wheel zooms after it."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    out: dict[str, list[float]] = {"wall": [], "painted": [], "longest": [], "frames": []}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium)
        for _ in range(repeats):
            ctx = b.new_context(viewport={"width": 1400, "height": 900})
            page = ctx.new_page()
            page.add_init_script(f"window.__bars = {bars};" + PAINTED_JS)
            t0 = time.perf_counter()
            page.goto(f"{url}/runs/{run_id}", wait_until="commit")
            page.wait_for_selector(f'canvas[data-bars-painted="{bars}"]', timeout=60_000)
            page.wait_for_selector(".lane-label")
            out["wall"].append(time.perf_counter() - t0)
            out["painted"].append(page.evaluate("window.__painted") / 1000)
            out["longest"].append(page.evaluate("window.__longest"))
            box = page.locator("canvas").bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            for _ in range(10):
                page.mouse.wheel(0, -120)
                page.wait_for_timeout(50)
                out["frames"].append(float(page.get_attribute("canvas", "data-draw-ms") or "nan"))
            ctx.close()
        b.close()
    return out


def load1() -> float:
    """The 1-minute load average now (the machine is shared: every figure carries it)."""
    return round(os.getloadavg()[0], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="simulated events")
    ap.add_argument("--repeats", type=int, default=40, help="requests per API figure")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds to catch up")
    ap.add_argument(
        "--tiny-runs", type=int, default=0, help="extra runs of 3 events each (runs list at scale)"
    )
    ap.add_argument("--results", default="bench_ui", help="name of the results file")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_ui_"))
    stack = Stack(root)
    figures: list[Figure] = []
    params: dict[str, Any] = {"events": args.events, "repeats": args.repeats, "goals": GOALS}
    loads: dict[str, float] = {}
    params["load_avg_1m_per_figure"] = loads

    def mark(done: list[Figure]) -> None:
        """The load average when each figure of this group was taken."""
        for f in done:
            loads.setdefault(f.name, load1())

    try:
        stack.start()
        sim = generate(SimulationConfig(agents=12, runs=None, seed=5, max_events=args.events))
        start = datetime(2026, 3, 1, tzinfo=UTC)
        big = [
            e
            for i, (n, rid) in enumerate(BIG_RUNS.items())
            for e in big_run(n, rid, start + timedelta(days=i))
        ]
        tiny = tiny_runs(args.tiny_runs, datetime(2026, 4, 1, tzinfo=UTC))
        total = args.events + len(big) + 3 * args.tiny_runs
        params["store_events"] = total
        params["tiny_runs"] = args.tiny_runs
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        ) as bar:
            asyncio.run(
                publish(
                    stack.settings.bootstrap_servers, itertools.chain(sim, big, tiny), total, bar
                )
            )
            params["catch_up_s"] = round(wait_caught_up(stack, bar, args.timeout), 1)
        params["load_avg_1m_after_catch_up"] = load1()
        stack.start_ui()
        url, env, n = stack.url, stack.env, args.repeats
        # the runs list
        runs = json.loads(urllib.request.urlopen(url + "/api/v1/runs?limit=1").read())["total"]
        params["runs"] = runs
        http_ms(url + "/api/v1/runs")  # warm: the first request opens the analytics route
        first = [http_ms(url + "/api/v1/runs?limit=50") for _ in range(n)]
        filtered = [
            http_ms(url + "/api/v1/runs?limit=50&status=failed&agent=coder-1") for _ in range(n)
        ]
        deep = [
            http_ms(url + f"/api/v1/runs?limit=50&offset={max(0, runs - 100)}&sort=events")
            for _ in range(n)
        ]
        runs_sql = (
            "SELECT run_id, goal, status, agents, started_at, duration_s, events, actions, "
            "errors, violations, input_tokens + output_tokens AS tokens, cost_usd FROM runs "
            "ORDER BY started_at DESC LIMIT 50"
        )
        cli_list = [cli_s(["query", runs_sql, "--format", "csv"], env) for _ in range(3)]
        figures += [
            Figure(
                "runs list p95 (first page)",
                pct(first, 0.95),
                "ms",
                baseline=min(cli_list) * 1000,
                baseline_name="agentstream query, best of 3",
            ),
            Figure("runs list p50 (first page)", pct(first, 0.5), "ms"),
            Figure("runs list p95 (agent + status filter)", pct(filtered, 0.95), "ms"),
            Figure("runs list p95 (last page, sorted by events)", pct(deep, 0.95), "ms"),
        ]
        mark(figures)
        # the 2,000-event run's timeline
        rid = BIG_RUNS[2000]
        tl = [http_ms(url + f"/api/v1/runs/{rid}/timeline") for _ in range(n)]
        ev_sql = (
            "SELECT time, agent_id, type, status, tool, call_id, summary FROM events "
            f"WHERE run_id = '{rid}' ORDER BY time"
        )
        cli_tl = [cli_s(["query", ev_sql, "--format", "csv"], env) for _ in range(3)]
        figures += [
            Figure(
                "timeline p95 (2,000-event run)",
                pct(tl, 0.95),
                "ms",
                baseline=min(cli_tl) * 1000,
                baseline_name="agentstream query of the run's events",
            ),
            Figure("timeline p50 (2,000-event run)", pct(tl, 0.5), "ms"),
        ]
        mark(figures)
        # the debugger
        build = http_ms(url + f"/api/v1/runs/{rid}/steps")
        count = json.loads(urllib.request.urlopen(url + f"/api/v1/runs/{rid}/steps").read())[
            "count"
        ]
        rng = random.Random(1)
        steps = [
            http_ms(url + f"/api/v1/runs/{rid}/steps/{rng.randrange(count)}") for _ in range(n)
        ]
        cli_step = [cli_s(["replay", "debug", "--run", rid, "--json"], env) for _ in range(2)]
        sim_runs = json.loads(
            urllib.request.urlopen(url + "/api/v1/runs?limit=1&agent=coder-1").read()
        )["runs"]
        figures += [
            Figure(
                "debugger step p95 (2,000-event run)",
                pct(steps, 0.95),
                "ms",
                baseline=min(cli_step) * 1000,
                baseline_name="replay debug --json (whole run)",
            ),
            Figure("debugger step p50", pct(steps, 0.5), "ms"),
            Figure(
                "debugger first load (2,000-event run)",
                build,
                "ms",
                baseline=min(cli_step) * 1000,
                baseline_name="replay debug --json",
            ),
        ]
        mark(figures)
        if sim_runs:  # a simulated run (none when --events 0)
            sim_run = sim_runs[0]["run_id"]
            build_sim = http_ms(url + f"/api/v1/runs/{sim_run}/steps")
            cli_sim = cli_s(["replay", "debug", "--run", sim_run, "--json"], env)
            figures.append(
                Figure(
                    f"debugger first load (simulated run {sim_run})",
                    build_sim,
                    "ms",
                    baseline=cli_sim * 1000,
                    baseline_name="replay debug --json",
                )
            )
        mark(figures)
        # the run page in Chromium
        for size in (500, 5000):
            rid = BIG_RUNS[size]
            bars = json.loads(urllib.request.urlopen(url + f"/api/v1/runs/{rid}/timeline").read())
            got = browser_usable(url, rid, len(bars["bars"]), 5)
            times, frames = got["wall"], got["frames"]
            ev_sql = (
                "SELECT time, agent_id, type, status, tool, call_id, summary FROM events "
                f"WHERE run_id = '{rid}' ORDER BY time"
            )
            base = min(cli_s(["query", ev_sql, "--format", "csv"], env) for _ in range(3))
            figures += [
                Figure(
                    f"run page usable, {size}-event run (median of 5)",
                    statistics.median(times),
                    "s",
                    baseline=base,
                    baseline_name="agentstream query of the run's events",
                ),
                Figure(f"run page usable, {size}-event run (worst of 5)", max(times), "s"),
                Figure(
                    f"run page painted, {size}-event run, page clock (median of 5)",
                    statistics.median(got["painted"]),
                    "s",
                ),
                Figure(
                    f"longest main-thread task while loading, {size}-event run (worst of 5)",
                    max(got["longest"]),
                    "ms",
                ),
                Figure(f"timeline redraw on zoom, {size}-event run (p95)", pct(frames, 0.95), "ms"),
            ]
            mark(figures)
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)
    by = {f.name: f.value for f in figures}
    params["met"] = {
        "list_p95_ms": by["runs list p95 (first page)"] <= GOALS["list_p95_ms"],
        "timeline_p95_ms": by["timeline p95 (2,000-event run)"] <= GOALS["timeline_p95_ms"],
        "step_p95_ms": by["debugger step p95 (2,000-event run)"] <= GOALS["step_p95_ms"],
        "usable_5000_s": by["run page usable, 5000-event run (median of 5)"]
        <= GOALS["usable_5000_s"],
    }
    path = write_results(args.results, figures, params)
    print_table(
        f"web UI over {params['store_events']:,} events, {params.get('runs', 0):,} runs "
        "(baseline = the CLI; ratio < 1: the UI is faster)",
        figures,
    )
    print(f"goals met: {params['met']}  →  {path}")


if __name__ == "__main__":
    main()
