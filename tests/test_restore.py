"""Restoring the in-memory log from the archive, against real Tansu brokers.

A broker restart is simulated by stopping the fixture's broker and starting a new one on
the same port (the embedded broker keeps nothing): the restored log must hold every
archived record (dead letters included) at its archived partition and offset, byte for
byte, with its key and timestamp.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from conftest import HOST, TEST_PARTITIONS, Broker

from agentstream.processes import ManagedProcess, tansu_argv
from schemas.envelope import Event
from schemas.topics import EVENTS
from streams.admin import ensure_topics, wait_for_broker
from streams.archive import Archiver, archive_state, complete_segments
from streams.log_identity import fetch_marker
from streams.producer import EventProducer
from streams.restore import RestoreError, plan_restore, restore_log, restore_log_async
from streams.simulator import SimulationConfig, generate

pytestmark = pytest.mark.integration

INVALID = [b"not json", b'{"type": "agent.think.thought.v1"}', b"[1, 2]", b"\xff\xfe"]


def sim(runs: int, seed: int, agents: int = 6) -> list[Event]:
    return list(generate(SimulationConfig(agents=agents, runs=runs, seed=seed)))


async def publish(bootstrap: str, events: list[Event], invalid: list[bytes] = ()) -> None:
    async with EventProducer(bootstrap, linger_ms=2) as producer:
        await producer.send_many(events)
        for i, raw in enumerate(invalid):
            await producer.send_raw(f"bad-{i}".encode(), raw, timestamp_ms=1_700_000_000_000 + i)


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def archived_count(root: Path) -> int:
    return sum(last + 1 for last in archive_state(root).last_offsets.values())


async def archive_all(bootstrap: str, root: Path, total: int) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(Archiver(bootstrap, root, max_segment_age_s=0.3).run(stop))
    try:
        await wait_for(lambda: archived_count(root) >= total or task.done(), 60, "archived")
    finally:
        stop.set()
        await task


def archived_records(root: Path) -> dict[int, list[tuple[int, int, bytes | None, bytes]]]:
    """partition -> (offset, timestamp ms, key, value) of every archived record, in order."""
    out: dict[int, list[tuple[int, int, bytes | None, bytes]]] = {}
    for seg in complete_segments(root):
        for f in seg.files:
            t = pq.read_table(
                root / f.relpath, columns=["log_offset", "log_timestamp", "log_key", "raw"]
            )
            rows = zip(
                t["log_offset"].to_pylist(),
                pc.cast(t["log_timestamp"], pa.int64()).to_pylist(),
                t["log_key"].to_pylist(),
                t["raw"].to_pylist(),
                strict=True,
            )
            out.setdefault(seg.partition, []).extend(rows)
    return {p: sorted(v) for p, v in out.items()}


async def log_records(bootstrap: str) -> dict[int, list[tuple[int, int, bytes | None, bytes]]]:
    """partition -> every record of agent-events in the live log, read to the high watermark."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: dict[int, list[tuple[int, int, bytes | None, bytes]]] = {}
    try:
        await consumer.topics()
        tps = [TopicPartition(EVENTS, p) for p in sorted(consumer.partitions_for_topic(EVENTS))]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        done: set[TopicPartition] = set()
        deadline = time.monotonic() + 30
        while len(done) < len(tps) and time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=300)
            for tp, recs in got.items():
                out.setdefault(tp.partition, []).extend(
                    (r.offset, r.timestamp, r.key, r.value) for r in recs
                )
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None and await consumer.position(tp) >= hw:
                    done.add(tp)
    finally:
        await consumer.stop()
    return {p: v for p, v in out.items() if v}


async def start_broker_on(port: int, log_dir: Path) -> ManagedProcess:
    """A new, empty broker on ``port`` (what `agentstream up` starts after a stop)."""
    log = log_dir / f"tansu-{port}-{time.monotonic_ns()}.log"
    proc = ManagedProcess("broker", tansu_argv(HOST, port), log)
    proc.start()
    proc.wait_for_port(HOST, port, deadline_s=10)
    await wait_for_broker(f"{HOST}:{port}")
    await ensure_topics(f"{HOST}:{port}", TEST_PARTITIONS)
    return proc


async def test_restore_gives_identical_offsets_bytes_keys_and_timestamps(
    kafka: Broker, tmp_path: Path
):
    root = tmp_path / "archive"
    events = sim(runs=8, seed=5)
    await publish(kafka.bootstrap, events, INVALID)
    total = len(events) + len(INVALID)
    await archive_all(kafka.bootstrap, root, total)
    before = await log_records(kafka.bootstrap)
    assert archived_records(root) == before  # the archive is exact (precondition)
    assert sum(len(v) for v in before.values()) == total

    kafka.process.stop()
    proc = await start_broker_on(kafka.port, tmp_path)
    try:
        seen: list[tuple[int, int]] = []
        report = await asyncio.to_thread(
            restore_log, kafka.bootstrap, root, progress=lambda d, t: seen.append((d, t))
        )
        assert report.ok and report.offsets_preserved and not report.gaps, report.summary()
        assert report.records == total
        assert {p: r.high_watermark for p, r in report.partitions.items()} == {
            p: len(v) for p, v in before.items()
        }
        assert seen and seen[-1] == (total, total)
        after = await log_records(kafka.bootstrap)
        assert after == before  # offsets, timestamps, keys and bytes, dead letters included
        marker = await fetch_marker(kafka.bootstrap)
        assert marker is not None and marker.epoch == report.epoch and marker.restored
        assert marker.restored_next == {p: len(v) for p, v in before.items()}

        # a second call on the now non-empty log restores nothing and keeps the marker
        again = await restore_log_async(kafka.bootstrap, root)
        assert again.skipped and again.records == 0 and again.epoch == report.epoch
        assert await log_records(kafka.bootstrap) == before
    finally:
        proc.stop()


async def test_restore_of_an_empty_archive_writes_a_fresh_marker(kafka: Broker, tmp_path: Path):
    report = await restore_log_async(kafka.bootstrap, tmp_path / "none")
    assert report.ok and report.records == 0 and report.epoch
    marker = await fetch_marker(kafka.bootstrap)
    assert marker is not None and marker.epoch == report.epoch


async def test_restore_refuses_an_archive_with_more_partitions(kafka: Broker, tmp_path: Path):
    root = tmp_path / "archive"
    events = sim(runs=4, seed=9)
    await publish(kafka.bootstrap, events)
    await archive_all(kafka.bootstrap, root, len(events))
    kafka.process.stop()
    port = kafka.port
    proc = ManagedProcess("broker", tansu_argv(HOST, port), tmp_path / "small.log")
    proc.start()
    proc.wait_for_port(HOST, port, deadline_s=10)
    try:
        await wait_for_broker(kafka.bootstrap)
        await ensure_topics(kafka.bootstrap, 2)
        with pytest.raises(RestoreError, match="AGENTSTREAM_PARTITIONS"):
            await restore_log_async(kafka.bootstrap, root)
    finally:
        proc.stop()


def test_plan_reports_holes_and_several_generations(tmp_path: Path):
    """Pure planning from file names: holes and generations mean renumbered offsets."""
    import json

    root = tmp_path / "a"

    def seg(g: int, p: int, a: int, b: int) -> None:
        from streams.archive import ARCHIVE_SCHEMA, SEGMENT_KEY, segment_file_name

        d = root / "events" / "date=2026-01-01" / "hour=00"
        d.mkdir(parents=True, exist_ok=True)
        name = segment_file_name(g, p, a, b)
        rel = f"events/date=2026-01-01/hour=00/{name}"
        meta = {SEGMENT_KEY: json.dumps({"files": [rel]}).encode()}
        pq.write_table(ARCHIVE_SCHEMA.empty_table().replace_schema_metadata(meta), d / name)

    seg(1, 0, 0, 9)
    seg(1, 0, 10, 19)
    seg(1, 1, 0, 4)
    seg(1, 1, 8, 9)  # hole 5..7
    seg(1, 2, 0, 4)
    seg(2, 2, 0, 2)  # a second generation
    plans = plan_restore(root)
    assert plans[0].records == 20 and plans[0].offsets_preserved and not plans[0].gaps
    assert plans[1].records == 7 and not plans[1].offsets_preserved
    assert [(g.first, g.last) for g in plans[1].gaps] == [(5, 7)]
    assert plans[2].records == 8 and not plans[2].offsets_preserved and not plans[2].gaps


async def test_cli_restore_and_losses(kafka: Broker, tmp_path: Path):
    import json
    import os
    import subprocess
    import sys

    root = tmp_path / "archive"
    events = sim(runs=3, seed=12)
    await publish(kafka.bootstrap, events)
    await archive_all(kafka.bootstrap, root, len(events))
    kafka.process.stop()
    proc = await start_broker_on(kafka.port, tmp_path)
    env = {
        **os.environ,
        "AGENTSTREAM_KAFKA_URL": f"kafka://{kafka.bootstrap}",
        "AGENTSTREAM_DATA_DIR": str(tmp_path / "data"),
        "AGENTSTREAM_ARCHIVE_DIR": str(root),
        "AGENTSTREAM_PARTITIONS": str(TEST_PARTITIONS),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agentstream.cli", "archive", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        done = await asyncio.to_thread(cli, "--restore", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["ok"] and report["records"] == len(events) and report["offsets_preserved"]
        again = await asyncio.to_thread(cli, "--restore")
        assert again.returncode == 0 and "restore skipped" in again.stdout
        losses = await asyncio.to_thread(cli, "--losses", "--json")
        assert losses.returncode == 0 and json.loads(losses.stdout) == {
            "records": 0,
            "incidents": [],
        }
    finally:
        proc.stop()


async def test_an_archive_of_two_generations_is_restored_in_order_and_archived_once(
    kafka: Broker, tmp_path: Path
):
    """A broker restarted without a restore left two generations (offsets from 0 twice):
    the restore renumbers (says so), keeps history in (generation, offset) order, and the
    archiver then archives only what comes after the restored records."""
    from collections import Counter

    from test_archive import archived_ids

    root = tmp_path / "archive"
    first, second, third = sim(runs=4, seed=101), sim(runs=3, seed=102), sim(runs=2, seed=103)
    await publish(kafka.bootstrap, first)
    await archive_all(kafka.bootstrap, root, len(first))
    kafka.process.stop()
    proc = await start_broker_on(kafka.port, tmp_path)  # no restore: a new, empty log
    try:
        await publish(kafka.bootstrap, second)
        stop = asyncio.Event()
        task = asyncio.create_task(Archiver(kafka.bootstrap, root, max_segment_age_s=0.3).run(stop))
        await wait_for(lambda: len(archived_ids(root)) >= len(first) + len(second), 60, "gen 2")
        stop.set()
        await task
    finally:
        proc.stop()
    assert archive_state(root).generation == 2
    # per partition: generation 1's records, then generation 2's, each in offset order
    by_gen: dict[int, list[bytes]] = {}
    for seg in sorted(complete_segments(root), key=lambda s: (s.generation, s.first_offset)):
        by_gen.setdefault(seg.partition, []).extend(read_segment_rows(root, seg))

    proc = await start_broker_on(kafka.port, tmp_path)
    try:
        report = await restore_log_async(kafka.bootstrap, root, partitions=TEST_PARTITIONS)
        assert report.ok and not report.offsets_preserved, report.summary()
        assert report.records == len(first) + len(second)
        live = await log_records(kafka.bootstrap)
        assert {p: [v for _, _, _, v in rows] for p, rows in live.items()} == by_gen
        await publish(kafka.bootstrap, third)
        stop = asyncio.Event()
        task = asyncio.create_task(Archiver(kafka.bootstrap, root, max_segment_age_s=0.3).run(stop))
        total = len(first) + len(second) + len(third)
        await wait_for(lambda: len(archived_ids(root)) >= total, 60, "third archived")
        stop.set()
        await task
    finally:
        proc.stop()
    assert Counter(archived_ids(root)) == Counter(e.id for e in first + second + third)


def read_segment_rows(root: Path, seg) -> list[bytes]:
    from streams.restore import read_segment

    return read_segment(root, seg)["raw"].to_pylist()


async def test_compaction_merges_small_segments_and_readers_see_each_record_once(
    tmp_path: Path,
):
    """One file per partition per flush adds up; merged files replace runs of them, readers
    never see a record twice, and the merged-away files go only after a grace period."""
    from schemas.codec import encode_event
    from streams.archive import SegmentWriter, archive_state, compact, scan_files
    from streams.log_reader import ArchiveLogSource

    class Rec:
        def __init__(self, offset: int, event: Event) -> None:
            self.offset, self.timestamp, self.key = offset, 1_767_225_600_000, b"k"
            self.value = encode_event(event)

    events = [e for e in sim(runs=3, seed=111) if e.time.hour == 0][:90]
    root = tmp_path / "a"
    offset = 0
    for _ in range(30):  # 30 flushes of 3 records each, all in one hour bucket
        w = SegmentWriter(root, 1, 0)
        for _ in range(3):
            w.add(Rec(offset, events[offset]), events[offset])  # type: ignore[arg-type]
            offset += 1
        w.close()

    async def read() -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        async for batch in ArchiveLogSource(root).batches():
            out += [(r.offset, e.id) for r, e in batch.events()]
        return out

    before = await read()
    assert len(scan_files(root)) == 30 and len(before) == 90
    merged, deleted = compact(root, min_run=20, older_than_s=0, delete_after_s=3600)
    assert (merged, deleted) == (30, 0)
    assert len(complete_segments(root)) == 1 and len(scan_files(root)) == 31
    assert await read() == before  # the covered files are still there, never read twice
    assert archive_state(root).last_offsets == {0: 89}
    merged, deleted = compact(root, min_run=20, older_than_s=0, delete_after_s=0)
    assert (merged, deleted) == (0, 30)
    assert len(scan_files(root)) == 1
    assert await read() == before


async def test_records_clients_wrote_before_the_restore_are_moved_after_it(
    kafka: Broker, tmp_path: Path
):
    """A producer left running reconnects to the new broker before `up` restores it. Old
    behaviour: the restore was skipped ("not a fresh broker") and the log lost its history."""
    root = tmp_path / "archive"
    first, early = sim(runs=5, seed=121), sim(runs=2, seed=122)
    await publish(kafka.bootstrap, first)
    await archive_all(kafka.bootstrap, root, len(first))
    before = await log_records(kafka.bootstrap)
    kafka.process.stop()
    proc = await start_broker_on(kafka.port, tmp_path)
    try:
        await publish(kafka.bootstrap, early)  # the eager producer wins the race
        report = await restore_log_async(kafka.bootstrap, root, partitions=TEST_PARTITIONS)
        assert report.ok and not report.skipped, report.summary()
        assert report.records == len(first) and report.appended == len(early)
        after = await log_records(kafka.bootstrap)
        for p, rows in before.items():
            assert after[p][: len(rows)] == rows  # the history, at its archived offsets
        moved = [v for p, rows in after.items() for _, _, _, v in rows[len(before.get(p, [])) :]]
        from schemas.codec import EventCodec

        codec = EventCodec()
        assert sorted(codec.decode(v).id for v in moved) == sorted(e.id for e in early)
        marker = await fetch_marker(kafka.bootstrap)
        assert marker is not None and marker.restored and not marker.restoring
        assert marker.restored_next == {p: len(v) for p, v in before.items()}
    finally:
        proc.stop()


async def test_after_a_restore_the_archiver_reports_no_lag_on_partitions_without_new_records(
    kafka: Broker, tmp_path: Path
):
    """A fresh broker has no group offsets. The archiver resumes from its files and must
    mirror those positions into its group, or `status` shows every restored partition that
    gets no new record as archiver lag (seen: 3,476 'behind' with everything archived)."""
    root = tmp_path / "archive"
    events = sim(runs=4, seed=111)
    await publish(kafka.bootstrap, events)
    await archive_all(kafka.bootstrap, root, len(events))
    kafka.process.stop()
    proc = await start_broker_on(kafka.port, tmp_path)
    try:
        report = await restore_log_async(kafka.bootstrap, root, partitions=TEST_PARTITIONS)
        assert report.ok, report.summary()
        ends = {p: rows[-1][0] + 1 for p, rows in (await log_records(kafka.bootstrap)).items()}
        stop = asyncio.Event()
        archiver = Archiver(kafka.bootstrap, root, max_segment_age_s=0.3)
        task = asyncio.create_task(archiver.run(stop))
        # the group's commits, read as `status` reads them (a consumer of the group that
        # never joins: `committed` only asks the coordinator)
        watcher = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap,
            group_id=archiver.group_id,
            enable_auto_commit=False,
        )
        await watcher.start()
        try:
            committed: dict[int, int | None] = {}
            deadline = time.monotonic() + 60
            while committed != ends:
                assert time.monotonic() < deadline, f"committed {committed}, log ends {ends}"
                assert not task.done(), task
                committed = {p: await watcher.committed(TopicPartition(EVENTS, p)) for p in ends}
                await asyncio.sleep(0.1)
        finally:
            await watcher.stop()
            stop.set()
            await task
    finally:
        proc.stop()
