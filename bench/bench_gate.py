"""What the gate costs a producer: the SDK through the gate vs the broker's own port.

    python bench/bench_gate.py [--events 100000] [--pings 300] [--repeats 3]

The embedded stack's clients reach the broker through the gate (:mod:`streams.gate`: it
records every acknowledgement in the ack ledger and writes its own address into metadata).
Before, the gate was Tansu's own proxy. Three paths, same broker build, fresh broker per
trial, in rotating order after a discarded warm-up:

- ``direct``: the broker's own port (the baseline);
- ``tansu proxy``: the gate before (``tansu proxy``);
- ``gate``: the gate now, in its own process, as the stack runs it.

Optionally (``--idle-consumers N``) N consumers sit at the end of the log through the same
path while it is measured, as the stack's own readers once did through Tansu's proxy.

Per path: the SDK's publish rate (``EventProducer.send`` per event, then ``flush``; acks=all,
1 MiB batches) over simulator events, and the round trip of one acknowledged record
(``send_and_wait``, ``--pings`` times: p50 / p99). Best of ``--repeats`` for rates, pooled
samples for latency. Also the gate process's CPU time per acknowledged record.
Writes ``bench/results/bench_gate.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, print_table, write_results
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from agentstream.processes import ManagedProcess, free_port, port_open, tansu_argv, tansu_proxy_argv
from schemas.codec import encode_event
from schemas.topics import EVENTS
from streams.admin import ensure_topics, wait_for_broker
from streams.producer import EventProducer
from streams.simulator import SimulationConfig, generate

HOST = "127.0.0.1"
PATHS = ("direct", "tansu proxy", "gate")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _start_gate(gate_port: int, broker_port: int, tmp: Path) -> subprocess.Popen[bytes]:
    own = f"{HOST}:{broker_port}"
    gate = subprocess.Popen(
        [
            *(sys.executable, "-m", "streams.gate", HOST, str(gate_port)),
            *(HOST, str(broker_port), str(tmp / "acks"), own),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    end = time.monotonic() + 30
    while not port_open(HOST, gate_port):
        if gate.poll() is not None or time.monotonic() > end:
            raise RuntimeError("the gate did not start")
        await asyncio.sleep(0.02)
    return gate


async def _idle_consumers(bootstrap: str, n: int) -> list[AIOKafkaConsumer]:
    """Group consumers at the end of the log, each holding a fetch open (500 ms)."""
    out = []
    for i in range(n):
        c = AIOKafkaConsumer(EVENTS, bootstrap_servers=bootstrap, group_id=f"idle-{i}")
        await c.start()
        out.append(c)
    return out


async def trial(path: str, events: list, pings: int, idle: int, tmp: Path) -> dict[str, object]:
    procs: list[ManagedProcess] = []
    gate: subprocess.Popen[bytes] | None = None
    consumers: list[AIOKafkaConsumer] = []
    tasks: list[asyncio.Task[None]] = []
    broker_port = free_port(HOST)
    broker = ManagedProcess("broker", tansu_argv(HOST, broker_port), tmp / f"b{broker_port}.log")
    broker.start()
    procs.append(broker)
    try:
        broker.wait_for_port(HOST, broker_port, deadline_s=10)
        own = f"{HOST}:{broker_port}"
        await wait_for_broker(own)
        await ensure_topics(own, 6)
        bootstrap = own
        if path == "tansu proxy":
            port = free_port(HOST)
            proxy = ManagedProcess(
                "proxy", tansu_proxy_argv(HOST, port, broker_port), tmp / f"p{port}.log"
            )
            proxy.start()
            procs.append(proxy)
            proxy.wait_for_port(HOST, port, deadline_s=10)
            bootstrap = f"{HOST}:{port}"
        elif path == "gate":
            port = free_port(HOST)
            gate = await _start_gate(port, broker_port, tmp)
            bootstrap = f"{HOST}:{port}"
        await wait_for_broker(bootstrap)
        consumers = await _idle_consumers(bootstrap, idle)

        async def poll(c: AIOKafkaConsumer) -> None:
            while True:
                await c.getmany(timeout_ms=500)

        tasks = [asyncio.create_task(poll(c)) for c in consumers]
        cpu0 = _cpu_s(gate.pid) if gate else 0.0
        async with EventProducer(bootstrap, acks="all", max_batch_bytes=1 << 20) as producer:
            t0 = time.perf_counter()
            for e in events:
                await producer.send(e)
            await producer.flush()
            rate = len(events) / (time.perf_counter() - t0)
        gate_cpu = (_cpu_s(gate.pid) - cpu0) if gate else None
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
        await producer.start()
        rtts: list[float] = []
        try:
            value = encode_event(events[0])
            for _ in range(pings):
                t0 = time.perf_counter()
                await producer.send_and_wait(EVENTS, value, key=events[0].agentid.encode())
                rtts.append((time.perf_counter() - t0) * 1000)
        finally:
            await producer.stop()
        return {"rate": rate, "rtts": rtts, "gate_cpu_s": gate_cpu}
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in consumers:
            await c.stop()
        if gate is not None:
            gate.terminate()
            gate.wait(30)
        for p in reversed(procs):
            p.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--pings", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--idle-consumers", type=int, default=0)
    args = ap.parse_args()
    events = list(generate(SimulationConfig(agents=32, runs=None, seed=0, max_events=args.events)))
    rates: dict[str, list[float]] = {p: [] for p in PATHS}
    rtts: dict[str, list[float]] = {p: [] for p in PATHS}
    cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        # one discarded warm-up trial; then each repeat starts with another path
        asyncio.run(trial("direct", events[:2000], 5, 0, Path(tmp)))
        for rep in range(args.repeats):
            for path in PATHS[rep % len(PATHS) :] + PATHS[: rep % len(PATHS)]:
                got = asyncio.run(trial(path, events, args.pings, args.idle_consumers, Path(tmp)))
                rates[path].append(got["rate"])  # type: ignore[arg-type]
                rtts[path].extend(got["rtts"])  # type: ignore[arg-type]
                if got["gate_cpu_s"] is not None:
                    cpu.append(got["gate_cpu_s"])  # type: ignore[arg-type]
                print(f"  repeat {rep + 1}: {path:22s} {got['rate']:>10,.0f} events/s", flush=True)

    def q(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1]

    best = {p: max(v) for p, v in rates.items()}
    direct = best["direct"]
    figures = [
        Figure("SDK publish, direct (baseline)", direct, "events/s"),
        Figure(
            "SDK publish, tansu proxy (before)", best["tansu proxy"], "events/s", direct, "direct"
        ),
        Figure(
            "SDK publish, gate (now)",
            best["gate"],
            "events/s",
            direct,
            "direct",
        ),
        Figure(
            "  now vs before",
            best["gate"],
            "events/s",
            best["tansu proxy"],
            "tansu proxy",
        ),
    ]
    for path in PATHS:
        figures.append(Figure(f"round trip p50, {path}", q(rtts[path], 50), "ms"))
        figures.append(Figure(f"round trip p99, {path}", q(rtts[path], 99), "ms"))
    per_record_us = min(cpu) / len(events) * 1e6 if cpu else None
    if per_record_us is not None:
        figures.append(Figure("gate CPU per published record", per_record_us, "µs"))
    params = {
        "events": len(events),
        "pings": args.pings,
        "repeats": args.repeats,
        "idle_consumers": args.idle_consumers,
        "load_average": os.getloadavg(),
        "samples_events_per_s": {k: [round(r) for r in v] for k, v in rates.items()},
        "gate_cpu_s_per_trial": [round(c, 3) for c in cpu],
    }
    name = "bench_gate" + (f"_idle{args.idle_consumers}" if args.idle_consumers else "")
    path = write_results(name, figures, params)
    print_table(
        f"the gate: {len(events):,} events, acks=all, {args.idle_consumers} idle consumers", figures
    )
    print(f"load average {os.getloadavg()}; wrote {path}")


if __name__ == "__main__":
    main()
