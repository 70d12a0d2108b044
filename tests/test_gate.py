"""The gate records every acknowledgement before the producer gets it, so a broker crash's
loss is measured exactly.

Real broker (Tansu), Tansu's proxy between the gate and the broker as in the stack, real
clients: aiokafka and librdkafka (confluent-kafka). The last test runs the supervised stack:
the archiver is frozen while a producer is acknowledged, the broker is killed -9, and the
loss report must name exactly the acknowledged offsets that no archive holds. Before the
gate kept a ledger, the report missed every acknowledgement the archiver had not fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from conftest import HOST, Broker
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream.processes import free_port
from agentstream.settings import load_settings
from agentstream.stack import Stack
from schemas.codec import encode_event
from schemas.topics import EVENTS
from streams.ack_ledger import AckLedger, read_acked
from streams.archive import ack_ledger_dir, archive_state, read_loss_report
from streams.gate import Gate
from streams.kafka_wire import (
    DESCRIBE_CLUSTER,
    FIND_COORDINATOR,
    METADATA,
    WireError,
    produce_request,
    produce_response,
    request_header,
    rewrite_addresses,
)
from streams.log_identity import fetch_marker
from streams.producer import partition_for_key
from streams.simulator import SimulationConfig, generate
from streams.state_reader import fetch_high_watermarks

pytestmark = pytest.mark.integration


@dataclass
class GatedBroker:
    bootstrap: str  # the gate: what clients use
    gate: Gate
    broker: Broker
    ledger_dir: Path

    async def epoch(self) -> str:
        marker = await fetch_marker(self.broker.bootstrap)
        assert marker is not None
        return marker.epoch

    async def acked(self) -> dict[int, int]:
        return read_acked(self.ledger_dir, await self.epoch(), EVENTS)


@pytest.fixture
async def gated(kafka: Broker, tmp_path: Path) -> AsyncIterator[GatedBroker]:
    """The gate in front of the broker, giving clients its own address, as `up` runs it."""
    gate_port = free_port(HOST)
    ledger_dir = tmp_path / "acks"
    gate = Gate(HOST, gate_port, (HOST, kafka.port), ledger_dir, kafka.bootstrap)
    await gate.start()
    try:
        yield GatedBroker(f"{HOST}:{gate_port}", gate, kafka, ledger_dir)
    finally:
        await gate.stop()


def _events(n: int, seed: int = 7) -> list[Any]:
    return list(generate(SimulationConfig(agents=5, runs=None, seed=seed, max_events=n)))


async def _read_all(bootstrap: str, expected: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        EVENTS, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    got: list[Any] = []
    try:
        end = time.monotonic() + 30
        while len(got) < expected and time.monotonic() < end:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(records)
    finally:
        await consumer.stop()
    return got


async def test_every_acknowledgement_is_in_the_ledger_before_the_producer_hears_of_it(
    gated: GatedBroker,
) -> None:
    events = _events(300)
    producer = AIOKafkaProducer(bootstrap_servers=gated.bootstrap, acks="all")
    await producer.start()
    epoch = await gated.epoch()
    try:
        for e in events:
            meta = await producer.send_and_wait(EVENTS, encode_event(e), key=e.agentid.encode())
            # the producer holds its acknowledgement: the ledger already has it
            assert read_acked(gated.ledger_dir, epoch, EVENTS)[meta.partition] >= meta.offset + 1
    finally:
        await producer.stop()
    hw = await fetch_high_watermarks(gated.broker.bootstrap, EVENTS)
    assert await gated.acked() == {p: n for p, n in hw.items() if n}
    assert gated.gate.stats.acked_records == len(events)
    # and the gate is transparent: a consumer through it reads every record, byte for byte
    got = await _read_all(gated.bootstrap, len(events))
    assert sorted(r.value for r in got) == sorted(encode_event(e) for e in events)


async def test_compressed_batches_many_per_request_are_counted_by_their_records(
    gated: GatedBroker,
) -> None:
    events = _events(2_000, seed=8)
    producer = AIOKafkaProducer(
        bootstrap_servers=gated.bootstrap,
        acks="all",
        compression_type="gzip",
        linger_ms=20,
        max_batch_size=4096,  # several batches per partition per request
    )
    await producer.start()
    try:
        futures = [
            await producer.send(EVENTS, encode_event(e), key=e.agentid.encode()) for e in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    hw = await fetch_high_watermarks(gated.broker.bootstrap, EVENTS)
    assert sum(hw.values()) == len(events)
    assert await gated.acked() == {p: n for p, n in hw.items() if n}


async def test_records_sent_without_acknowledgement_are_not_in_the_ledger(
    gated: GatedBroker,
) -> None:
    events = _events(50, seed=9)
    producer = AIOKafkaProducer(bootstrap_servers=gated.bootstrap, acks=0)
    await producer.start()
    try:
        for e in events:
            await producer.send(EVENTS, encode_event(e), key=e.agentid.encode())
        await producer.flush()
    finally:
        await producer.stop()
    hw: dict[int, int] = {}
    end = time.monotonic() + 10
    while sum(hw.values()) < len(events) and time.monotonic() < end:
        hw = await fetch_high_watermarks(gated.broker.bootstrap, EVENTS)
    assert sum(hw.values()) == len(events)  # they are in the log ...
    assert await gated.acked() == {}  # ... but nobody was told so: nothing to account for


async def test_librdkafka_produces_and_consumes_through_the_gate_and_is_recorded(
    gated: GatedBroker,
) -> None:
    ck = pytest.importorskip("confluent_kafka")
    events = _events(800, seed=10)
    delivered: list[tuple[int, int]] = []

    def produce() -> None:
        p = ck.Producer(
            {
                "bootstrap.servers": gated.bootstrap,
                "partitioner": "murmur2_random",
                "acks": "all",
                "linger.ms": 5,
            }
        )

        def on_delivery(err: Any, msg: Any) -> None:
            assert err is None, err
            delivered.append((msg.partition(), msg.offset()))

        for e in events:
            p.produce(EVENTS, encode_event(e), key=e.agentid.encode(), on_delivery=on_delivery)
            p.poll(0)
        assert p.flush(30) == 0

    await asyncio.to_thread(produce)  # the gate serves from this loop meanwhile
    assert len(delivered) == len(events)
    ends: dict[int, int] = {}
    for partition, offset in delivered:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    assert await gated.acked() == ends
    hw = await fetch_high_watermarks(gated.broker.bootstrap, EVENTS)
    assert {p: n for p, n in hw.items() if n} == ends
    # one agent's events on one partition, as our own producer places them
    parts = sorted(hw)
    for e in events[:50]:
        key = e.agentid.encode()
        assert any(p == partition_for_key(key, parts) for p, _ in delivered)

    def consume() -> int:
        c = ck.Consumer(
            {
                "bootstrap.servers": gated.bootstrap,
                "group.id": "gate-test",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        c.subscribe([EVENTS])
        n, end = 0, time.monotonic() + 60
        try:
            while n < len(events) and time.monotonic() < end:
                msg = c.poll(0.5)
                if msg is not None and msg.error() is None:
                    n += 1
        finally:
            c.close()
        return n

    assert await asyncio.to_thread(consume) == len(events)


async def test_clients_are_only_ever_told_the_gates_address(gated: GatedBroker) -> None:
    """Metadata, group coordinator and cluster answers name the gate, never the broker's own
    port (a client that learned that port would bypass the gate and its ledger)."""
    gate = gated.bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=gate)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()  # Metadata
        assert {f"{b['host']}:{b['port']}" for b in cluster["brokers"]} == {gate}
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        EVENTS, bootstrap_servers=gate, group_id="gate-addresses", auto_offset_reset="earliest"
    )
    await consumer.start()  # FindCoordinator, then the group's requests to that coordinator
    try:
        await consumer.getmany(timeout_ms=200)
        # every connection it holds, the group coordinator's included, goes to the gate
        conns = {f"{c.host}:{c.port}" for c in consumer._client._conns.values()}
        assert conns == {gate}, conns
    finally:
        await consumer.stop()


async def test_hostile_connections_end_alone_and_the_gate_keeps_serving(
    gated: GatedBroker,
) -> None:
    host, port = gated.bootstrap.rsplit(":", 1)
    garbage = [
        b"\xff\xff\xff\xff",  # a negative frame size
        b"\x7f\xff\xff\xff" + b"x" * 100,  # a frame far beyond Kafka's request limit
        b"\x00\x00\x00\x02ab",  # a frame too short for a request header
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not Kafka at all
        # a Produce v9 request (flexible) whose topic array claims more than it holds
        b"\x00\x00\x00\x14"
        + bytes.fromhex("0000000900000007ffff00")
        + b"\x00\x00\x01"
        + b"\x00\x00\x00\x10"
        + b"\xff\x7f",
    ]
    for payload in garbage:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(payload)
        await writer.drain()
        # the gate closes the connection (or the broker answers nothing): never hangs
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    # and it still serves real clients, recording their acknowledgements
    events = _events(20, seed=13)
    producer = AIOKafkaProducer(bootstrap_servers=gated.bootstrap, acks="all")
    await producer.start()
    try:
        for e in events:
            await producer.send_and_wait(EVENTS, encode_event(e), key=e.agentid.encode())
    finally:
        await producer.stop()
    assert sum((await gated.acked()).values()) == len(events)
    assert gated.gate.stats.unreadable == len(garbage)  # each one counted


# --- the wire format, on its own -----------------------------------------------------------


@settings(max_examples=3_000, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 13))
def test_unreadable_frames_raise_only_wire_errors(frame: bytes, version: int) -> None:
    for parse in (
        lambda: produce_request(frame, request_header(frame)),
        lambda: produce_response(frame, version),
        lambda: rewrite_addresses(frame, METADATA, version, HOST, 1),
        lambda: rewrite_addresses(frame, FIND_COORDINATOR, min(version, 6), HOST, 1),
        lambda: rewrite_addresses(frame, DESCRIBE_CLUSTER, version % 2, HOST, 1),
    ):
        with contextlib.suppress(WireError):
            parse()


def test_a_ledger_survives_its_writer_and_keeps_the_highest_end(tmp_path: Path) -> None:
    ledger = AckLedger(tmp_path, "gate", "epoch-1")
    ledger.record(EVENTS, 3, 10)
    ledger.record(EVENTS, 3, 7)  # an older answer arriving late never lowers it
    ledger.record(EVENTS, 0, 5)
    ledger.record("other-topic", 3, 99)
    # no close(): a killed writer's stores are in the file already
    assert read_acked(tmp_path, "epoch-1", EVENTS) == {0: 5, 3: 10}
    again = AckLedger(tmp_path, "gate", "epoch-1")  # a restarted writer continues it
    again.record(EVENTS, 3, 12)
    AckLedger(tmp_path, "otlp", "epoch-1").record(EVENTS, 0, 8)
    assert read_acked(tmp_path, "epoch-1", EVENTS) == {0: 8, 3: 12}
    assert read_acked(tmp_path, "epoch-2", EVENTS) == {}


# --- the whole stack: a broker crash while the archiver is behind --------------------------


def _wait(pred: Callable[[], Any], deadline_s: float, what: str) -> Any:
    end = time.monotonic() + deadline_s
    while not (value := pred()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


def _pid(stack: Stack, name: str) -> int | None:
    part = next(p for p in stack.status(lag=False) if p.part == name)
    return part.pid if part.state == "running" else None


def test_a_broker_crash_reports_exactly_the_acknowledged_records_no_archive_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTSTREAM_CONFIG", str(tmp_path / "no-such-config.toml"))
    settings = load_settings(
        data_dir=tmp_path / "data",
        kafka_url=f"kafka://{HOST}:{free_port(HOST)}",
        graph_url=f"falkordb://{HOST}:{free_port(HOST)}",
        metrics_port_base=0,
        worker_enabled=False,
        projections_enabled=False,
        ui_enabled=False,
        otlp_enabled=False,
        archive_flush_s=0.3,
    )
    stack = Stack(settings)
    bootstrap = settings.bootstrap_servers
    first, second = _events(400, seed=11), _events(2_400, seed=12)[400:]

    async def send(events: list[Any]) -> dict[int, int]:
        """acks=all through the gate; per partition, the end of what was acknowledged."""
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        ends: dict[int, int] = {}
        try:
            futures = [
                await producer.send(EVENTS, encode_event(e), key=e.agentid.encode()) for e in events
            ]
            for meta in await asyncio.gather(*futures):
                ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        finally:
            await producer.stop()
        return ends

    try:
        stack.up()
        asyncio.run(send(first))
        root = settings.archive_location
        _wait(
            lambda: sum(n + 1 for n in archive_state(root).last_offsets.values()) == len(first),
            60,
            "the first events archived",
        )
        archiver = _pid(stack, "archiver")
        broker = _pid(stack, "broker")
        assert archiver and broker
        os.kill(archiver, signal.SIGSTOP)  # it reads nothing more: every new ack is at risk
        try:
            acked = asyncio.run(send(second))
            os.kill(broker, signal.SIGKILL)
        finally:
            os.kill(archiver, signal.SIGCONT)
        report = _wait(
            lambda: (r := read_loss_report(root)).incidents and r, 120, "the loss reported"
        )
        # A fetch answered just before the freeze can still sit in the archiver's socket: it
        # archives those records when it resumes. Everything else acknowledged is lost, and
        # the report must name exactly that: from the end of the archive to the last ack.
        archived = {p: n + 1 for p, n in archive_state(root).last_offsets.items()}
        expected = {
            p: (archived.get(p, 0), end - 1) for p, end in acked.items() if end > archived.get(p, 0)
        }
        lost = sum(b - a + 1 for a, b in expected.values())
        assert lost > len(second) // 2  # most of them were at risk (precondition)
        assert len(report.incidents) == 1
        assert report.incidents[0].ranges == expected
        # what users see: `archive --losses --json` and `status`
        env = {**os.environ, "AGENTSTREAM_DATA_DIR": str(settings.data_dir)}
        env["AGENTSTREAM_KAFKA_URL"], env["AGENTSTREAM_GRAPH_URL"] = (
            settings.kafka_url,
            settings.graph_url,
        )
        out = subprocess.run(
            [sys.executable, "-m", "agentstream.cli", "archive", "--losses", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert json.loads(out.stdout)["records"] == lost, out.stdout + out.stderr
        status = subprocess.run(
            [sys.executable, "-m", "agentstream.cli", "status"],
            capture_output=True,
            text=True,
            env={**env, "COLUMNS": "400"},
            timeout=60,
        )
        assert f"log loss: {lost:,} acknowledged records were lost" in status.stdout, status.stdout
        assert ack_ledger_dir(root).is_dir()
    finally:
        stack.down()
