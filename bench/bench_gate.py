"""What the gate costs a producer: the SDK through the gate vs the broker's own port.

    python bench/bench_gate.py [--events 100000] [--pings 300] [--repeats 3]

The embedded stack's clients reach the broker through two hops: the gate
(:mod:`streams.gate`, recording every acknowledgement in the ack ledger) and Tansu's proxy
behind it (which rewrites metadata). Before the gate kept a ledger, clients went through
Tansu's proxy alone. Three paths, same broker build, fresh broker per trial, alternating:

- ``direct``: the broker's own port (the baseline);
- ``tansu proxy``: the path before the ledger;
- ``gate -> tansu proxy``: the path now (the gate in its own process, as the stack runs it).

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
from aiokafka import AIOKafkaProducer

from agentstream.processes import ManagedProcess, free_port, port_open, tansu_argv, tansu_proxy_argv
from schemas.codec import encode_event
from schemas.topics import EVENTS
from streams.admin import ensure_topics, wait_for_broker
from streams.producer import EventProducer
from streams.simulator import SimulationConfig, generate

HOST = "127.0.0.1"
PATHS = ("direct", "tansu proxy", "gate -> tansu proxy")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def trial(path: str, events: list, pings: int, tmp: Path) -> dict[str, object]:
    procs: list[ManagedProcess] = []
    gate: subprocess.Popen[bytes] | None = None
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
        if path != "direct":
            proxy_port = free_port(HOST)
            gate_port = free_port(HOST) if path.startswith("gate") else proxy_port
            proxy = ManagedProcess(
                "proxy",
                tansu_proxy_argv(HOST, proxy_port, broker_port, advertised_port=gate_port),
                tmp / f"p{proxy_port}.log",
            )
            proxy.start()
            procs.append(proxy)
            proxy.wait_for_port(HOST, proxy_port, deadline_s=10)
            bootstrap = f"{HOST}:{gate_port}"
            if path.startswith("gate"):
                gate = subprocess.Popen(
                    [
                        *(sys.executable, "-m", "streams.gate", HOST, str(gate_port)),
                        *(HOST, str(proxy_port), str(tmp / "acks"), own),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                end = time.monotonic() + 30
                while not port_open(HOST, gate_port):
                    if gate.poll() is not None or time.monotonic() > end:
                        raise RuntimeError("the gate did not start")
                    await asyncio.sleep(0.02)
            await wait_for_broker(bootstrap)
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
    args = ap.parse_args()
    events = list(generate(SimulationConfig(agents=32, runs=None, seed=0, max_events=args.events)))
    rates: dict[str, list[float]] = {p: [] for p in PATHS}
    rtts: dict[str, list[float]] = {p: [] for p in PATHS}
    cpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for path in PATHS:
                got = asyncio.run(trial(path, events, args.pings, Path(tmp)))
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
            "SDK publish, gate -> tansu proxy (now)",
            best["gate -> tansu proxy"],
            "events/s",
            direct,
            "direct",
        ),
        Figure(
            "  now vs before",
            best["gate -> tansu proxy"],
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
        "load_average": os.getloadavg(),
        "samples_events_per_s": {k: [round(r) for r in v] for k, v in rates.items()},
        "gate_cpu_s_per_trial": [round(c, 3) for c in cpu],
    }
    path = write_results("bench_gate", figures, params)
    print_table(f"the gate: {len(events):,} events, acks=all", figures)
    print(f"load average {os.getloadavg()}; wrote {path}")


if __name__ == "__main__":
    main()
