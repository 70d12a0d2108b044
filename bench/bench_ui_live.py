"""Web UI part 2 benchmark: live-view freshness, dashboard query time, SQL workspace overhead.

    python bench/bench_ui_live.py [--rows 10000000] [--rates 1000,10000] [--seconds 10]

1. Dashboards and SQL workspace over ``--rows`` synthetic events in a fresh chDB store
   (generated inside chDB through the projection's views, as ``bench_analytics`` does, so
   the rollups are real). The UI app runs in this process (uvicorn in a thread, chDB opened
   directly); requests go over loopback HTTP, one at a time. The machine is shared, so
   every UI request is paired with its baseline run right after it (interleaved): load
   hits both sides alike.
   - each dashboard (``GET /api/v1/dashboards/X``, all panels' named queries, all time):
     p50/p95 of ``--repeats`` requests, against the same SQL run bare through
     clickhouse-connect's chDB client (sum over the panels). Goal: p95 <= 200 ms. Also the
     by-model panel's SQL as it was before the ``model_minute`` rollup (a scan of
     ``events``), and the tools panel's as it was before ``tool_hour`` (every tool-minute's
     quantile state merged), bare, for the before/after of the query itself.
   - SQL workspace: ``GET /api/v1/sql?…&fresh=true`` (the guarded read path, paging, JSON)
     against the bare chDB query, for ``SELECT 1`` and a named query. Goal: overhead <= 20
     ms. The overhead is the median of (request time - the engine's own elapsed time for
     that statement, ``engine_ms`` in the response): what HTTP, the read-only check,
     Arrow, paging and JSON add, free of the engine's run-to-run noise under load. Also
     recorded: the median of (request - a bare query run right after it), the difference of
     the p50s, and the split at ``server_ms`` (in the server / HTTP + JSON). Measured twice:
     the UI opening chDB itself, and the route of a running pipeline, where the UI asks the
     chDB owner's query service (one more loopback HTTP hop; served here by this process).
2. Freshness: Tansu + ``agentstream ui`` (own process); a child process produces thought
   events at each rate for ``--seconds`` (record timestamp = wall clock at send); Chromium
   shows /live and a MutationObserver records, for every tail row put on the page,
   (now - record timestamp). Baseline in the same run: a bare aiokafka consumer in this
   process, (receive time - record timestamp) of every record. p50/p99.

Ports: the 29xxx block unless ``--ports`` says otherwise. Writes
bench/results/bench_ui_live.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, print_table, write_results
from bench_analytics import PRODUCER, SYNTH

from agentstream.processes import ManagedProcess, tansu_argv
from agentstream.settings import load_settings
from agentstream.stack import settings_env

HOST = "127.0.0.1"
CLI = [sys.executable, "-m", "agentstream.cli"]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def http_ms(url: str) -> float:
    return http_get(url)[0]


def http_get(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
        assert r.status == 200
    return (time.perf_counter() - t0) * 1000, body


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


# dash_cost_by_model before the model_minute rollup: every event with a model, scanned
COST_BY_MODEL_FROM_EVENTS = """
SELECT
    toDateTime64(toStartOfInterval(e.time, toIntervalSecond({bucket:UInt32})), 0, 'UTC') AS bucket,
    assumeNotNull(e.model) AS model,
    round(sum(e.cost_usd), 6) AS cost_usd,
    sum(e.input_tokens) AS input_tokens,
    sum(e.output_tokens) AS output_tokens,
    input_tokens + output_tokens AS tokens
FROM events AS e
WHERE e.model IS NOT NULL
  AND e.time >= {since:DateTime64(6, 'UTC')} AND e.time < {until:DateTime64(6, 'UTC')}
  AND ({tenant:String} = '' OR e.tenant = {tenant:String})
GROUP BY bucket, model
ORDER BY bucket, model
"""

# dash_tool_reliability before the tool_hour rollup: every tool-minute's quantile state merged
TOOLS_FROM_MINUTES = """
WITH mismatched AS
(
    SELECT toDateTime64(toStartOfInterval(v.time, toIntervalSecond({bucket:UInt32})), 0, 'UTC')
        AS bucket, assumeNotNull(v.tool) AS tool, count() AS n
    FROM violations AS v FINAL
    WHERE v.category = 'wrong_result' AND v.tool IS NOT NULL
      AND v.time >= {since:DateTime64(6, 'UTC')} AND v.time < {until:DateTime64(6, 'UTC')}
      AND ({tenant:String} = '' OR v.tenant = {tenant:String})
    GROUP BY bucket, tool
)
SELECT c.bucket AS bucket, c.tool AS tool, c.calls AS calls, c.errors AS errors,
    ifNull(x.n, 0) AS mismatches, errors + mismatches AS failed,
    round(1 - failed / calls, 4) AS success_rate, c.p50_ms AS p50_ms, c.p95_ms AS p95_ms
FROM
(
    SELECT
        toDateTime64(toStartOfInterval(t.minute, toIntervalSecond({bucket:UInt32})), 0, 'UTC')
            AS bucket,
        t.tool AS tool, sum(t.calls) AS calls, sum(t.errors) AS errors,
        quantilesBFloat16Merge(0.5, 0.95)(t.duration_ms) AS q,
        round(toFloat64(q[1]), 1) AS p50_ms, round(toFloat64(q[2]), 1) AS p95_ms
    FROM tool_minute AS t
    WHERE t.minute >= {since:DateTime64(6, 'UTC')} AND t.minute < {until:DateTime64(6, 'UTC')}
      AND ({tenant:String} = '' OR t.tenant = {tenant:String})
    GROUP BY bucket, tool
    HAVING calls > 0
) AS c
LEFT JOIN mismatched AS x ON x.bucket = c.bucket AND x.tool = c.tool
ORDER BY bucket, tool
"""


# --- 1. dashboards and the SQL workspace -----------------------------------------------------
def load_store(url: str, rows: int, agents: int) -> float:
    from projections.analytics.projection import AnalyticsProjection

    proj = AnalyticsProjection(url, database="agentstream")
    proj.setup()
    store = proj.store
    step_us = max(1, int(86_400 * 1e6 / rows))
    t0 = time.perf_counter()
    chunk = 1_000_000
    for start in range(0, rows, chunk):
        store.command(
            SYNTH.format(
                db="agentstream",
                step_us=step_us,
                agents=agents,
                start=start,
                count=min(chunk, rows - start),
            )
        )
        print(f"  loaded {min(rows, start + chunk):,} / {rows:,}", flush=True)
    from projections.analytics.schema import ROLLUP_TABLES

    for t in ROLLUP_TABLES:
        store.command(f"OPTIMIZE TABLE agentstream.{t} FINAL")
    assert store.scalar("SELECT count() FROM agentstream.events") == rows
    proj.close()
    return time.perf_counter() - t0


def dashboards_and_sql(
    root: Path, rows: int, port: int, repeats: int, only: list[str] | None = None
) -> tuple[list[Figure], dict]:
    import uvicorn

    from agentstream.ui.app import create_app
    from agentstream.ui.dashboards import DASHBOARDS
    from agentstream.ui.server import bind
    from projections.analytics.queries import NAMED_QUERIES
    from projections.analytics.store import open_client, parse_url

    url = f"chdb://{root / 'chdb'}"
    load_s = load_store(url, rows, agents=200)
    settings = load_settings(data_dir=root / "data", clickhouse_url=url, metrics_port_base=0)
    app = create_app(settings, analytics_direct=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    sock = bind(HOST, port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://{HOST}:{port}"
    bare = open_client(parse_url(url), "agentstream")

    def bare_ms(sql: str, params: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        bare.query_arrow(sql, parameters=params)
        return (time.perf_counter() - t0) * 1000

    figures: list[Figure] = []
    details: dict[str, Any] = {
        "rows": rows,
        "load_s": load_s,
        "load_avg_1m_start": load_avg(),
        "dashboards": {},
        "sql": {},
    }
    for which, names in DASHBOARDS.items():
        if only and which not in only:
            continue
        try:
            http_ms(f"{base}/api/v1/dashboards/{which}")  # warm
        except urllib.error.HTTPError as err:  # reported, and the other figures still measured
            details["dashboards"][which] = {"error": f"{err}: {err.read()[:500]!r}"}
            print(f"dashboard {which} failed: {err}", file=sys.stderr)
            continue
        ui, raw = [], []
        for _ in range(repeats):  # interleaved: each request, then its SQL bare
            ui.append(http_ms(f"{base}/api/v1/dashboards/{which}"))
            raw.append(sum(bare_ms(NAMED_QUERIES[n].sql, NAMED_QUERIES[n].bind()) for n in names))
        details["dashboards"][which] = {
            "ui_p50_ms": pct(ui, 0.5),
            "ui_p95_ms": pct(ui, 0.95),
            "raw_p50_ms": pct(raw, 0.5),
            "raw_p95_ms": pct(raw, 0.95),
            "goal_p95_ms": 200,
            "goal_met": pct(ui, 0.95) <= 200,
            "queries": names,
        }
        figures.append(
            Figure(
                f"dashboard {which}: p95 over HTTP ({rows:,} events; goal <= 200 ms)",
                pct(ui, 0.95),
                "ms",
                baseline=pct(raw, 0.95),
                baseline_name="its SQL, bare chDB",
            )
        )
    # the by-model panel: the rollup's SQL against the SQL it replaced (both bare)
    params = NAMED_QUERIES["dash_cost_by_model"].bind()
    new_sql = NAMED_QUERIES["dash_cost_by_model"].sql
    old, new = [], []
    for _ in range(repeats):
        old.append(bare_ms(COST_BY_MODEL_FROM_EVENTS, params))
        new.append(bare_ms(new_sql, params))
    details["cost_by_model_sql"] = {
        "rollup_p50_ms": pct(new, 0.5),
        "rollup_p95_ms": pct(new, 0.95),
        "events_p50_ms": pct(old, 0.5),
        "events_p95_ms": pct(old, 0.95),
    }
    figures.append(
        Figure(
            "dash_cost_by_model SQL p95, model_minute rollup (bare)",
            pct(new, 0.95),
            "ms",
            baseline=pct(old, 0.95),
            baseline_name="the same figures from events (before)",
        )
    )
    # the tools panel: tool_hour for whole hours against tool_minute alone (both bare)
    if not only or "tools" in only:
        params = NAMED_QUERIES["dash_tool_reliability"].bind()
        new_sql = NAMED_QUERIES["dash_tool_reliability"].sql
        rows = bare.query(new_sql, parameters=params).result_rows
        assert rows and rows == bare.query(TOOLS_FROM_MINUTES, parameters=params).result_rows, (
            "tool_hour and tool_minute disagree"
        )
        old, new = [], []
        for _ in range(repeats):
            old.append(bare_ms(TOOLS_FROM_MINUTES, params))
            new.append(bare_ms(new_sql, params))
        details["tools_sql"] = {
            "rollup_p50_ms": pct(new, 0.5),
            "rollup_p95_ms": pct(new, 0.95),
            "minutes_p50_ms": pct(old, 0.5),
            "minutes_p95_ms": pct(old, 0.95),
        }
        figures.append(
            Figure(
                "dash_tool_reliability SQL p95, tool_hour for whole hours (bare)",
                pct(new, 0.95),
                "ms",
                baseline=pct(old, 0.95),
                baseline_name="tool_minute alone (before)",
            )
        )
    cases = {
        "SELECT 1": ({"sql": "SELECT 1"}, "SELECT 1", {}),
        "agent_leaderboard": (
            {"named": "agent_leaderboard"},
            NAMED_QUERIES["agent_leaderboard"].sql,
            NAMED_QUERIES["agent_leaderboard"].bind(),
        ),
    }
    f, details["sql"] = sql_overhead(base, cases, repeats, bare_ms, "")
    figures += f
    server.should_exit = True
    thread.join(10)
    # the route of a running pipeline: the UI asks the chDB owner's query service
    # (another loopback HTTP hop, Arrow IPC back), here served by this process too
    from projections.analytics.projection import AnalyticsProjection

    run_dir = settings.data_dir.resolve() / "run"  # where the UI looks for the owner
    run_dir.mkdir(parents=True, exist_ok=True)
    owner = AnalyticsProjection(url, database="agentstream", serve_queries_in=run_dir)
    owner.setup()
    app2 = create_app(settings, analytics_direct=False)
    server = uvicorn.Server(uvicorn.Config(app2, log_level="warning", lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [bind(HOST, port)]}, daemon=True
    )
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        f, details["sql_via_service"] = sql_overhead(
            base, cases, repeats, bare_ms, " via the owner's query service"
        )
        figures += f
    finally:
        server.should_exit = True
        thread.join(10)
        owner.close()
    details["load_avg_1m_end"] = load_avg()
    bare.close()
    return figures, details


def sql_overhead(
    base: str,
    cases: dict[str, tuple[dict[str, str], str, dict[str, Any]]],
    repeats: int,
    bare_ms: Any,
    route: str,
) -> tuple[list[Figure], dict[str, Any]]:
    """``GET /api/v1/sql`` for each case, interleaved with the bare query."""
    figures: list[Figure] = []
    out: dict[str, Any] = {}
    for label, (args, sql, params) in cases.items():
        q = urllib.parse.urlencode({**args, "fresh": "true"})
        http_ms(f"{base}/api/v1/sql?{q}")
        ui, raw, in_app, engine = [], [], [], []
        for _ in range(repeats):  # interleaved pairs
            ms, body = http_get(f"{base}/api/v1/sql?{q}")
            ui.append(ms)
            raw.append(bare_ms(sql, params))
            page = json.loads(body)
            in_app.append(page["server_ms"])
            engine.append(page["engine_ms"] if page["engine_ms"] is not None else float("nan"))
        # what the request adds to the engine's own run of the statement, measured inside the
        # same request (the engine's elapsed time): free of the engine's run-to-run noise
        overhead = statistics.median(u - e for u, e in zip(ui, engine, strict=True))
        paired = statistics.median(u - r for u, r in zip(ui, raw, strict=True))
        in_server = statistics.median(s - e for s, e in zip(in_app, engine, strict=True))
        http_json = statistics.median(u - s for u, s in zip(ui, in_app, strict=True))
        out[label] = {
            "ui_p50_ms": statistics.median(ui),
            "engine_p50_ms": statistics.median(engine),
            "bare_p50_ms": statistics.median(raw),
            "overhead_ms": overhead,
            "overhead_ms_is": "median of (request - the engine's elapsed time for it)",
            "vs_bare_paired_ms": paired,
            "vs_bare_paired_ms_is": "median of (request - bare query run right after it)",
            "vs_bare_p50_diff_ms": statistics.median(ui) - statistics.median(raw),
            "server_minus_engine_p50_ms": in_server,
            "request_minus_server_p50_ms": http_json,
            "goal_overhead_ms": 20,
            "goal_met": overhead <= 20,
        }
        figures.append(
            Figure(
                f"SQL workspace{route} {label}: request p50",
                statistics.median(ui),
                "ms",
                baseline=statistics.median(raw),
                baseline_name="bare chDB query",
            )
        )
        figures.append(
            Figure(
                f"SQL workspace{route} {label}: overhead, median of request - engine time "
                "(goal <= 20)",
                overhead,
                "ms",
            )
        )
        figures.append(
            Figure(
                f"SQL workspace{route} {label}: median of request - bare query run right after it",
                paired,
                "ms",
            )
        )
    return figures, out


# --- 2. live-view freshness ----------------------------------------------------------------
OBSERVER = """
window.__lat = [];
new MutationObserver((muts) => {
  const now = Date.now();
  for (const m of muts) for (const n of m.addedNodes)
    if (n.nodeType === 1 && n.matches && n.matches('tr[data-ts]'))
      window.__lat.push(now - Number(n.dataset.ts));
}).observe(document, { childList: true, subtree: true });
"""


async def raw_consumer(bootstrap: str, stop: threading.Event, out: list[float]) -> None:
    from aiokafka import AIOKafkaConsumer

    from schemas.topics import EVENTS

    consumer = AIOKafkaConsumer(
        EVENTS, bootstrap_servers=bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=100
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            now = time.time() * 1000
            for records in batches.values():
                out.extend(now - r.timestamp for r in records)
    finally:
        await consumer.stop()


def freshness(
    root: Path, kport: int, uport: int, rates: list[int], seconds: float
) -> tuple[list[Figure], dict]:
    from playwright.sync_api import sync_playwright

    from streams.admin import ensure_topics, wait_for_broker

    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = load_settings(
        data_dir=root / "live-data", kafka_url=f"kafka://{HOST}:{kport}", metrics_port_base=0
    )
    env = {**os.environ, **settings_env(settings)}
    broker = ManagedProcess("broker", tansu_argv(HOST, kport), logs / "tansu.log")
    broker.start()
    ui = None
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    try:
        broker.wait_for_port(HOST, kport, deadline_s=10)
        asyncio.run(wait_for_broker(settings.bootstrap_servers))
        asyncio.run(ensure_topics(settings.bootstrap_servers, 6))
        ui = subprocess.Popen(
            [*CLI, "ui", "--port", str(uport)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                http_ms(f"http://{HOST}:{uport}/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline, "the UI did not start"
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"))
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(OBSERVER)
            page.goto(f"http://{HOST}:{uport}/live")
            page.wait_for_selector('[data-conn="live"]')
            for rate in rates:
                page.evaluate("() => { window.__lat = []; }")
                stop = threading.Event()
                raw: list[float] = []
                t = threading.Thread(
                    target=asyncio.run,
                    args=(raw_consumer(settings.bootstrap_servers, stop, raw),),
                )
                t.start()
                time.sleep(2)  # the consumer is positioned
                done = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        PRODUCER,
                        settings.bootstrap_servers,
                        str(rate),
                        str(seconds),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    cwd=str(Path(__file__).resolve().parents[1]),
                )
                assert done.returncode == 0, done.stderr[-2000:]
                produced_s = float(seconds)
                time.sleep(3)
                stop.set()
                t.join(10)
                lat = page.evaluate("() => window.__lat")
                if not lat:
                    raise RuntimeError(f"no tail rows on the page at {rate}/s")
                details[str(rate)] = {
                    "produced": int(done.stdout.strip() or 0),
                    "seconds": produced_s,
                    "rows_on_screen": len(lat),
                    "screen_p50_ms": pct(lat, 0.5),
                    "screen_p99_ms": pct(lat, 0.99),
                    "raw_consumer_p50_ms": pct(raw, 0.5),
                    "raw_consumer_p99_ms": pct(raw, 0.99),
                    "raw_records": len(raw),
                }
                for q, name in ((0.5, "p50"), (0.99, "p99")):
                    figures.append(
                        Figure(
                            f"live freshness produce->screen {name} at {rate:,}/s",
                            pct(lat, q),
                            "ms",
                            baseline=pct(raw, q),
                            baseline_name="bare aiokafka consumer",
                        )
                    )
            browser.close()
    finally:
        if ui is not None:
            ui.terminate()
            ui.wait(10)
        broker.stop()
    return figures, details


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--rates", default="1000,10000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--ports", default="29192,29710,29711", help="broker, in-process UI, UI")
    ap.add_argument("--skip-freshness", action="store_true")
    ap.add_argument("--skip-dashboards", action="store_true")
    ap.add_argument("--dashboards", default="", help="only these, e.g. cost,tools (default: all)")
    args = ap.parse_args()
    kport, dport, uport = (int(x) for x in args.ports.split(","))
    root = Path(tempfile.mkdtemp(prefix="bench_ui_live_"))
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    try:
        if not args.skip_dashboards:
            only = [d for d in args.dashboards.split(",") if d]
            f, d = dashboards_and_sql(root, args.rows, dport, args.repeats, only)
            figures += f
            details["dashboards_sql"] = d
        if not args.skip_freshness:
            rates = [int(r) for r in args.rates.split(",")]
            f, d = freshness(root, kport, uport, rates, args.seconds)
            figures += f
            details["freshness"] = d
    finally:
        shutil.rmtree(root, ignore_errors=True)
    params = {k: v for k, v in vars(args).items()}
    write_results("bench_ui_live", figures, params={**params, "details": details})
    print_table("web UI part 2", figures)
    print(json.dumps(details, indent=1, default=str))


if __name__ == "__main__":
    main()
