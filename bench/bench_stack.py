"""Graph restart-to-ready: AOF with an RDB preamble (compacted at stop) vs plain AOF replay.

    python bench/bench_stack.py [--events 1000000] [--run-len 250] [--batch 25000]
                                [--budget-s 600] [--replay-cap-s 300]

Why: `agentstream up` after `down` must have the graph ready in <= 10 s with 1M events in
it. FalkorDB (redis-server) replays its append-only file at start; a graph written by the
projection replays every UNWIND/MERGE query again (38 s for 8k events measured before).
The stack now starts FalkorDB with ``aof-use-rdb-preamble yes`` and rewrites the AOF before
stopping it (the ``before_stop`` hook of the graph part), so a start loads a snapshot.

Steps, all in this process, one graph:

1. build: a fresh FalkorDB with plain AOF (no preamble, no automatic rewrite) gets
   ``--events`` synthetic events (chains of ``--run-len`` per run, the same generator as
   bench_graph) through the graph projection's own writes (``projection.project``, what
   ``GraphProjection.apply`` runs), in batches of ``--batch``, until done or ``--budget-s``
   is spent (the size reached is reported). Not through Kafka: the graph is the same
   whatever the batch boundaries (tests/test_graph_projection.py replays with other
   boundaries and compares complete dumps). The build server runs with ``appendfsync no``:
   the AOF holds the same commands, the kernel only flushes it when it likes. Then SIGTERM.
2. the data directory is copied: both restarts load the very same graph.
3. baseline: start on copy A as written (plain AOF): time from spawn to ready (PING + the
   graph module answering, the stack's own readiness check), with the loading progress
   redis reports.
4. compacted: start on copy B, run the stack's stop hook (``BGREWRITEAOF`` with the RDB
   preamble, timed: that is the cost added to `down`), SIGTERM, start again: time to ready.
5. both graphs must hold the same node and relationship counts as the original.

Where the time goes: FalkorDB logs each phase of loading a graph (nodes decoded, edges
decoded, matrices loaded, "Constructing indexes", "Done decoding"); ``load_phases`` reads
those timestamps from the snapshot restart's own log, so the JSON says which phase took what.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, print_table, write_results
from bench_graph import deep_events

from agentstream.processes import ManagedProcess, falkordb_argv, free_port
from agentstream.settings import Settings
from agentstream.stack import _graph_compact, _graph_wait_ready
from projections.graph.falkordb_store import FalkorDBStore
from projections.graph.projection import project

HOST = "127.0.0.1"
GRAPH = "agentstream"
READY_GOAL_S = 10.0


def settings_for(port: int, data: Path) -> Settings:
    return Settings(data_dir=data, graph_url=f"falkordb://{HOST}:{port}")


def start(
    data: Path, rdb_preamble: bool, log: str = "falkordb", extra: tuple[str, ...] = ()
) -> tuple[ManagedProcess, int]:
    port = free_port(HOST)
    (data / "falkordb").mkdir(parents=True, exist_ok=True)
    argv = falkordb_argv(HOST, port, data / "falkordb", rdb_preamble=rdb_preamble)
    proc = ManagedProcess("graph", [*argv, *extra], data / f"{log}.log")
    proc.start()
    return proc, port


_STAMP = re.compile(r" (\d\d:\d\d:\d\d\.\d{3}) ")
_PHASES = (  # (name, a line that ends it); each phase starts where the previous one ended
    ("nodes", re.compile(r"processed (\d+)/\1 nodes")),
    ("edges", re.compile(r"processed (\d+)/\1 edges")),
    ("matrices", re.compile(r"Constructing indexes|Indexes are constructed")),
    ("indexes", re.compile(r"Done decoding graph")),
)


def load_phases(log: Path) -> dict[str, float]:
    """Seconds per phase of FalkorDB loading its graph, from the timestamps of its log:
    decoding nodes, decoding edges, loading the matrices, building the indexes (FalkorDB
    keeps no index in the snapshot: it rebuilds each one at every load)."""
    lines = log.read_text(errors="replace").splitlines()
    start = next((ln for ln in lines if "processing virtual key: 1/" in ln), None)
    if start is None or not _STAMP.search(start):
        return {}

    def at(line: str) -> float:
        stamp = _STAMP.search(line)
        assert stamp is not None
        h, mi, sec = stamp.group(1).split(":")
        return int(h) * 3600 + int(mi) * 60 + float(sec)

    t0 = prev = at(start)
    phases: dict[str, float] = {}
    for name, end in _PHASES:
        hit = [ln for ln in lines if end.search(ln)]
        if not hit:
            return phases
        t = at(hit[-1])
        phases[name] = (t - prev) % 86_400
        prev = t
    phases["total"] = (prev - t0) % 86_400
    return phases


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used: what loading costs on an idle core."""
    from agentstream.stack import cpu_ticks

    return (cpu_ticks(pid) or 0) / os.sysconf("SC_CLK_TCK")


def ready_time(
    data: Path, rdb_preamble: bool, cap_s: float | None = None, log: str = "falkordb"
) -> tuple[float, float, ManagedProcess, int, bool]:
    """Seconds from spawn to ready, the highest loading percentage seen, the process, its
    port, and whether it got ready (False: ``cap_s`` passed first, still loading)."""
    t0 = time.perf_counter()
    proc, port = start(data, rdb_preamble, log=log)
    seen = {"perc": 0.0, "reports": 0}

    def report(text: str, done: float | None, total: float | None) -> None:
        seen["reports"] += 1
        seen["perc"] = max(seen["perc"], done or 0.0)
        if seen["reports"] % 100 == 1:
            print(f"    {text} ({done:.1f}%)", flush=True)
        if cap_s is not None and time.perf_counter() - t0 > cap_s:
            raise TimeoutError

    try:
        while not _port_open(port):
            time.sleep(0.005)
        _graph_wait_ready(settings_for(port, data), 120.0, report=report, pid=proc.proc.pid)
    except TimeoutError:
        return time.perf_counter() - t0, seen["perc"], proc, port, False
    except BaseException:
        stop_pid_hard(proc)
        raise
    return time.perf_counter() - t0, seen["perc"], proc, port, True


def _port_open(port: int) -> bool:
    from agentstream.processes import port_open

    return port_open(HOST, port, timeout=0.05)


def counts(port: int) -> tuple[int, int]:
    store = FalkorDBStore(HOST, port, GRAPH)
    nodes = store.read("MATCH (n) RETURN count(n)")[0][0]
    rels = store.read("MATCH ()-[r]->() RETURN count(r)")[0][0]
    return int(nodes), int(rels)


def shape(port: int) -> dict[str, dict[str, int]]:
    """Nodes per label, relationships per type, and the Event properties stored."""
    store = FalkorDBStore(HOST, port, GRAPH)
    c = store.counts()
    props = store.read("MATCH (e:Event) WITH e LIMIT 1000 RETURN avg(size(keys(e)))")[0][0]
    store.close()
    return {
        "nodes": c.nodes,
        "relationships": c.relationships,
        "event_properties": {"avg_of_first_1000": float(props or 0)},
    }


def aof_bytes(data: Path) -> int:
    return sum(f.stat().st_size for f in (data / "falkordb").rglob("*") if f.is_file())


def build(
    data: Path, total: int, run_len: int, budget_s: float, batch_size: int
) -> tuple[int, float]:
    proc, port = start(data, rdb_preamble=False, log="build", extra=("--appendfsync", "no"))
    proc.wait_for_port(HOST, port, 15)
    _graph_wait_ready(settings_for(port, data), 15.0)
    store = FalkorDBStore(HOST, port, GRAPH)
    store.setup()
    built, t0 = 0, time.perf_counter()
    batch = []
    runs = (total + run_len - 1) // run_len
    for e in deep_events(total, run_len, max(1, runs // 20), {}):
        batch.append(e)
        if len(batch) == batch_size:
            project(store, batch)
            built += len(batch)
            batch = []
            if built % 100_000 < batch_size:
                rate = built / (time.perf_counter() - t0)
                print(f"  built {built:,} events ({rate:,.0f}/s)", flush=True)
            if time.perf_counter() - t0 > budget_s:
                print(f"  budget of {budget_s:.0f}s spent: stopping at {built:,} events")
                break
    else:
        if batch:
            project(store, batch)
            built += len(batch)
    took = time.perf_counter() - t0
    proc.stop(timeout_s=120)
    return built, took


def snapshot_copy(src: Path, dst: Path) -> float:
    """``dst``: the same graph as ``src``, its AOF rewritten with the RDB preamble, exactly
    what `down` leaves. Loads the RDB that SIGTERM saved (no replay), turns the AOF on (a
    rewrite with the preamble), waits, stops. Returns the rewrite's seconds."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "falkordb" / "appendonlydir")
    port = free_port(HOST)
    argv = falkordb_argv(HOST, port, dst / "falkordb", appendonly=False)
    proc = ManagedProcess("graph", argv, dst / "falkordb.log")
    proc.start()
    proc.wait_for_port(HOST, port, 15)
    _graph_wait_ready(settings_for(port, dst), 120.0, pid=proc.proc.pid)
    import redis

    r = redis.Redis(host=HOST, port=port)
    t0 = time.perf_counter()
    r.config_set("aof-use-rdb-preamble", "yes")
    r.config_set("appendonly", "yes")  # starts a rewrite: the base file is an RDB snapshot
    while True:
        info = r.info("persistence")
        busy = int(info["aof_rewrite_in_progress"]) or int(info["aof_rewrite_scheduled"])
        if not busy and int(info.get("aof_enabled", 0)):
            break
        time.sleep(0.02)
    took = time.perf_counter() - t0
    r.close()
    proc.stop(timeout_s=120)
    return took


def measure(
    root: Path, events: int, run_len: int, budget_s: float, cap_s: float, batch_size: int
) -> dict:
    """Build one graph; restart it from the plain AOF and from the compacted one."""
    original = root / f"original-{events}"
    print(f"building a graph of up to {events:,} events (plain AOF) ...", flush=True)
    built, build_s = build(original, events, run_len, budget_s, batch_size)
    written = aof_bytes(original)
    print(f"  {built:,} events in {build_s:.0f}s; on disk {written / 1e6:,.1f} MB", flush=True)

    b = root / f"snapshot-{events}"
    rewrite_s = snapshot_copy(original, b)
    print(f"compacted copy: rewrite with the RDB preamble took {rewrite_s:.2f}s", flush=True)
    load_before = os.getloadavg()[0]
    snap_s, _, proc, port, _ = ready_time(b, rdb_preamble=True, log="snapshot-restart")
    snap_cpu = cpu_seconds(proc.proc.pid)  # the server's CPU time up to ready
    load_after = os.getloadavg()[0]
    phases = load_phases(b / "snapshot-restart.log")
    snap_counts = counts(port)
    graph_shape = shape(port)
    t0 = time.perf_counter()
    note = _graph_compact(settings_for(port, b))  # what `down` runs: nothing new to write
    down_hook_s = time.perf_counter() - t0
    proc.stop(timeout_s=120)
    print(f"  restart with the snapshot: ready in {snap_s:.2f}s; {snap_counts[0]:,} nodes")
    print("  load phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()))

    a = root / f"replay-{events}"
    shutil.copytree(original, a)
    print(f"baseline: start on the AOF as written (replays every write; cap {cap_s:.0f}s) ...")
    replay_s, replay_perc, proc, port, done = ready_time(
        a, rdb_preamble=False, cap_s=cap_s, log="replay-restart"
    )
    replay_cpu = cpu_seconds(proc.proc.pid)
    if done:
        replay_counts = counts(port)
        if replay_counts != snap_counts:
            raise SystemExit(f"the two restarts differ: {replay_counts} vs {snap_counts}")
        print(f"  ready in {replay_s:.2f}s; {replay_counts[0]:,} nodes", flush=True)
        proc.stop(timeout_s=120)
    else:
        print(f"  still loading after {replay_s:.0f}s, at {replay_perc:.1f}%", flush=True)
        stop_pid_hard(proc)
    snapshot_mb = aof_bytes(b) / 1e6
    for d in (original, a, b):
        shutil.rmtree(d, ignore_errors=True)
    return {
        "events": built,
        "build_s": build_s,
        "plain_aof_mb": written / 1e6,
        "rewrite_s": rewrite_s,
        "down_hook_s": down_hook_s,
        "down_hook_note": note,
        "snapshot_ready_s": snap_s,
        "snapshot_ready_cpu_s": snap_cpu,
        "snapshot_load_phases_s": phases,
        "snapshot_mb": snapshot_mb,
        "shape": graph_shape,
        "batch": batch_size,
        "load_avg_1m_around_snapshot_restart": [load_before, load_after],
        "replay_cpu_s": replay_cpu,
        "nodes": snap_counts[0],
        "relationships": snap_counts[1],
        "replay_ready_s": replay_s if done else None,
        "replay_capped_at_s": None if done else replay_s,
        "replay_perc_at_cap": None if done else replay_perc,
        # a lower bound: loading is not faster at the end than at the start
        "replay_estimated_s": replay_s if done else replay_s * 100.0 / max(replay_perc, 0.01),
    }


def stop_pid_hard(proc: ManagedProcess) -> None:
    """A redis that is loading ignores SIGTERM until it is done: kill it."""
    from agentstream.processes import stop_pid

    if proc.proc is not None:
        stop_pid(proc.proc.pid, timeout_s=2.0)
        proc.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=5_000, help="a graph whose replay completes")
    ap.add_argument("--run-len", type=int, default=250)
    ap.add_argument("--batch", type=int, default=25_000, help="events per projection batch")
    ap.add_argument("--budget-s", type=float, default=600.0)
    ap.add_argument("--replay-cap-s", type=float, default=300.0)
    ap.add_argument("--results-name", default="bench_stack", help="bench/results/NAME.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        root = Path(tmp)
        small = measure(
            root, args.small, args.run_len, args.budget_s, args.replay_cap_s * 2, args.batch
        )
        large = measure(
            root, args.events, args.run_len, args.budget_s, args.replay_cap_s, args.batch
        )

    figures = []
    for m in (small, large):
        n = m["events"]
        base = m["replay_ready_s"] or m["replay_estimated_s"]
        how = "plain AOF replay, same graph" + ("" if m["replay_ready_s"] else " (estimated)")
        figures.append(
            Figure(
                f"restart to ready, snapshot ({n:,} events)",
                m["snapshot_ready_s"],
                "s",
                baseline=base,
                baseline_name=how,
            )
        )
        figures.append(
            Figure(f"speed-up vs replay ({n:,} events)", base / m["snapshot_ready_s"], "x")
        )
    figures.append(
        Figure(
            f"server CPU time to ready, snapshot ({large['events']:,} events)",
            large["snapshot_ready_cpu_s"],
            "s",
        )
    )
    phases = large["snapshot_load_phases_s"]
    figures += [
        Figure(f"  of the load: {name} ({large['events']:,} events)", phases[name], "s")
        for name in ("nodes", "edges", "matrices", "indexes")
        if name in phases
    ]
    figures += [
        Figure(
            f"AOF rewrite with RDB preamble ({large['events']:,} events)", large["rewrite_s"], "s"
        ),
        Figure(
            "graph build through the projection", large["events"] / large["build_s"], "events/s"
        ),
    ]
    params = {
        "events_asked": args.events,
        "run_len": args.run_len,
        "budget_s": args.budget_s,
        "batch": args.batch,
        "replay_cap_s": args.replay_cap_s,
        "ready_goal_s": READY_GOAL_S,
        "ready_goal_met": large["snapshot_ready_s"] <= READY_GOAL_S,
        "small": small,
        "large": large,
    }
    path = write_results(args.results_name, figures, params)
    print_table("graph restart: AOF with RDB preamble (compacted at down) vs AOF replay", figures)
    verdict = "met" if large["snapshot_ready_s"] <= READY_GOAL_S else "NOT met"
    print(
        f"goal: graph ready in <= {READY_GOAL_S:.0f}s after down with {large['events']:,} "
        f"events: {verdict} ({large['snapshot_ready_s']:.2f}s wall, "
        f"{large['snapshot_ready_cpu_s']:.2f}s of server CPU; load average "
        f"{large['load_avg_1m_around_snapshot_restart'][0]:.1f} on {os.cpu_count()} cores)"
    )
    if large["replay_ready_s"] is None:
        print(
            f"the replay baseline at {large['events']:,} events had loaded "
            f"{large['replay_perc_at_cap']:.1f}% after {large['replay_capped_at_s']:.0f}s "
            f"(estimated total >= {large['replay_estimated_s']:,.0f}s)"
        )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
