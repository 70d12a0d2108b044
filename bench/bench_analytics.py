"""Analytics benchmark: projection ingest vs raw chDB, named queries over 10M events,
end-to-end freshness at a fixed produce rate.

    python bench/bench_analytics.py                 # all three parts
    python bench/bench_analytics.py --rows 2000000  # smaller synthetic model
    python bench/bench_analytics.py --skip-freshness

1. Ingest (same Arrow data, same process, same chDB engine):
   - baseline: raw ``insert_arrow`` into a plain MergeTree table with the events columns
     (no dedup, no views), batches of ``--batch`` rows;
   - projection ``apply_table`` (staging + anti-join dedup + three rollup views);
   - the same batches again (a full replay: everything is skipped);
   - projection ``apply`` from decoded records (adds the columnar row building) and from
     the raw Kafka bytes (adds the codec's validating decode).
2. Named queries over ``--rows`` synthetic events generated inside chDB
   (``INSERT … SELECT … FROM numbers(N)``, through the views, so rollups are real):
   median and max of 5 warm runs each; goal <= 100 ms. Also the start-up rollup check.
3. Freshness: a child process produces at ``--rate`` events/s (event time = wall clock at
   send); the projection runner in this process applies batches; for every event,
   visible-at (its batch's insert returned) minus its event time; p50/p99; goal p99 <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _common import Figure, print_table, write_results

from projections.analytics import schema
from projections.analytics.projection import AnalyticsProjection
from projections.analytics.queries import NAMED_QUERIES
from projections.analytics.rows import events_table
from projections.analytics.sample import sample_events
from projections.analytics.store import AnalyticsStore
from projections.runner import Record
from schemas.codec import EventCodec, encode_event
from schemas.topics import EVENTS


def ingest(url: str, n: int, batch: int) -> tuple[list[Figure], dict]:
    events = list(sample_events(n, agents=50, seed=3))
    table = events_table(events, [0] * n, list(range(n)))
    raw_bytes = [encode_event(e) for e in events]
    batches = [table.slice(i, batch) for i in range(0, n, batch)]

    # baseline: a plain table with the same column types, no views, no dedup
    proj = AnalyticsProjection(url, database="bench_ingest")
    proj.setup()
    store = proj.store
    types = dict(
        store.rows(
            "SELECT name, type FROM system.columns WHERE database = 'bench_ingest' "
            "AND table = 'events'"
        )
    )
    cols = ", ".join(f"`{c}` {types[c]}" for c in table.column_names)
    store.command("DROP TABLE IF EXISTS bench_ingest.raw SYNC")
    store.command(
        f"CREATE TABLE bench_ingest.raw ({cols}) ENGINE = MergeTree "
        "PARTITION BY toYYYYMM(time) ORDER BY (tenant, agent_id, time, event_id)"
    )

    def run(fn) -> float:
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        return n / (time.perf_counter() - t0)

    raw_rate = run(lambda b: store.insert_arrow("bench_ingest.raw", b))
    proj_rate = run(proj.apply_table)
    replay_rate = run(proj.apply_table)
    assert store.scalar("SELECT count() FROM bench_ingest.events") == n
    assert store.scalar("SELECT sum(events) FROM bench_ingest.agent_minute") == n

    # decoded records (what the runner hands over) and raw bytes (adds the decode)
    store.command("DROP DATABASE bench_ingest SYNC")
    proj.close()
    proj = AnalyticsProjection(url, database="bench_ingest")
    proj.setup()
    recs = [Record(EVENTS, 0, i, None, e, 0) for i, e in enumerate(events)]
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        proj.apply(recs[i : i + batch])
    records_rate = n / (time.perf_counter() - t0)
    proj.store.command("DROP DATABASE bench_ingest SYNC")
    proj.close()
    proj = AnalyticsProjection(url, database="bench_ingest")
    proj.setup()
    codec = EventCodec()
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        chunk = [
            Record(EVENTS, 0, i + j, None, codec.decode(b), 0)
            for j, b in enumerate(raw_bytes[i : i + batch])
        ]
        proj.apply(chunk)
    bytes_rate = n / (time.perf_counter() - t0)
    assert proj.store.scalar("SELECT count() FROM bench_ingest.events") == n
    proj.store.command("DROP DATABASE bench_ingest SYNC")
    proj.close()

    base = "raw chDB insert_arrow"
    figures = [
        Figure("raw chDB insert_arrow (baseline)", raw_rate, "events/s"),
        Figure(
            "projection apply_table (Arrow in)",
            proj_rate,
            "events/s",
            baseline=raw_rate,
            baseline_name=base,
            goal=120_000,
        ),
        Figure("replay of the same batches (all skipped)", replay_rate, "events/s", raw_rate, base),
        Figure("projection apply (decoded records)", records_rate, "events/s", raw_rate, base),
        Figure("projection from Kafka bytes (decode+rows)", bytes_rate, "events/s", raw_rate, base),
    ]
    return figures, {"ingest_events": n, "batch": batch}


SYNTH = """
INSERT INTO {db}.events (event_id, type, category, time, agent_id, run_id, task_id, tenant,
    source, causes, traceparent, model, tool, call_id, status, input_tokens, output_tokens,
    cost_usd, latency_ms, summary, payload, log_partition, log_offset)
SELECT
    generateUUIDv7() AS event_id,
    ['agent.think.thought.v1', 'agent.think.decision.v1', 'agent.act.started.v1',
     'agent.act.completed.v2', 'agent.act.message.v1', 'agent.learn.lesson.v1',
     'agent.think.plan.v1', 'agent.learn.feedback.v1',
     'agent.lifecycle.run_started.v1', 'agent.lifecycle.run_finished.v1'][k + 1] AS type,
    splitByChar('.', type)[2] AS category,
    toDateTime64('2025-03-01 00:00:00', 6, 'UTC') + toIntervalMicrosecond(number * {step_us})
        AS time,
    concat('agent-', toString(number % {agents})) AS agent_id,
    concat('run-', toString(intDiv(number, {agents} * 40)), '-', toString(number % {agents}))
        AS run_id,
    NULL AS task_id,
    'default' AS tenant,
    concat('/agents/', agent_id) AS source,
    [] AS causes,
    NULL AS traceparent,
    if(k = 0, ['gpt-4o', 'claude-sonnet', 'llama-3-70b'][number % 3 + 1], NULL) AS model,
    if(k IN (2, 3), concat('tool-', toString(cityHash64(number) % 20)), NULL) AS tool,
    if(k IN (2, 3), toString(number), NULL) AS call_id,
    multiIf(k = 3, if(cityHash64(number, 1) % 100 < 12, 'error', 'ok'),
            k = 9, if(cityHash64(number, 2) % 100 < 20, 'failed', 'succeeded'), NULL) AS status,
    if(k = 0, 50 + cityHash64(number, 3) % 2000, 0) AS input_tokens,
    if(k = 0, 10 + cityHash64(number, 4) % 500, 0) AS output_tokens,
    if(k = 0, (input_tokens * 2.5 + output_tokens * 10) / 1e6, 0) AS cost_usd,
    multiIf(k = 0, 100 + cityHash64(number, 5) % 3000, k = 3, 5 + cityHash64(number, 6) % 900,
            NULL) AS latency_ms,
    'synthetic' AS summary,
    '{{}}' AS payload,
    toInt32(number % 6) AS log_partition,
    toInt64(number) AS log_offset
FROM (SELECT number, toUInt8(number % 10) AS k FROM numbers({start}, {count}))
"""


def queries(url: str, rows: int, agents: int) -> tuple[list[Figure], dict]:
    proj = AnalyticsProjection(url, database="bench_10m")
    proj.setup()
    store = proj.store
    have = store.scalar("SELECT count() FROM bench_10m.events")
    load_s = None
    if have != rows:
        store.command("DROP DATABASE bench_10m SYNC")
        proj.close()
        proj = AnalyticsProjection(url, database="bench_10m")
        proj.setup()
        store = proj.store
        step_us = max(1, int(86_400 * 1e6 / rows))  # one day of events
        t0 = time.perf_counter()
        chunk = 1_000_000
        for start in range(0, rows, chunk):
            store.command(
                SYNTH.format(
                    db="bench_10m",
                    step_us=step_us,
                    agents=agents,
                    start=start,
                    count=min(chunk, rows - start),
                )
            )
        load_s = time.perf_counter() - t0
        store.command("OPTIMIZE TABLE bench_10m.agent_minute FINAL")
        store.command("OPTIMIZE TABLE bench_10m.tool_minute FINAL")
        store.command("OPTIMIZE TABLE bench_10m.run_agent FINAL")
        store.command("OPTIMIZE TABLE bench_10m.run_totals FINAL")
    assert store.scalar("SELECT count() FROM bench_10m.events") == rows
    assert store.scalar("SELECT sum(events) FROM bench_10m.agent_minute") == rows

    reader = store.reader()
    reader.database = "bench_10m"
    figures: list[Figure] = []
    timings: dict[str, dict[str, float]] = {}
    for q in NAMED_QUERIES.values():
        params = q.bind()
        reader.query_arrow(q.sql, parameters=params)  # warm
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            reader.query_arrow(q.sql, parameters=params)
            runs.append((time.perf_counter() - t0) * 1000)
        med, worst = statistics.median(runs), max(runs)
        timings[q.name] = {"median_ms": med, "max_ms": worst}
        figures.append(Figure(f"query {q.name} (median of 5)", med, "ms"))
    t0 = time.perf_counter()
    bad = proj.verify_rollups()
    verify_ms = (time.perf_counter() - t0) * 1000
    assert not any(bad.values()), bad
    figures.append(Figure("start-up rollup check over all events", verify_ms, "ms"))
    raw_group = "SELECT agent_id, type, count() FROM events GROUP BY agent_id, type"
    reader.query_arrow(raw_group)
    t0 = time.perf_counter()
    reader.query_arrow(raw_group)
    figures.append(
        Figure(
            "for scale: GROUP BY agent, type over raw events",
            (time.perf_counter() - t0) * 1000,
            "ms",
        )
    )
    rollup_rows = {
        t: store.scalar(f"SELECT count() FROM bench_10m.{t}")
        for t in ("agent_minute", "tool_minute", "run_agent", "run_totals")
    }
    reader.close()
    proj.close()
    worst = max(t["max_ms"] for t in timings.values())
    return figures, {
        "query_rows": rows,
        "query_agents": agents,
        "synthetic_load_s": load_s,
        "rollup_rows": rollup_rows,
        "query_timings_ms": timings,
        "goal_each_query_max_ms": 100,
        "goal_met": worst <= 100,
    }


PRODUCER = """
import asyncio, sys, time
from datetime import UTC, datetime
from schemas import payloads as p
from schemas.envelope import new_event
from schemas.ids import new_event_id
from streams.producer import EventProducer

async def main(bootstrap, rate, seconds):
    async with EventProducer(bootstrap, linger_ms=2) as prod:
        t0 = time.monotonic()
        n = 0
        total = int(rate * seconds)
        while n < total:
            due = t0 + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = datetime.now(UTC)
            for _ in range(10):  # 10 at a time keeps the pacing loop cheap
                e = new_event(p.Thought(text="x", model="m", input_tokens=1), id=new_event_id(),
                              time=now, agentid=f"agent-{n % 64}")
                await prod.send(e)
                n += 1
        await prod.flush()
    print(n)

asyncio.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
"""


def freshness(url: str, rate: float, seconds: float, log_dir: Path) -> tuple[list[Figure], dict]:
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from conftest import start_broker

    from projections.runner import ProjectionRunner, RunnerConfig, wait_until

    broker = start_broker(log_dir)
    with AnalyticsStore(url, "bench_fresh") as old:
        old.drop()  # start empty: rollups included
    proj = AnalyticsProjection(url, database="bench_fresh")
    proj.setup()
    lags: list[float] = []
    real_apply = proj.apply

    def apply_and_measure(records):
        real_apply(records)
        visible = datetime.now(UTC)
        lags.extend((visible - r.value.time).total_seconds() for r in records if r.topic == EVENTS)

    proj.apply = apply_and_measure
    runner = ProjectionRunner(
        proj,
        broker.bootstrap,
        config=RunnerConfig(
            max_batch=20_000, max_wait_ms=100, session_timeout_ms=6000, fetch_max_wait_ms=50
        ),
    )

    async def go() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await runner.wait_started()
        await wait_until(lambda: bool(runner.assigned), 30)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            textwrap.dedent(PRODUCER),
            broker.bootstrap,
            str(rate),
            str(seconds),
            stdout=subprocess.PIPE,
        )
        out, _ = await child.communicate()
        produced = int(out.decode().strip() or 0)
        await wait_until(lambda: len(lags) >= produced, 60)
        stop.set()
        await task
        return produced

    try:
        produced = asyncio.run(go())
    finally:
        proj.close()
        broker.process.stop()
    lags.sort()
    p50 = lags[len(lags) // 2]
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    figures = [
        Figure("freshness p50 (produce -> visible)", p50 * 1000, "ms"),
        Figure("freshness p99 (produce -> visible)", p99 * 1000, "ms"),
    ]
    return figures, {
        "freshness_rate": rate,
        "freshness_seconds": seconds,
        "freshness_events": produced,
        "freshness_measured": len(lags),
        "goal_p99_ms": 1000,
        "freshness_goal_met": p99 <= 1.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=400_000, help="ingest benchmark events")
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--rows", type=int, default=10_000_000, help="synthetic events for queries")
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--dir", type=Path, default=None, help="chDB directory (default: a tmp dir)")
    ap.add_argument("--skip-queries", action="store_true")
    ap.add_argument("--skip-freshness", action="store_true")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="bench-analytics-")
    base = args.dir or Path(tmp.name)
    url = f"chdb://{base / 'clickhouse'}"
    figures: list[Figure] = []
    params: dict = {"schema_version": schema.SCHEMA_VERSION}

    f, p = ingest(url, args.events, args.batch)
    figures += f
    params.update(p)
    if not args.skip_queries:
        f, p = queries(url, args.rows, args.agents)
        figures += f
        params.update(p)
    if not args.skip_freshness:
        f, p = freshness(url, args.rate, args.seconds, base)
        figures += f
        params.update(p)
    with AnalyticsStore(url, "default", create=False) as s:
        params["chdb_version"] = s.scalar("SELECT version()")
    path = write_results("bench_analytics", figures, params)
    print_table("analytics", figures)
    if "goal_met" in params:
        print(f"named queries over {args.rows:,} events: each <= 100 ms: {params['goal_met']}")
    if "freshness_goal_met" in params:
        print(f"freshness p99 <= 1 s at {args.rate:,.0f} events/s: {params['freshness_goal_met']}")
    print(f"written to {path}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
