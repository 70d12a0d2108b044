"""Rebuild benchmark: analytics from the Parquet archive vs a raw chDB insert of the same
Parquet data, and a full rebuild of every model, with the time each model takes.

    python bench/bench_rebuild.py [--events 1000000] [--memory-events 20000]

1. Build an archive of ``--events`` simulated events (``streams.archive.SegmentWriter``,
   6 partitions by agent key, the files the archiver writes; no broker involved).
2. Baseline: read those Parquet files with pyarrow and ``insert_arrow`` the event rows
   straight into a fresh analytics ``events`` table (same schema, same rollup views).
3. ``apply_table`` fast path: archive batches -> ``AnalyticsProjection.apply_table``
   (staging + anti-join dedup, as a rebuild does), events only.
4. Full analytics rebuild (``agentstream.rebuild``): read + decode + reducer + events,
   violations, episodes and final states.
5. All models in one pass (analytics, graph on FalkorDB, state), time per model; memory
   (Chroma + all-MiniLM-L6-v2 embeddings) on the first ``--memory-events`` events only:
   embedding every episode of 1M events (~220k episodes at ~300/s) takes far too long here.

Writes bench/results/bench_rebuild.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa
import pyarrow.parquet as pq
from _common import Figure, print_table, write_results

from agentstream.processes import ManagedProcess, falkordb_argv, free_port, tansu_argv
from agentstream.rebuild import (
    AnalyticsTarget,
    GraphTarget,
    MemoryTarget,
    RebuildOptions,
    StateTarget,
    rebuild,
)
from schemas.arrow import EVENT_ROW_SCHEMA
from schemas.codec import encode_event
from streams.admin import ensure_topics, wait_for_broker
from streams.archive import SegmentWriter, complete_segments
from streams.log_reader import ArchiveLogSource
from streams.producer import partition_for_key
from streams.simulator import SimulationConfig, generate

PARTITIONS = list(range(6))
SEGMENT_RECORDS = 100_000


class _Rec:
    __slots__ = ("key", "offset", "timestamp", "value")

    def __init__(self, offset: int, timestamp: int, key: bytes, value: bytes) -> None:
        self.offset, self.timestamp, self.key, self.value = offset, timestamp, key, value


def build_archive(root: Path, n: int, seed: int = 1) -> tuple[int, float]:
    """Write ``n`` simulated events as the archiver would; (events, seconds)."""
    t0 = time.perf_counter()
    writers: dict[int, SegmentWriter] = {}
    offsets = dict.fromkeys(PARTITIONS, 0)
    count = 0
    config = SimulationConfig(agents=16, runs=None, seed=seed, max_events=n)
    for event in generate(config):
        key = event.agentid.encode()
        p = partition_for_key(key, PARTITIONS)
        w = writers.get(p)
        if w is None:
            w = writers[p] = SegmentWriter(root, 1, p, row_group_rows=50_000)
        ts = int(event.time.timestamp() * 1000)
        w.add(_Rec(offsets[p], ts, key, encode_event(event)), event)  # type: ignore[arg-type]
        offsets[p] += 1
        count += 1
        if w.records >= SEGMENT_RECORDS:
            w.close()
            del writers[p]
    for w in writers.values():
        w.close()
    return count, time.perf_counter() - t0


def event_tables(root: Path) -> list[pa.Table]:
    out = []
    for seg in complete_segments(root):
        for f in seg.of_kind("events"):
            t = pq.read_table(root / f.relpath, columns=EVENT_ROW_SCHEMA.names)
            out.append(t.cast(EVENT_ROW_SCHEMA))
    return out


def raw_insert(url: str, root: Path, plain: bool = False) -> float:
    """events/s: pyarrow read of the archive's files + insert_arrow into a fresh table:
    the analytics ``events`` table (with its rollup views), or with ``plain`` a bare
    MergeTree with the same columns (the analytics benchmark's baseline)."""
    from projections.analytics import schema
    from projections.analytics.store import AnalyticsStore

    store = AnalyticsStore(url, "bench_raw")
    store.drop()
    store.close()
    store = AnalyticsStore(url, "bench_raw")
    if plain:
        cols = ", ".join(
            f"`{name}` {ctype}"
            for name, ctype in store.rows(
                "SELECT name, type FROM system.columns WHERE database = 'bench_schema' "
                "AND table = 'events' ORDER BY position"
            )
            if name in EVENT_ROW_SCHEMA.names
        )
        store.command(
            f"CREATE TABLE bench_raw.events ({cols}) ENGINE = MergeTree "
            "ORDER BY (tenant, agent_id, time)"
        )
    else:
        schema.migrate(store)
    t0 = time.perf_counter()
    n = 0
    pending: list[pa.Table] = []
    rows = 0
    for table in [*event_tables(root), None]:  # the same 100k-row inserts as the fast path
        if table is not None:
            pending.append(table)
            rows += table.num_rows
            if rows < 100_000:
                continue
        if pending:
            store.insert_arrow(store.table("events"), pa.concat_tables(pending))
            n += rows
            pending, rows = [], 0
    seconds = time.perf_counter() - t0
    store.drop()
    store.close()
    return n / seconds


def apply_table_path(url: str, root: Path) -> float:
    """events/s: archive batches -> AnalyticsProjection.apply_table (the rebuild's insert)."""
    from projections.analytics.projection import AnalyticsProjection
    from projections.analytics.store import AnalyticsStore

    with AnalyticsStore(url, "bench_fast") as s:
        s.drop()
    proj = AnalyticsProjection(url, database="bench_fast")
    proj.setup()

    async def go() -> int:
        n = 0
        pending: list[pa.Table] = []
        rows = 0
        async for batch in ArchiveLogSource(root).batches():
            t = batch.rows()
            pending.append(t)
            rows += t.num_rows
            if rows >= 100_000:
                proj.apply_table(pa.concat_tables(pending))
                n += rows
                pending, rows = [], 0
        if pending:
            proj.apply_table(pa.concat_tables(pending))
            n += rows
        return n

    t0 = time.perf_counter()
    n = asyncio.run(go())
    seconds = time.perf_counter() - t0
    proj.close()
    with AnalyticsStore(url, "bench_fast") as s:
        s.drop()
    return n / seconds


async def episode_documents(root: Path) -> list[str]:
    """The texts the memory model embeds for an archive: latest revision per episode."""
    from projections.memory.projection import episode_document, latest
    from schemas.derived import Episode
    from streams.log_reader import collect_events
    from streams.reducer import fold

    _, derived = fold(await collect_events(ArchiveLogSource(root)))
    return [episode_document(e) for e in latest(d for d in derived if isinstance(d, Episode))]


def run_rebuild(targets: list, root: Path, bootstrap: str = "127.0.0.1:1") -> object:
    options = RebuildOptions(bootstrap, "archive", root, switch=False, tail=False)
    return asyncio.run(rebuild(targets, options))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--memory-events", type=int, default=20_000)
    ap.add_argument("--keep", type=Path, default=None, help="work directory to keep")
    ap.add_argument("--only-analytics", action="store_true", help="skip graph, state, memory")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_rebuild_"))
    work.mkdir(parents=True, exist_ok=True)
    root, small = work / "archive", work / "archive_small"
    url = f"chdb://{work / 'clickhouse'}"
    figures: list[Figure] = []
    procs: list[ManagedProcess] = []
    try:
        print(f"building an archive of {args.events:,} events in {root} ...", flush=True)
        n, secs = build_archive(root, args.events)
        figures.append(Figure("archive write (simulate+encode+row+parquet)", n / secs, "events/s"))
        m, _ = build_archive(small, args.memory_events)

        print("raw chDB inserts of the archive's Parquet data ...", flush=True)
        from projections.analytics import schema
        from projections.analytics.store import AnalyticsStore

        with AnalyticsStore(url, "bench_schema") as ref:  # column types for the plain table
            schema.migrate(ref)
        plain = raw_insert(url, root, plain=True)
        figures.append(Figure("raw insert_arrow, plain MergeTree", plain, "events/s"))
        raw = raw_insert(url, root)
        figures.append(
            Figure("raw insert_arrow, analytics events table (baseline)", raw, "events/s")
        )
        print("apply_table from archive batches ...", flush=True)
        fast = apply_table_path(url, root)
        figures.append(
            Figure(
                "analytics events from archive (apply_table)",
                fast,
                "events/s",
                baseline=raw,
                baseline_name="raw insert, same table",
                goal=200_000,
            )
        )
        figures.append(
            Figure(
                "  ... vs the plain-table insert",
                fast,
                "events/s",
                baseline=plain,
                baseline_name="raw insert, plain",
            )
        )
        print("full analytics rebuild (decode + reducer + all tables) ...", flush=True)
        res = run_rebuild([AnalyticsTarget(url, "bench_full")], root)
        figures.append(
            Figure(
                "analytics full rebuild from archive",
                res.rate,  # type: ignore[attr-defined]
                "events/s",
                baseline=raw,
                baseline_name="raw insert, same table",
                goal=200_000,
            )
        )
        figures.append(
            Figure("  shared: read + decode + reducer", res.read_seconds, "s")  # type: ignore[attr-defined]
        )
        figures.append(
            Figure("  analytics writes (overlapping)", res.model_seconds["analytics"], "s")  # type: ignore[attr-defined]
        )
        if args.only_analytics:
            return finish(args, figures, n, {})

        print("all models in one pass (analytics, graph, state) ...", flush=True)
        gport = free_port()
        (work / "falkordb").mkdir(exist_ok=True)
        graph = ManagedProcess(
            "graph", falkordb_argv("127.0.0.1", gport, work / "falkordb", appendonly=False),
            work / "falkordb.log",
        )  # fmt: skip
        graph.start()
        procs.append(graph)
        graph.wait_for_port("127.0.0.1", gport, 20)
        kport = free_port()
        broker = ManagedProcess("broker", tansu_argv("127.0.0.1", kport), work / "tansu.log")
        broker.start()
        procs.append(broker)
        broker.wait_for_port("127.0.0.1", kport, 10)
        bootstrap = f"127.0.0.1:{kport}"
        asyncio.run(wait_for_broker(bootstrap))
        asyncio.run(ensure_topics(bootstrap, 6))
        graph_url = f"falkordb://127.0.0.1:{gport}"
        t0 = time.perf_counter()
        res_all = run_rebuild(
            [
                AnalyticsTarget(url, "bench_all"),
                GraphTarget(graph_url, "live", "bench_all"),
                StateTarget(bootstrap),
            ],
            root,
            bootstrap,
        )
        wall = time.perf_counter() - t0
        ms = res_all.model_seconds  # type: ignore[attr-defined]
        figures.append(Figure("all models, wall time", wall, "s"))
        figures.append(
            Figure("  shared: read + decode + reducer (all models)", res_all.read_seconds, "s")  # type: ignore[attr-defined]
        )
        for model in ("analytics", "graph", "state"):
            figures.append(Figure(f"  {model}", ms.get(model, 0.0), "s"))
        figures.append(
            Figure("  graph rate", n / ms["graph"] if ms.get("graph") else 0.0, "events/s")
        )

        print(f"memory on the first {m:,} events ...", flush=True)
        from projections.memory.embedding import load_embedder
        from projections.memory.store import MemoryStore

        embedder = load_embedder()
        live = MemoryStore.open(str(work / "chroma"), embedder, "bench-live")
        t0 = time.perf_counter()
        res_mem = run_rebuild([MemoryTarget(live, "bench-memory")], small)
        wall_mem = time.perf_counter() - t0
        eps = res_mem.episodes  # type: ignore[attr-defined]
        docs = asyncio.run(episode_documents(small))
        t0 = time.perf_counter()
        embedder.embed(docs)
        raw_embed = len(docs) / (time.perf_counter() - t0)
        figures.append(Figure(f"memory rebuild of {m:,} events, wall", wall_mem, "s"))
        figures.append(
            Figure(
                "  memory: episodes embedded+stored",
                len(docs) / res_mem.model_seconds["memory"],  # type: ignore[attr-defined]
                "episodes/s",
                baseline=raw_embed,
                baseline_name="raw embed, same texts",
            )
        )
        per_event = res_mem.model_seconds["memory"] / m  # type: ignore[attr-defined]
        figures.append(Figure(f"  memory, extrapolated to {n:,} events", per_event * n, "s"))
    finally:
        for p in procs:
            p.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    params = {
        "episodes_in_memory_run": eps,
        "episode_texts_embedded_in_memory_run": len(docs),
        "violations": res_all.violations,  # type: ignore[attr-defined]
        "episodes": res_all.episodes,  # type: ignore[attr-defined]
        "agents": res_all.agents,  # type: ignore[attr-defined]
    }
    finish(args, figures, n, params)


def finish(args: argparse.Namespace, figures: list[Figure], n: int, extra: dict) -> None:
    params = {
        "events": args.events,
        "memory_events": args.memory_events,
        "only_analytics": args.only_analytics,
        "partitions": len(PARTITIONS),
        "segment_records": SEGMENT_RECORDS,
        **extra,
    }
    name = "bench_rebuild_analytics" if args.only_analytics else "bench_rebuild"
    path = write_results(name, figures, params)
    print_table(f"rebuild ({n:,} events)", figures)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
