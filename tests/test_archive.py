"""The Parquet archive against the real broker: exact copy, dead letters kept, kill -9 of the
archiver mid-file without loss or duplicates, a broker restart starting a new generation,
and the Kafka and archive readers selecting the same records."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import HOST, TEST_PARTITIONS, Broker

from agentstream.processes import ManagedProcess, tansu_argv
from schemas.arrow import EVENT_ROW_SCHEMA
from schemas.codec import encode_event
from schemas.envelope import Event
from streams.admin import ensure_topics, wait_for_broker
from streams.archive import (
    ARCHIVE_SCHEMA,
    DLQ_SCHEMA,
    Archiver,
    archive_state,
    bucket_dir,
    complete_segments,
    parse_segment_file_name,
    repair,
    scan_files,
    segment_file_name,
)
from streams.log_reader import ArchiveLogSource, KafkaLogSource, TimeWindow, collect_events
from streams.producer import EventProducer
from streams.simulator import SimulationConfig, generate

pytestmark = pytest.mark.integration

INVALID = [b"not json", b'{"type": "agent.think.thought.v1"}', b"[1, 2]"]


def sim(runs: int, seed: int, agents: int = 6) -> list[Event]:
    return list(generate(SimulationConfig(agents=agents, runs=runs, seed=seed)))


async def publish(bootstrap: str, events: list[Event], invalid: list[bytes] = ()) -> None:
    async with EventProducer(bootstrap, linger_ms=2) as producer:
        await producer.send_many(events)
        for i, raw in enumerate(invalid):
            await producer.send_raw(f"bad-{i}".encode(), raw)


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def archived_ids(root: Path) -> list[str]:
    """Every event id in the archive's complete segments, duplicates kept."""
    ids: list[str] = []
    for seg in complete_segments(root):
        for f in seg.of_kind("events"):
            ids += pq.read_table(root / f.relpath, columns=["event_id"])["event_id"].to_pylist()
    return ids


def archived_dlq(root: Path) -> list[bytes]:
    raws: list[bytes] = []
    for seg in complete_segments(root):
        for f in seg.of_kind("dlq"):
            raws += pq.read_table(root / f.relpath, columns=["raw"])["raw"].to_pylist()
    return raws


def archived_count(root: Path) -> int:
    """Records in the newest generation (offsets start at 0 on every partition)."""
    return sum(last + 1 for last in archive_state(root).last_offsets.values())


async def archive_until(bootstrap: str, root: Path, total: int, **options) -> Archiver:
    """Run an in-process archiver until it has archived ``total`` records, then stop it."""
    stop = asyncio.Event()
    archiver = Archiver(bootstrap, root, max_segment_age_s=0.5, **options)
    task = asyncio.create_task(archiver.run(stop))
    try:
        await wait_for(
            lambda: archived_count(root) >= total or task.done(), 60, f"{total} archived records"
        )
    finally:
        stop.set()
        await task
    return archiver


# --- pure parts ---------------------------------------------------------------------------


def test_segment_names_round_trip_and_sort_by_position():
    name = segment_file_name(2, 3, 1200, 1399)
    assert name == "g0002-p03-o000001200-o000001399.parquet"
    assert parse_segment_file_name(name) == (2, 3, 1200, 1399)
    assert parse_segment_file_name("p03-o1-o2.parquet") is None
    assert parse_segment_file_name(segment_file_name(1, 120, 10**10, 10**10 + 5)) == (
        1,
        120,
        10**10,
        10**10 + 5,
    )
    assert bucket_dir(datetime(2026, 1, 2, 3, 59, tzinfo=UTC)) == "date=2026-01-02/hour=03"


def test_archive_schema_extends_the_event_row():
    assert ARCHIVE_SCHEMA.names[: len(EVENT_ROW_SCHEMA)] == EVENT_ROW_SCHEMA.names
    assert {"log_generation", "log_timestamp", "log_key", "raw"} <= set(ARCHIVE_SCHEMA.names)
    assert {"reason", "detail", "raw", "log_offset"} <= set(DLQ_SCHEMA.names)


# --- against the broker -------------------------------------------------------------------


async def test_archive_is_an_exact_copy_with_dead_letters(kafka: Broker, tmp_path: Path):
    events = sim(runs=8, seed=11)
    await publish(kafka.bootstrap, events, INVALID)
    root = tmp_path / "archive"
    archiver = await archive_until(kafka.bootstrap, root, len(events) + len(INVALID))
    assert archiver.stats.invalid == len(INVALID)

    ids = archived_ids(root)
    assert Counter(ids) == Counter(e.id for e in events)  # each exactly once
    assert sorted(archived_dlq(root)) == sorted(INVALID)

    # byte-exact: reading the archive back gives the very events that were published
    got = await collect_events(ArchiveLogSource(root))
    assert sorted(map(encode_event, got)) == sorted(map(encode_event, events))

    # hive layout by event time; the dataset is readable with partition pruning
    dataset = ds.dataset(root / "events", format="parquet", partitioning="hive")
    first_hour = events[0].time.astimezone(UTC)
    table = dataset.to_table(
        filter=(ds.field("date") == f"{first_hour:%Y-%m-%d}")
        & (ds.field("hour") == int(f"{first_hour:%H}"))
    )
    expected = [e for e in events if bucket_dir(e.time) == bucket_dir(first_hour)]
    assert sorted(table["event_id"].to_pylist()) == sorted(e.id for e in expected)
    for f in scan_files(root):
        if f.kind == "events":
            times = pq.read_table(root / f.relpath, columns=["time"])["time"].to_pylist()
            folder = str(Path(f.relpath).parent.relative_to("events"))
            assert {bucket_dir(t) for t in times} == {folder}

    # the reasons travel with the dead letters
    dlq = ds.dataset(root / "dlq", format="parquet", partitioning="hive").to_table()
    reasons = dict(zip(dlq["raw"].to_pylist(), dlq["reason"].to_pylist(), strict=True))
    assert reasons == {
        b"not json": "not_json",
        b'{"type": "agent.think.thought.v1"}': "missing_field",
        b"[1, 2]": "not_an_object",
    }

    # the Kafka reader and the archive reader yield the same flat rows
    kafka_rows = []
    async for batch in KafkaLogSource(kafka.bootstrap).batches():
        kafka_rows.append(batch.rows())
    archive_rows = []
    async for batch in ArchiveLogSource(root).batches():
        archive_rows.append(batch.rows())

    def by_id(tables: list[pa.Table]) -> list[dict]:
        return sorted(pa.concat_tables(tables).to_pylist(), key=lambda r: r["event_id"])

    assert by_id(kafka_rows) == by_id(archive_rows)

    # restart: resumes after the last archived offset, archives nothing twice
    again = await archive_until(kafka.bootstrap, root, len(events) + len(INVALID))
    assert again.stats.records == 0
    assert Counter(archived_ids(root)) == Counter(e.id for e in events)


async def test_time_window_selects_the_same_records_from_kafka_and_archive(
    kafka: Broker, tmp_path: Path
):
    events = sim(runs=10, seed=5)
    await publish(kafka.bootstrap, events)
    root = tmp_path / "archive"
    await archive_until(kafka.bootstrap, root, len(events), max_segment_records=97)
    stamps = sorted(int(e.time.timestamp() * 1000) for e in events)
    lo, hi = stamps[len(stamps) // 4], stamps[3 * len(stamps) // 4]

    # expected, from the whole log: per partition, from the first record >= lo, up to
    # (not including) the first record >= hi after it -- Kafka's offsets_for_times meaning
    everything: dict[int, list] = {}
    async for batch in KafkaLogSource(kafka.bootstrap).batches():
        everything.setdefault(batch.partition, []).extend(batch.records)
    expected: set[str] = set()
    expected_end: dict[int, int] = {}
    for p, recs in everything.items():
        recs.sort(key=lambda r: r.offset)
        start = next((i for i, r in enumerate(recs) if r.timestamp_ms >= lo), len(recs))
        stop = next(
            (i for i, r in enumerate(recs) if i >= start and r.timestamp_ms >= hi), len(recs)
        )
        expected |= {r.value for r in recs[start:stop]}
        expected_end[p] = recs[stop].offset if stop < len(recs) else recs[-1].offset + 1

    k = KafkaLogSource(kafka.bootstrap, window=TimeWindow(lo, hi))
    from_kafka = await collect_events(k)
    a = ArchiveLogSource(root, window=TimeWindow(lo, hi))
    from_archive = await collect_events(a)
    assert 0 < len(expected) < len(events)
    assert {encode_event(e) for e in from_kafka} == expected
    assert {encode_event(e) for e in from_archive} == expected
    assert len(from_kafka) == len(from_archive) == len(expected)
    # both stop at the same place: where live consumption would continue
    assert {p: k.end_positions[p] for p in expected_end} == expected_end
    assert a.end_positions == expected_end


async def test_kill9_mid_file_then_restart_archives_each_event_once(kafka: Broker, tmp_path: Path):
    root = tmp_path / "archive"
    env = {
        **os.environ,
        "AGENTSTREAM_KAFKA_URL": f"kafka://{kafka.bootstrap}",
        "AGENTSTREAM_ARCHIVE_DIR": str(root),
        "AGENTSTREAM_CONFIG": str(tmp_path / "none.toml"),
    }
    argv = [
        sys.executable, "-m", "agentstream.cli", "archive",
        "--max-segment-age", "0.7", "--row-group-rows", "40",
    ]  # fmt: skip

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / "archiver.log", "ab")  # noqa: SIM115
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)

    events = sim(runs=40, seed=7)
    producer = EventProducer(kafka.bootstrap, linger_ms=2)
    await producer.start()
    kills = 0
    proc = start()
    try:
        sent = 0
        chunk = max(1, len(events) // 12)
        while sent < len(events):
            await producer.send_many(events[sent : sent + chunk])
            await producer.flush()
            sent += chunk
            # wait until a file is being written (rows in _tmp), then kill -9 mid-file
            try:
                await wait_for(
                    lambda: any((root / "_tmp").glob("*.parquet")), 10, "a file in progress"
                )
            except AssertionError:
                continue
            if kills < 4:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                proc = start()
        await producer.flush()
        assert kills >= 2, "never caught the archiver mid-file"
        await wait_for(
            lambda: len(set(archived_ids(root))) >= len(events), 90, "everything archived"
        )
    finally:
        await producer.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    ids = archived_ids(root)
    assert Counter(ids) == Counter(e.id for e in events)  # no loss, no duplicate
    assert archive_state(root).generation == 1


def test_repair_drops_a_segment_whose_sibling_is_missing(tmp_path: Path):
    """A crash between the renames of one segment's files: the survivor is deleted."""
    from streams.archive import SegmentWriter

    class Rec:
        def __init__(self, offset: int, event: Event) -> None:
            self.offset, self.timestamp, self.key = offset, 0, b"k"
            self.value = encode_event(event)

    events = sim(runs=2, seed=3)
    early = events[:3]
    late = [msgspec.structs.replace(e, time=e.time + timedelta(hours=1)) for e in events[3:5]]
    root = tmp_path / "a"
    w = SegmentWriter(root, 1, 0)
    for i, e in enumerate([*early, *late]):
        w.add(Rec(i, e), e)  # type: ignore[arg-type]
    files = w.close()
    assert len(files) == 2 and len(complete_segments(root)) == 1
    (root / files[1]).unlink()  # as if the crash came after the first rename
    assert complete_segments(root) == []
    assert archive_state(root).last_offsets == {}
    removed = repair(root)
    assert removed == [files[0]]
    assert scan_files(root) == []


async def _start_broker_on(port: int, log_dir: Path) -> ManagedProcess:
    log = log_dir / f"tansu-{port}-{time.monotonic_ns()}.log"
    proc = ManagedProcess("broker", tansu_argv(HOST, port), log)
    proc.start()
    proc.wait_for_port(HOST, port, deadline_s=10)
    await wait_for_broker(f"{HOST}:{port}")
    await ensure_topics(f"{HOST}:{port}", TEST_PARTITIONS)
    return proc


@pytest.mark.parametrize("second_is_longer", [False, True], ids=["shorter", "longer"])
async def test_broker_restart_under_a_running_archiver_starts_a_new_generation(
    kafka: Broker, tmp_path: Path, second_is_longer: bool
):
    """The embedded broker forgets everything on restart and numbers offsets from 0 again."""
    root = tmp_path / "archive"
    first = sim(runs=6, seed=21)
    second = sim(runs=14 if second_is_longer else 2, seed=22)
    await publish(kafka.bootstrap, first)
    stop = asyncio.Event()
    archiver = Archiver(kafka.bootstrap, root, max_segment_age_s=0.3, verify_deadline_s=2)
    task = asyncio.create_task(archiver.run(stop))
    try:
        await wait_for(lambda: len(archived_ids(root)) >= len(first), 30, "first log archived")
        kafka.process.stop()
        proc = await _start_broker_on(kafka.port, tmp_path)
        try:
            await publish(kafka.bootstrap, second)
            await wait_for(
                lambda: (
                    archive_state(root).generation == 2
                    and len(archived_ids(root)) >= len(first) + len(second)
                ),
                60,
                "second log archived as generation 2",
            )
        finally:
            stop.set()
            await task
            proc.stop()
    finally:
        stop.set()
    assert Counter(archived_ids(root)) == Counter(e.id for e in first + second)
    gens = {s.generation for s in complete_segments(root)}
    assert gens == {1, 2}
    read = []
    async for batch in ArchiveLogSource(root).batches():
        read += [(batch.generation, e.id) for _, e in batch.events()]
    assert {i for g, i in read if g == 1} == {e.id for e in first}
    assert {i for g, i in read if g == 2} == {e.id for e in second}


def test_records_restored_into_a_generation_are_never_counted_lost_with_it(tmp_path):
    """A broker killed after a restore but before the archiver wrote anything new must not
    report the restored records (already in the archive) as lost: the generation's start
    offsets are kept with the archiver's view of the log and bound the lost ranges."""
    from streams.archive import _LogState, lost_ranges

    restored_next = {0: 120, 1: 80}
    state = _LogState("epoch-a", 3, seen_hw={0: 125, 1: 80}, start=restored_next)
    state.save(tmp_path)
    loaded = _LogState.load(tmp_path)
    assert loaded.start == restored_next and loaded.seen_hw == {0: 125, 1: 80}
    archived: dict[int, int] = {}  # nothing of generation 3 written yet
    for p, first in loaded.start.items():
        archived[p] = max(archived.get(p, 0), first)
    # only what arrived after the restore and was never archived is lost
    assert lost_ranges(archived, loaded.seen_hw) == {0: (120, 124)}
