"""Kafka record headers survive archive -> restore (archive format version 2).

Against real Tansu brokers: records written with headers (repeated keys, a null value, an
empty value, a non-ASCII key, binary values; valid events and dead letters) are archived,
the broker is replaced by an empty one, the archive is restored, and a plain aiokafka
consumer must see exactly what it saw before. Archives written before headers were kept
(version 1: no ``log_headers`` column) must still restore, be read and be compacted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from conftest import Broker
from hypothesis import given
from hypothesis import strategies as st
from test_restore import start_broker_on

from schemas.admission import admit
from schemas.codec import EventCodec, encode_event
from schemas.envelope import Event
from schemas.topics import EVENTS
from streams.archive import (
    ARCHIVE_SCHEMA,
    DLQ_SCHEMA,
    SEGMENT_KEY,
    VERSION_KEY,
    Archiver,
    SegmentWriter,
    archive_state,
    compact,
    complete_segments,
    headers_array,
    headers_per_row,
    scan_files,
)
from streams.log_reader import ArchiveLogSource
from streams.producer import EventProducer
from streams.restore import _rows, read_segment, restore_log_async
from streams.simulator import SimulationConfig, generate

Headers = list[tuple[str, bytes | None]]
Row = tuple[int, int, bytes | None, bytes, Headers]  # offset, timestamp, key, value, headers

ODD_HEADERS: list[Headers] = [
    [("dup", b"1"), ("dup", b"2"), ("dup", b"1")],  # repeated keys, order kept
    [("nul", None), ("empty", b"")],  # null stays distinct from empty bytes
    [("ключ-é✓", b"\x00\xff\xfe\x80 binary \x00")],  # non-ASCII key, binary value
    [],  # no headers at all
    [("content-type", b"text/plain"), ("x", None), ("x", b"")],
]
INVALID = [b"not json", b'{"type": "agent.think.thought.v1"}', b"\xff\xfe", b"[1, 2]"]


def sim(runs: int, seed: int) -> list[Event]:
    return list(generate(SimulationConfig(agents=6, runs=runs, seed=seed)))


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def publish_with_headers(bootstrap: str, events: list[Event]) -> int:
    """SDK events (ce_type, ce_id, content-type headers), valid events and dead letters
    written by a plain client with odd headers; returns how many records were written."""
    async with EventProducer(bootstrap, linger_ms=2) as sdk:
        await sdk.send_many(events[: len(events) // 2])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    try:
        futures = []
        for i, e in enumerate(events[len(events) // 2 :]):
            futures.append(
                await producer.send(
                    EVENTS,
                    encode_event(e),
                    key=e.agentid.encode(),
                    headers=ODD_HEADERS[i % len(ODD_HEADERS)],
                    timestamp_ms=1_767_225_600_000 + i,
                )
            )
        for i, raw in enumerate(INVALID):
            futures.append(
                await producer.send(
                    EVENTS,
                    raw,
                    key=f"bad-{i}".encode(),
                    headers=ODD_HEADERS[i % len(ODD_HEADERS)],
                    timestamp_ms=1_700_000_000_000 + i,
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(events) + len(INVALID)


async def dump(bootstrap: str) -> dict[int, list[Row]]:
    """What a plain aiokafka consumer sees: every record up to the high watermark."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: dict[int, list[Row]] = {}
    try:
        await consumer.topics()
        tps = [TopicPartition(EVENTS, p) for p in sorted(consumer.partitions_for_topic(EVENTS))]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        done: set[TopicPartition] = set()
        deadline = time.monotonic() + 60
        while len(done) < len(tps):
            assert time.monotonic() < deadline, "the log was not read to its end in 60 s"
            got = await consumer.getmany(timeout_ms=300)
            for tp, recs in got.items():
                out.setdefault(tp.partition, []).extend(
                    (r.offset, r.timestamp, r.key, r.value, list(r.headers or ())) for r in recs
                )
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None and await consumer.position(tp) >= hw:
                    done.add(tp)
    finally:
        await consumer.stop()
    return {p: v for p, v in out.items() if v}


def archived(root: Path) -> dict[int, list[Row]]:
    """The same view, read from the archive's files (events and dlq)."""
    out: dict[int, list[Row]] = {}
    for seg in complete_segments(root):
        for offset, ts, key, raw, headers in _rows(read_segment(root, seg)):
            out.setdefault(seg.partition, []).append((offset, ts, key, raw, list(headers or ())))
    return out


async def archive_all(bootstrap: str, root: Path, total: int) -> None:
    def count() -> int:
        return sum(last + 1 for last in archive_state(root).last_offsets.values())

    stop = asyncio.Event()
    task = asyncio.create_task(Archiver(bootstrap, root, max_segment_age_s=0.3).run(stop))
    try:
        await wait_for(lambda: count() >= total or task.done(), 90, "everything archived")
    finally:
        stop.set()
        await task


def downgrade_to_v1(path: Path) -> int:
    """Rewrite one archive file as the version-1 archiver wrote it (no ``log_headers``,
    version 1 in the footer, same segment footer); returns its row count."""
    meta = dict(pq.read_metadata(path).metadata or {})
    table = pq.read_table(path).drop_columns(["log_headers"])
    old = {k: v for k, v in meta.items() if k != b"ARROW:schema"}
    old[VERSION_KEY] = b"1"
    pq.write_table(table.replace_schema_metadata(old), path, compression="zstd")
    assert "log_headers" not in pq.read_schema(path).names
    return table.num_rows


# --- pure ---------------------------------------------------------------------------------

header_lists = st.none() | st.lists(
    st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=8)), max_size=4
)


@given(st.lists(header_lists, max_size=12), st.integers(0, 3))
def test_headers_column_round_trips_nulls_empties_and_order(rows, cut):
    arr = headers_array(rows)
    assert arr.type == ARCHIVE_SCHEMA.field("log_headers").type
    expected = [None if h is None else list(h) for h in rows]
    for chunk_rows in (1, 3, 4096):  # converted a chunk of rows at a time
        assert list(headers_per_row(arr, len(rows), chunk_rows)) == expected
    # sliced and chunked, as a read of several row groups gives it
    cut = min(cut, len(rows))
    chunked = pa.chunked_array([arr.slice(0, cut), arr.slice(cut)], arr.type)
    assert list(headers_per_row(chunked, len(rows))) == list(headers_per_row(arr, len(rows)))
    assert list(headers_per_row(None, len(rows))) == [None] * len(rows)  # a version-1 file


def test_schemas_are_version_2_with_a_headers_column():
    for schema in (ARCHIVE_SCHEMA, DLQ_SCHEMA):
        assert schema.metadata[VERSION_KEY] == b"2"
        field = schema.field("log_headers")
        assert field.nullable  # null only in rows from version-1 files
        assert field.type.value_type.field("key").type == pa.string()
        assert field.type.value_type.field("value").type == pa.binary()


# --- against the broker -------------------------------------------------------------------


async def test_headers_survive_archive_and_restore_into_a_fresh_broker(
    kafka: Broker, tmp_path: Path
):
    root = tmp_path / "archive"
    total = await publish_with_headers(kafka.bootstrap, sim(runs=6, seed=31))
    await archive_all(kafka.bootstrap, root, total)
    before = await dump(kafka.bootstrap)
    assert sum(len(v) for v in before.values()) == total
    seen = [h for rows in before.values() for *_, h in rows]
    for odd in ODD_HEADERS:  # the broker kept them (precondition), null values included
        assert odd in seen
    assert any(dict(h).keys() == {"ce_type", "ce_id", "content-type"} for h in seen)
    assert archived(root) == before  # events and dead letters, headers included
    assert any(f.kind == "dlq" for s in complete_segments(root) for f in s.files)

    kafka.process.stop()
    proc = await start_broker_on(kafka.port, tmp_path)
    try:
        report = await restore_log_async(kafka.bootstrap, root)
        assert report.ok and report.offsets_preserved and report.records == total
        assert report.no_headers == 0 and "headers" not in report.summary()
        assert await dump(kafka.bootstrap) == before  # partition, offset, key, value, ts, headers
    finally:
        proc.stop()


async def test_a_version_1_archive_still_restores_without_headers(
    kafka: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    root = tmp_path / "archive"
    total = await publish_with_headers(kafka.bootstrap, sim(runs=6, seed=32))
    await archive_all(kafka.bootstrap, root, total)
    before = await dump(kafka.bootstrap)
    files = scan_files(root)
    old = files[::2]  # every other file as version 1: an archive that spans the upgrade
    assert old and len(old) < len(files)
    old_offsets: set[tuple[int, int]] = set()
    for f in old:
        offsets = pq.read_table(root / f.relpath, columns=["log_offset"])["log_offset"]
        old_offsets |= {(f.partition, o) for o in offsets.to_pylist()}
        downgrade_to_v1(root / f.relpath)
    expected = {
        p: [(o, ts, k, v, [] if (p, o) in old_offsets else h) for o, ts, k, v, h in rows]
        for p, rows in before.items()
    }
    assert expected != before  # some of the downgraded records had headers

    kafka.process.stop()
    proc = await start_broker_on(kafka.port, tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="streams.restore"):
            report = await restore_log_async(kafka.bootstrap, root)
        assert report.ok and report.offsets_preserved and report.records == total
        assert report.no_headers == len(old_offsets)
        assert f"{len(old_offsets):,} records archived before version 2" in report.summary()
        assert await dump(kafka.bootstrap) == expected
        said = [r.getMessage() for r in caplog.records if "before version 2" in r.getMessage()]
        assert len(said) == 1
        assert said[0].startswith(f"{len(old_offsets)} records archived before version 2 ")
    finally:
        proc.stop()


async def test_compaction_of_version_1_and_2_segments_writes_a_valid_version_2_file(
    tmp_path: Path,
):
    """Runs of small segments, half written by version 1; events (partition 0) and dead
    letters (partition 1). The merged file is version 2: v1 rows null, v2 rows exact."""
    root = tmp_path / "a"
    codec = EventCodec()
    events = [e for e in sim(runs=3, seed=33) if e.time.hour == 0][:90]
    assert len(events) == 90
    sent: dict[tuple[int, int], Headers] = {}
    for partition in (0, 1):
        for s in range(30):
            w = SegmentWriter(root, 1, partition)
            for i in range(s * 3, s * 3 + 3):
                value = encode_event(events[i]) if partition == 0 else INVALID[i % len(INVALID)]
                headers = ODD_HEADERS[i % len(ODD_HEADERS)]
                rec = SimpleNamespace(
                    offset=i,
                    timestamp=1_767_225_600_000,
                    key=events[i].agentid.encode(),
                    value=value,
                    headers=headers,
                )
                outcome = admit(rec.key, value, codec.decode)
                assert isinstance(outcome, Event) == (partition == 0)
                w.add(rec, outcome)  # type: ignore[arg-type]
                sent[(partition, i)] = headers
            w.close()
    v1: set[tuple[int, int]] = set()
    for f in scan_files(root):
        if (f.first_offset // 3) % 2 == 0:
            downgrade_to_v1(root / f.relpath)
            v1 |= {(f.partition, o) for o in range(f.first_offset, f.last_offset + 1)}

    async def history() -> list[tuple[int, int, str]]:
        out: list[tuple[int, int, str]] = []
        async for batch in ArchiveLogSource(root).batches():  # reads v1 and v2 files alike
            out += [(r.partition, r.offset, e.id) for r, e in batch.events()]
            out += [(r.partition, r.offset, x.reason.value) for r, x in batch.invalid()]
        return sorted(out)

    before = await history()
    assert len(before) == 180
    merged, _ = compact(root, min_run=20, older_than_s=0, delete_after_s=3600)
    assert merged == 60
    segments = complete_segments(root)
    assert [(s.partition, s.first_offset, s.last_offset) for s in segments] == [
        (0, 0, 89),
        (1, 0, 89),
    ]
    for seg in segments:
        (f,) = seg.files
        path = root / f.relpath
        schema = ARCHIVE_SCHEMA if f.kind == "events" else DLQ_SCHEMA
        assert pq.read_schema(path).remove_metadata().equals(schema.remove_metadata())
        meta = pq.read_metadata(path).metadata
        assert meta[VERSION_KEY] == b"2" and SEGMENT_KEY in meta
        rows = list(_rows(read_segment(root, seg)))
        assert [r[0] for r in rows] == list(range(90))
        for offset, *_, headers in rows:
            want = None if (seg.partition, offset) in v1 else sent[(seg.partition, offset)]
            assert (None if headers is None else list(headers)) == want, (seg.partition, offset)
    assert await history() == before
