"""The docs' "With another Kafka client" recipes, run with confluent-kafka (librdkafka)
against the real embedded broker, with our processor in between.

The producer recipe (docs/producing.md) and the reader (docs/analytics.md) are taken from
the docs' code blocks and executed as they stand (only the broker address is replaced),
so the docs cannot drift from what works.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from schemas.codec import DEFAULT_MAX_EVENT_BYTES, encode_event  # noqa: E402
from schemas.envelope import Event  # noqa: E402
from schemas.topics import DLQ, EVENTS  # noqa: E402
from streams.emitter import EventFactory  # noqa: E402
from streams.processor import DEFAULT_GROUP, build_app, processor_progress  # noqa: E402
from streams.producer import partition_for_key  # noqa: E402
from streams.simulator import SimulationConfig, generate  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
DOC_BROKER = "127.0.0.1:19092"


def doc_block(doc: str, heading: str) -> str:
    """The first ```python block after ``heading`` in docs/<doc>."""
    text = (DOCS / doc).read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, f"no python block under {heading!r} in {doc}"
    return match.group(1)


def load(doc: str, bootstrap: str) -> dict[str, Any]:
    code = doc_block(doc, "## With another Kafka client")
    assert DOC_BROKER in code
    namespace: dict[str, Any] = {"__name__": f"docs_{doc.replace('.', '_')}"}
    exec(compile(code.replace(DOC_BROKER, bootstrap), f"docs/{doc}", "exec"), namespace)
    return namespace


def as_record(e: Event) -> tuple[str, bytes, str, str]:
    return (e.agentid, encode_event(e), e.type, e.id)


def big_event(size: int) -> Event:
    """A valid thought whose JSON is about ``size`` bytes."""
    f = EventFactory("writer-1", run_id="big-run")
    e = f.thought("x", model="m")
    pad = size - len(encode_event(e))
    return f.thought("x" * (1 + pad), model="m")


async def wait_caught_up(bootstrap: str, records: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    progress = None
    while time.monotonic() < deadline:
        progress = await processor_progress(bootstrap, DEFAULT_GROUP)
        if progress.caught_up and sum(progress.highwater.values()) == records:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"processor not caught up after {timeout_s}s: {progress}")


async def test_outside_client_recipes_round_trip_through_the_processor(kafka, tmp_path):
    producing = load("producing.md", kafka.bootstrap)
    reading = load("analytics.md", kafka.bootstrap)
    publish, read_to_end = producing["publish"], reading["read_to_end"]

    events = list(generate(SimulationConfig(agents=6, runs=12, seed=9)))
    big = big_event(DEFAULT_MAX_EVENT_BYTES - 20_000)  # over librdkafka's default limit
    assert 1_000_000 < len(encode_event(big)) <= DEFAULT_MAX_EVENT_BYTES
    events.append(big)

    # the trap the docs warn about: librdkafka's default message.max.bytes refuses it
    default = confluent_kafka.Producer({"bootstrap.servers": kafka.bootstrap})
    with pytest.raises(confluent_kafka.KafkaException) as refused:
        default.produce(EVENTS, key=b"writer-1", value=encode_event(big))
    assert refused.value.args[0].code() == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE

    too_large = b'{"pad": "' + b"y" * (DEFAULT_MAX_EVENT_BYTES + 10_000) + b'"}'
    bad = [
        ("planner-1", b"{not json", "not_json"),
        ("coder-1", encode_event(events[3]), "key_mismatch"),  # another agent's event
        ("tester-1", b"[1, 2, 3]", "not_an_object"),
        ("planner-1", too_large, "too_large"),
    ]
    assert events[3].agentid != "coder-1"
    publish([as_record(e) for e in events])
    publish([(k, v, "x", "y") for k, v, _ in bad])
    total = len(events) + len(bad)

    # every record is on the broker, each agent on the partition the SDK would pick
    logged = read_to_end(EVENTS, bootstrap=kafka.bootstrap, idle_s=5.0)
    assert len(logged) == total
    parts = list(range(6))
    for m in logged:
        assert m.partition() == partition_for_key(m.key(), parts), m.key()
    by_agent = Counter(m.key().decode() for m in logged)
    assert by_agent["writer-1"] == 1

    # ListOffsets on the embedded broker: too low (why the reader uses the fetch watermark)
    probe = confluent_kafka.Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "probe"})
    try:
        listed = sum(
            probe.get_watermark_offsets(confluent_kafka.TopicPartition(EVENTS, p), timeout=10)[1]
            for p in parts
        )
    finally:
        probe.close()
    assert listed < total, "Tansu's ListOffsets is right now: update the docs' warning"

    proc = build_app(bootstrap=kafka.bootstrap, data_dir=tmp_path, engine="aiokafka")
    stop = asyncio.Event()
    task = asyncio.create_task(proc.run(stop))
    try:
        await wait_caught_up(kafka.bootstrap, total, timeout_s=120)
    finally:
        stop.set()
        await task
    assert proc.stats.applied == len(events) and proc.stats.rejected == len(bad)

    dead = read_to_end(DLQ, bootstrap=kafka.bootstrap, idle_s=5.0)
    letters = [json.loads(m.value()) for m in dead]
    assert Counter(d["reason"] for d in letters) == Counter(r for _, _, r in bad)
    originals = {(k, hashlib.sha256(v).hexdigest()): r for k, v, r in bad}
    for m, d in zip(dead, letters, strict=True):
        key = base64.b64decode(d["key"]).decode()  # documented: the key is base64
        assert m.key().decode() == key
        assert originals[(key, d["original_sha256"])] == d["reason"]
        if not d["original_truncated"]:
            value = base64.b64decode(d["original"])
            assert hashlib.sha256(value).hexdigest() == d["original_sha256"]
