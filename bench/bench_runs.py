"""Run-model benchmark: listing and reading runs from the `runs` view over many runs.

    python bench/bench_runs.py                  # 100k runs x 4 agents (2M events)
    python bench/bench_runs.py --runs 20000     # smaller

The events are generated inside chDB (``INSERT … SELECT … FROM numbers(N)``) through the
real materialized views, so ``run_totals`` and ``run_agent`` are what the projection
builds: each run has 4 agents with 5 events each (run_started, thought, completed action,
decision, run_finished; every 7th action an error, every 5th run failed).

Measured (median of 7 warm runs, milliseconds: lower is better):

- a page of 50 runs, newest first: the named query ``recent_runs`` (keys first, then the
  rows) at offset 0 and at the middle, and a plain ``SELECT * FROM runs ORDER BY
  started_at DESC LIMIT 50``;
- one run by id, counts by status (``runs_by_status``), the 20 most expensive runs
  (``cost_per_run``), one run's per-agent shares (``run_agent_costs``);
- baseline: the same page computed from raw ``events`` (``GROUP BY run_id`` over every
  event), i.e. what an analyst had to write without the run model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _common import Figure, print_table, write_results

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=None, help="chDB directory (default: tmp)")
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
        chunk = 1_000_000
        for start in range(0, events, chunk):
            store.command(SYNTH.format(db=db, start=start, count=min(chunk, events - start)))
        for t in ("run_agent", "run_totals"):
            store.command(f"OPTIMIZE TABLE {db}.{t} FINAL")
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
    reader.close()
    rows = {t: store.scalar(f"SELECT count() FROM {db}.{t}") for t in ("run_totals", "run_agent")}
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
