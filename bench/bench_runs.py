"""Run-model benchmark: listing and reading runs from the `runs` view over many runs.

    python bench/bench_runs.py                  # 100k runs x 4 agents (2M events)
    python bench/bench_runs.py --runs 20000     # smaller
    python bench/bench_runs.py --batches 1      # one insert, rollups merged by OPTIMIZE FINAL

The events are generated inside chDB (``INSERT … SELECT … FROM numbers(N)``) through the
real materialized views, so ``run_totals`` and ``run_agent`` are what the projection
builds: each run has 4 agents with 5 events each (run_started, thought, completed action,
decision, run_finished; every 7th action an error, every 5th run failed). They arrive in
``--batches`` inserts (default 40), interleaved so that each run's four agents land in
different batches, and the rollups are left to the background merges, as the live
projection leaves them: a run has several unmerged ``run_totals`` rows, which is what makes
``FINAL`` costly. ``--batches 1`` loads one insert and merges the rollups (OPTIMIZE FINAL).

Measured (median of 7 warm runs, milliseconds: lower is better):

- a page of 50 runs, newest first: the named query ``recent_runs`` (keys first, then the
  rows) at offset 0 and at the middle, and a plain ``SELECT * FROM runs ORDER BY
  started_at DESC LIMIT 50``;
- one run by id, counts by status (``runs_by_status``), the 20 most expensive runs
  (``cost_per_run``), one run's per-agent shares (``run_agent_costs``);
- baseline: the same page computed from raw ``events`` (``GROUP BY run_id`` over every
  event), i.e. what an analyst had to write without the run model;
- the web UI's runs list (``agentstream.ui.runs``: the page's keys chosen on raw
  ``run_totals``, then only those runs merged) for the first page, an agent + status filter,
  the last page sorted by events, a goal-text filter and one run, each against the same page
  read from the ``runs`` view (the UI's previous read path, still its fallback).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _common import Figure, print_table, write_results
from rich.progress import track

from agentstream.ui import runs as ui_runs
from projections.analytics.projection import AnalyticsProjection
from projections.analytics.queries import NAMED_QUERIES

SYNTH = """
INSERT INTO {db}.events (event_id, type, category, time, agent_id, run_id, task_id, tenant,
    source, causes, traceparent, model, tool, call_id, status, input_tokens, output_tokens,
    cost_usd, latency_ms, summary, payload, log_partition, log_offset)
SELECT
    generateUUIDv4(number), t, 'x',
    toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalMillisecond(run * 1000 + k * 37),
    concat('agent-', toString((run + a) % 40)), concat('run-', toString(run)), NULL,
    'default', '/bench', [], NULL, NULL, if(k = 2, 'search', NULL), NULL,
    multiIf(k = 2, if(number % 7 = 0, 'error', 'ok'),
            k = 4, if(run % 5 = 0, 'failed', 'succeeded'), NULL),
    if(k = 1, 100 + number % 900, 0), if(k = 1, 50, 0), if(k = 1, (number % 1000) / 1e5, 0),
    if(k = 2, 100.0, NULL), '', if(k = 0, '{{"goal":"g"}}', '{{}}'), NULL, NULL
FROM
(
    SELECT number, intDiv(number, 20) AS run, intDiv(number % 20, 5) AS a, number % 5 AS k,
        arrayElement(['agent.lifecycle.run_started.v1', 'agent.think.thought.v1',
            'agent.act.completed.v2', 'agent.think.decision.v1',
            'agent.lifecycle.run_finished.v1'], k + 1) AS t
    FROM numbers({start}, {count})
)
"""

RAW_PAGE = """
SELECT e.run_id AS run_id, min(e.time) AS started_at, max(e.time) AS ended_at,
    count() AS events,
    countIf(startsWith(e.type, 'agent.act.completed.')) AS actions,
    countIf(startsWith(e.type, 'agent.act.completed.') AND e.status = 'error') AS errors,
    sum(e.cost_usd) AS cost_usd, groupUniqArray(e.agent_id) AS agents,
    argMaxIf(e.status, e.time, startsWith(e.type, 'agent.lifecycle.run_finished.'))
        AS final_status
FROM events AS e
WHERE e.run_id IS NOT NULL
GROUP BY e.run_id
ORDER BY started_at DESC, run_id
LIMIT 50 OFFSET {offset}
"""


def median_ms(fn: Callable[[], object], repeats: int = 7) -> float:
    fn()  # warm
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    return statistics.median(runs)


class _Backends:
    """What ``agentstream.ui.runs`` needs of the UI's backends: rows as dicts."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.reader.query_arrow(sql, parameters=params or {}).to_pylist()


def _same(page: dict[str, Any]) -> dict[str, Any]:
    """A page with costs rounded to 1e-9 USD (float sums depend on the merge order)."""
    runs = [{**r, "cost_usd": round(r["cost_usd"], 9)} for r in page["runs"]]
    return {**page, "runs": runs}


def ui_figures(reader: Any, runs: int, some_run: str) -> list[Figure]:
    """The UI's runs list vs the same page from the ``runs`` view, same data, same process."""
    b = _Backends(reader)
    cases = [
        ("first page", ui_runs.RunFilter()),
        ("agent + status filter", ui_runs.RunFilter(agent="agent-3", status="failed")),
        ("last page, sorted by events", ui_runs.RunFilter(sort="events", offset=runs - 50)),
        ("goal-text filter", ui_runs.RunFilter(goal="G")),
    ]
    out = []
    for name, flt in cases:
        new, old = ui_runs.list_runs(b, flt), ui_runs._list_from_view(b, flt, flt.limit)
        assert _same(new) == _same(old), f"{name}: the UI's page differs from the view's"
        out.append(
            Figure(
                f"UI runs list: {name}",
                median_ms(lambda f=flt: ui_runs.list_runs(b, f)),
                "ms",
                baseline=median_ms(lambda f=flt: ui_runs._list_from_view(b, f, f.limit)),
                baseline_name="same page from the runs view",
            )
        )
    one = f"SELECT * FROM runs WHERE run_id = '{some_run}'"
    out.append(
        Figure(
            "UI one run (get_run)",
            median_ms(lambda: ui_runs.get_run(b, some_run)),
            "ms",
            baseline=median_ms(lambda: reader.query_arrow(one)),
            baseline_name="the run from the runs view",
        )
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=None, help="chDB directory (default: tmp)")
    ap.add_argument("--batches", type=int, default=40, help="interleaved inserts (1: merged)")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-runs-"))
    proj = AnalyticsProjection(f"chdb://{root / 'ch'}", database="bench_runs")
    proj.setup()
    store = proj.store
    db = "bench_runs"
    events = args.runs * 20
    t0 = time.perf_counter()
    if store.scalar(f"SELECT count() FROM {db}.events") != events:
        store.command(f"TRUNCATE TABLE {db}.events")
        for t in ("agent_minute", "tool_minute", "run_agent", "run_totals"):
            store.command(f"TRUNCATE TABLE {db}.{t}")
        if args.batches <= 1:
            chunk = 1_000_000
            for start in range(0, events, chunk):
                store.command(SYNTH.format(db=db, start=start, count=min(chunk, events - start)))
            for t in ("run_agent", "run_totals"):
                store.command(f"OPTIMIZE TABLE {db}.{t} FINAL")
        else:
            # batch b: every block of 5 events (one agent's share of a run) with index % n = b
            for b in track(range(args.batches), description="loading"):
                store.command(
                    SYNTH.format(db=db, start=0, count=events).replace(
                        f"FROM numbers(0, {events})",
                        f"FROM numbers(0, {events}) WHERE intDiv(number, 5) % {args.batches} = {b}",
                    )
                )
    load_s = time.perf_counter() - t0
    assert store.scalar(f"SELECT count() FROM {db}.runs") == args.runs
    assert not any(proj.verify_rollups().values())

    reader = store.reader()
    reader.database = db

    def named(name: str, **params: object) -> Callable[[], object]:
        q = NAMED_QUERIES[name]
        bound = q.bind(params)
        return lambda: reader.query_arrow(q.sql, parameters=bound)

    def sql(text: str) -> Callable[[], object]:
        return lambda: reader.query_arrow(text)

    middle = args.runs // 2
    raw_first = median_ms(sql(RAW_PAGE.format(offset=0)), repeats=3)
    raw_middle = median_ms(sql(RAW_PAGE.format(offset=middle)), repeats=3)
    some_run = f"run-{args.runs // 3}"
    figures = [
        Figure(
            "page of 50 runs, newest first (recent_runs)",
            median_ms(named("recent_runs", limit=50, offset=0)),
            "ms",
            baseline=raw_first,
            baseline_name="GROUP BY over raw events",
        ),
        Figure(
            f"page of 50 at offset {middle:,} (recent_runs)",
            median_ms(named("recent_runs", limit=50, offset=middle)),
            "ms",
            baseline=raw_middle,
            baseline_name="GROUP BY over raw events",
        ),
        Figure(
            "SELECT * FROM runs ORDER BY started_at DESC LIMIT 50",
            median_ms(sql("SELECT * FROM runs ORDER BY started_at DESC LIMIT 50")),
            "ms",
            baseline=raw_first,
            baseline_name="GROUP BY over raw events",
        ),
        Figure(
            "one run by id",
            median_ms(sql(f"SELECT * FROM runs WHERE run_id = '{some_run}'")),
            "ms",
        ),
        Figure("runs_by_status", median_ms(named("runs_by_status")), "ms"),
        Figure("cost_per_run (top 20)", median_ms(named("cost_per_run")), "ms"),
        Figure(
            "run_agent_costs of one run",
            median_ms(named("run_agent_costs", run_id=some_run)),
            "ms",
        ),
    ]
    figures += ui_figures(reader, args.runs, some_run)
    reader.close()
    rows = {t: store.scalar(f"SELECT count() FROM {db}.{t}") for t in ("run_totals", "run_agent")}
    parts = store.scalar(
        f"SELECT count() FROM system.parts WHERE database = '{db}' AND table = 'run_totals' "
        "AND active"
    )
    proj.close()
    path = write_results(
        "bench_runs",
        figures,
        params={
            "runs": args.runs,
            "agents_per_run": 4,
            "events": events,
            "synthetic_load_s": round(load_s, 2),
            "rollup_rows": rows,
            "batches": args.batches,
            "run_totals_parts": parts,
            "lower_is_better": True,
        },
    )
    print_table(
        f"runs over {args.runs:,} runs ({events:,} events; ms, lower is better; "
        "ratio = value / baseline)",
        figures,
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
