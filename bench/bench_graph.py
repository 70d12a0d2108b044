"""Graph projection rate vs a raw batched UNWIND MERGE, and `why` latency on a large graph.

    python bench/bench_graph.py [--events 100000] [--batch 5000] [--repeats 2]
                                [--large 1000000] [--run-len 250] [--queries 200]
                                [--budget-s 300]

Both parts run against a fresh embedded FalkorDB (redis-server + module, AOF on, as
`agentstream up` starts it), in this process.

1. Projection rate. Workload: ``--events`` simulator events (64 agents), pre-generated.
   - ``projection``: ``projection.project(store, batch)`` per batch of ``--batch``: the
     mapping from events, every node/edge MERGE, the NEXT window read and diff.
   - ``raw UNWIND MERGE`` (baseline): the same node and edge rows, pre-computed outside
     the timing (NEXT pairs too, by sorting each chain once in Python), written batch by
     batch with the same UNWIND + MERGE statements through the bare ``falkordb`` client.
   Trials alternate, each into a new graph; the best of ``--repeats`` counts. Both graphs
   must end with identical node and relationship counts.

2. ``why`` latency. A synthetic graph of ``--large`` events (chains of ``--run-len``
   events per agent and run; every event caused by the previous one, every fifth also by
   the one five back: diamonds all the way down), built with ``project`` in batches of
   10,000 until done or ``--budget-s`` is spent (then the size reached is reported).
   ``queries.why(depth=50)`` from ``--queries`` random events at least 60 deep: p50/p99.
   On FalkorDB that is the server-side walk (the ``traversal.js`` UDF, one round trip).
   Baseline: the bare client walking breadth-first, one query per level, then fetching the
   same columns (it must find the same ancestors). Context: the portable Cypher walk
   (``levels_per_trip=1``, the code path Neo4j-compatible Cypher gives), and a naive single
   ``[:CAUSED_BY*1..50]`` query, its p50 and the share of the ancestors it returns
   (FalkorDB 4.16 under-reports it on graphs with shortcuts). All three walks run
   interleaved per target, so they see the same machine load.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, print_table, write_results
from falkordb import FalkorDB

from agentstream.processes import ManagedProcess, falkordb_argv, free_port
from projections.graph import cypher, queries
from projections.graph.falkordb_store import FalkorDBStore
from projections.graph.model import build_batch, seq_event_id, seq_key
from projections.graph.projection import batch_statements, project
from schemas import payloads as p
from schemas.envelope import Event, new_event
from schemas.ids import Uuid7Generator
from streams.simulator import SimulationConfig, generate

HOST = "127.0.0.1"
WHY_DEPTH = 50
WHY_GOAL_MS = 10.0
RATE_GOAL = 25_000


def start_falkordb(data: Path) -> tuple[ManagedProcess, int]:
    port = free_port(HOST)
    proc = ManagedProcess("graph", falkordb_argv(HOST, port, data), data / "falkordb.log")
    proc.start()
    proc.wait_for_port(HOST, port, deadline_s=15)
    return proc, port


# --- part 1: projection vs raw ---------------------------------------------------------------


def raw_plan(events: list[Event], batch: int) -> list[list[tuple[str, dict[str, Any]]]]:
    """Per batch: the statements and rows the projection writes, NEXT pairs included."""
    chains: dict[str, list[str]] = {}
    plans: list[list[tuple[str, dict[str, Any]]]] = []
    batch_of: dict[str, int] = {}
    for n, i in enumerate(range(0, len(events), batch)):
        b = build_batch(events[i : i + batch])
        plans.append(batch_statements(b))
        for row in b.events:
            chains.setdefault(row["chain"], []).append(seq_key(row["time"], row["id"]))
            batch_of[row["id"]] = n
    pairs: list[list[dict[str, str]]] = [[] for _ in plans]
    for seqs in chains.values():
        ids = [seq_event_id(s) for s in sorted(seqs)]
        for a, b in pairwise(ids):
            pairs[max(batch_of[a], batch_of[b])].append({"a": a, "b": b})
    for plan, prs in zip(plans, pairs, strict=True):
        if prs:
            plan.append((cypher.LINK_NEXT, {"pairs": prs}))
    return plans


def projection_trial(port: int, graph: str, events: list[Event], batch: int) -> float:
    store = FalkorDBStore(HOST, port, graph)
    store.setup()
    t0 = time.perf_counter()
    for i in range(0, len(events), batch):
        project(store, events[i : i + batch])
    rate = len(events) / (time.perf_counter() - t0)
    store.close()
    return rate


def raw_trial(port: int, graph: str, plans: list, n_events: int) -> float:
    db = FalkorDB(host=HOST, port=port)
    g = db.select_graph(graph)
    for ddl in cypher.FALKORDB_DDL:
        g.query(ddl)
    t0 = time.perf_counter()
    for plan in plans:
        for statement, params in plan:
            g.query(statement, params)
    rate = n_events / (time.perf_counter() - t0)
    db.close()
    return rate


# --- part 2: why on a large graph ------------------------------------------------------------


def deep_events(
    total: int, run_len: int, agents: int, targets: dict[tuple[int, int], str], seed: int = 1
) -> Iterator[Event]:
    """Chains of ``run_len`` events; records the ids of the (run, position) in ``targets``."""
    gen = Uuid7Generator(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    runs = (total + run_len - 1) // run_len
    produced = 0
    for r in range(runs):
        agent, run = f"agent-{r % agents}", f"run-{r}"
        ids: list[str] = []
        for i in range(min(run_len, total - produced)):
            t = t0 + timedelta(seconds=10 * r, milliseconds=100 * i)
            causes = [ids[i - 1]] if i else []
            if i >= 5 and i % 5 == 0:
                causes.append(ids[i - 5])
            kind = i % 4
            data: p.Payload
            if kind == 0:
                data = p.Thought(text=f"step {i} of {run}: look at the failing check", model="o3")
            elif kind == 1:
                data = p.Decision(chosen=f"option-{i % 3}", confidence=0.7)
            elif kind == 2:
                data = p.ActionStarted(call_id=f"{run}-{i}", tool="run_tests")
            else:
                status = "error" if (r * 31 + i) % 10 == 0 else "ok"
                data = p.ActionCompleted(
                    call_id=f"{run}-{i - 1}", tool="run_tests", status=status, result="done"
                )
            e = new_event(
                data,
                id=gen.new(int(t.timestamp() * 1000)),
                time=t,
                agentid=agent,
                runid=run,
                taskid=f"{run}-task-{i // 20}",
                causes=causes,
            )
            ids.append(e.id)
            if (r, i) in targets:
                targets[(r, i)] = e.id
            produced += 1
            yield e


def build_large(
    port: int, total: int, run_len: int, n_queries: int, budget_s: float
) -> tuple[FalkorDBStore, list[str], int, float]:
    rng = random.Random(5)
    runs = (total + run_len - 1) // run_len
    wanted = {(rng.randrange(runs), rng.randrange(60, run_len)) for _ in range(n_queries * 3)}
    targets: dict[tuple[int, int], str] = dict.fromkeys(wanted, "")
    store = FalkorDBStore(HOST, port, "large")
    store.setup()
    built, busy = 0, 0.0
    t_start = time.perf_counter()
    batch: list[Event] = []
    for e in deep_events(total, run_len, max(1, runs // 20), targets):
        batch.append(e)
        if len(batch) == 10_000:
            t = time.perf_counter()
            project(store, batch)
            busy += time.perf_counter() - t
            built += len(batch)
            batch = []
            if built % 100_000 == 0:
                print(f"  built {built:,} events, {built / busy:,.0f}/s projecting", flush=True)
            if time.perf_counter() - t_start > budget_s:
                print(f"  budget of {budget_s:.0f}s spent: stopping at {built:,} events")
                break
    else:
        if batch:
            t = time.perf_counter()
            project(store, batch)
            busy += time.perf_counter() - t
            built += len(batch)
    present = {r[0] for r in store.read(cypher.EVENTS_BY_ID, {"ids": list(targets.values())})}
    chosen = [i for i in targets.values() if i in present]
    rng.shuffle(chosen)
    return store, chosen[:n_queries], built, built / busy


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def why_latencies(
    store: FalkorDBStore, ids: list[str], levels_per_trip: int | None = None
) -> tuple[list[float], dict[str, int]]:
    """Latency of ``queries.why(depth=50)`` per target, and how many ancestors each had."""
    out, sizes = [], {}
    for i in ids:
        t = time.perf_counter()
        result = queries.why(store, i, depth=WHY_DEPTH, levels_per_trip=levels_per_trip)
        out.append((time.perf_counter() - t) * 1000)
        sizes[i] = len(result.nodes) - 1
    return out, sizes


RAW_STEP = "UNWIND $ids AS i MATCH (:Event {id: i})-[:CAUSED_BY]->(c) RETURN DISTINCT c.id"
RAW_FETCH = f"UNWIND $ids AS i MATCH (e:Event {{id: i}}) RETURN {cypher.EVENT_FIELDS}"


def raw_bfs_latencies(port: int, ids: list[str], sizes: dict[str, int]) -> list[float]:
    """Baseline: the bare client, one query per level, then one fetch of the same columns."""
    g = FalkorDB(host=HOST, port=port).select_graph("large")
    out = []
    for i in ids:
        t = time.perf_counter()
        seen, frontier = {i}, [i]
        for _ in range(WHY_DEPTH):
            rows = g.ro_query(RAW_STEP, {"ids": frontier}).result_set
            nxt = [c for (c,) in rows if c not in seen]
            seen.update(nxt)
            frontier = nxt
            if not frontier:
                break
        g.ro_query(RAW_FETCH, {"ids": sorted(seen)})
        out.append((time.perf_counter() - t) * 1000)
        assert len(seen) - 1 == sizes[i], "baseline and why disagree"
    return out


def raw_varlen(port: int, ids: list[str], sizes: dict[str, int]) -> tuple[float, float]:
    """A naive single variable-length query: p50 ms and the share of ancestors it returns."""
    g = FalkorDB(host=HOST, port=port).select_graph("large")
    stmt = f"MATCH (:Event {{id: $id}})-[:CAUSED_BY*1..{WHY_DEPTH}]->(a) RETURN DISTINCT a.id"
    times, found, expected = [], 0, 0
    for i in ids:
        t = time.perf_counter()
        found += len(g.ro_query(stmt, {"id": i}, timeout=5000).result_set)
        times.append((time.perf_counter() - t) * 1000)
        expected += sizes[i]
    return statistics.median(times), found / max(1, expected)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--large", type=int, default=1_000_000)
    ap.add_argument("--run-len", type=int, default=250)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--budget-s", type=float, default=300.0)
    args = ap.parse_args()

    figures: list[Figure] = []
    params: dict[str, Any] = vars(args).copy()
    with tempfile.TemporaryDirectory(prefix="bench-graph-") as tmp:
        proc, port = start_falkordb(Path(tmp))
        try:
            print(f"generating {args.events:,} simulator events ...", flush=True)
            events = list(
                generate(SimulationConfig(agents=64, runs=None, max_events=args.events, seed=1))
            )
            plans = raw_plan(events, args.batch)
            proj_rates, raw_rates = [], []
            for r in range(args.repeats):
                raw_rates.append(raw_trial(port, f"raw-{r}", plans, len(events)))
                proj_rates.append(projection_trial(port, f"proj-{r}", events, args.batch))
                print(
                    f"  trial {r}: projection {proj_rates[-1]:,.0f}/s, raw {raw_rates[-1]:,.0f}/s"
                )
            a = FalkorDBStore(HOST, port, "proj-0").counts()
            b = FalkorDBStore(HOST, port, "raw-0").counts()
            assert a == b, f"projection and raw wrote different graphs: {a} vs {b}"
            params["graph_counts"] = {"nodes": a.nodes, "relationships": a.relationships}
            for r in range(args.repeats):
                FalkorDB(host=HOST, port=port).select_graph(f"raw-{r}").delete()
                FalkorDB(host=HOST, port=port).select_graph(f"proj-{r}").delete()
            figures.append(
                Figure(
                    "projection rate (simulator events)",
                    max(proj_rates),
                    "events/s",
                    baseline=max(raw_rates),
                    baseline_name="raw UNWIND MERGE, same rows",
                    goal=RATE_GOAL,
                )
            )

            print(f"building the large graph ({args.large:,} events) ...", flush=True)
            t = time.perf_counter()
            store, ids, built, build_rate = build_large(
                port, args.large, args.run_len, args.queries, args.budget_s
            )
            params["large_built_events"] = built
            params["large_build_s"] = round(time.perf_counter() - t, 1)
            counts = store.counts()
            params["large_counts"] = {
                "nodes": counts.total_nodes,
                "relationships": counts.total_relationships,
            }
            figures.append(Figure("projection rate (large build)", build_rate, "events/s"))
            why_latencies(store, ids[:10])  # warm-up (loads the UDF, plan caches)
            why_latencies(store, ids[:10], levels_per_trip=1)
            lat, raw_lat, portable_lat, sizes = [], [], [], {}
            for i in ids:  # interleaved, so all see the same machine load
                one, size = why_latencies(store, [i])
                lat += one
                sizes.update(size)
                raw_lat += raw_bfs_latencies(port, [i], sizes)
                portable, psize = why_latencies(store, [i], levels_per_trip=1)
                assert psize == size, "the portable walk and the server-side walk disagree"
                portable_lat += portable
            varlen_p50, varlen_share = raw_varlen(port, ids[:20], sizes)
            params["why_queries"] = len(lat)
            params["why_mean_ancestors"] = round(statistics.mean(sizes.values()), 1)
            params["naive_varlen_p50_ms"] = round(varlen_p50, 2)
            params["naive_varlen_share_of_ancestors_returned"] = round(varlen_share, 3)
            p99 = percentile(lat, 99)
            params["why_p99_goal_ms"] = WHY_GOAL_MS
            params["why_p99_goal_met"] = p99 <= WHY_GOAL_MS
            figures += [
                Figure(
                    f"why depth {WHY_DEPTH} p50 ({built:,} events)",
                    statistics.median(lat),
                    "ms",
                    baseline=statistics.median(raw_lat),
                    baseline_name="raw BFS, 1 query/level",
                ),
                Figure(
                    f"why depth {WHY_DEPTH} p99 ({built:,} events)",
                    p99,
                    "ms",
                    baseline=percentile(raw_lat, 99),
                    baseline_name="raw BFS, 1 query/level",
                ),
                Figure(
                    f"why depth {WHY_DEPTH} p50, portable Cypher walk",
                    statistics.median(portable_lat),
                    "ms",
                    baseline=statistics.median(raw_lat),
                    baseline_name="raw BFS, 1 query/level",
                ),
                Figure(
                    f"why depth {WHY_DEPTH} p99, portable Cypher walk",
                    percentile(portable_lat, 99),
                    "ms",
                    baseline=percentile(raw_lat, 99),
                    baseline_name="raw BFS, 1 query/level",
                ),
            ]
            store.close()
        finally:
            proc.stop()
    path = write_results("bench_graph", figures, params)
    print_table("graph projection and why", figures)
    print(
        f"why p99 {p99:.2f} ms (goal <= {WHY_GOAL_MS} ms: "
        f"{'met' if p99 <= WHY_GOAL_MS else 'NOT met'}); "
        "ratio < 1 on latency rows: faster than the baseline. A naive single "
        f"[:CAUSED_BY*1..{WHY_DEPTH}] query: p50 {params['naive_varlen_p50_ms']} ms, but it "
        f"returned {params['naive_varlen_share_of_ancestors_returned']:.0%} of the ancestors"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
