"""The Parquet archive of ``agent-events``: the durable, replayable copy of the log.

The embedded broker keeps everything in memory, so the archive is the only copy of history
that survives a restart there; with real Kafka it is the long-term copy that outlives
retention and the fast source for rebuilding read models.

Layout (hive-partitioned, readable by pyarrow.dataset, DuckDB, chDB, Spark)::

    ROOT/events/date=YYYY-MM-DD/hour=HH/g0001-p03-o000001200-o000001399.parquet
    ROOT/dlq/date=YYYY-MM-DD/hour=HH/g0001-p03-o000001200-o000001399.parquet
    ROOT/_tmp/     files being written (never read; deleted on start)
    ROOT/.lock     one archiver per directory (flock)

``events`` rows are :data:`ARCHIVE_SCHEMA`: the flat row of ``schemas.arrow`` (log
partition/offset filled) plus the log generation, the record timestamp, the key, the
original value bytes and the record headers, so the archive is a byte-exact copy of the
log (subject, dataschema, old event versions and any client's headers included). Files
of format version 1 (footer ``agentstream.archive.version``) have no ``log_headers``
column: readers read them with the current schema, which gives null headers ("not
known", unlike ``[]``: "none"). Their date/hour is the event's own time
(UTC). Records that fail validation go, with their bytes and the reason, to ``dlq`` rows
(:data:`DLQ_SCHEMA`), bucketed by the record timestamp: nothing is dropped.

A *segment* is one partition's contiguous offset range, ``[first, last]``. It may span
several hour buckets (and the dlq), so it is written as one file per bucket, all with the
same name; each file's footer lists its siblings (``agentstream.segment``). A segment is
written to ``_tmp``, fsynced, renamed into place and the directories fsynced; only then is
the consumer offset committed. On start the archive's own files say where to resume (the
highest archived offset per partition + 1), whatever the consumer group says, and a
segment with a missing sibling (crash between renames) is deleted and written again. So a
kill -9 at any point neither loses nor duplicates an event.

*Generations*: the embedded broker restarts with empty partitions and offsets from 0.
On start the archiver fetches, per partition, the record at the last archived offset and
compares its bytes with the archived copy; if any differs or is missing, the log is a new
incarnation and archiving starts generation ``g+1`` from offset 0. A reader orders
history by (generation, partition, offset).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter

from schemas.admission import admit, is_infrastructure_error, processing_error
from schemas.arrow import EVENT_ROW_SCHEMA, events_to_table
from schemas.codec import EventCodec
from schemas.envelope import Event
from schemas.errors import InvalidEvent
from schemas.topics import EVENTS
from streams.ack_ledger import prune as prune_ledgers
from streams.ack_ledger import read_acked
from streams.log_identity import EpochMarker, LogWatch, close_consumer, ensure_epoch

log = logging.getLogger(__name__)

LOST_RECORDS = Counter(
    "agentstream_log_lost_records",
    "Records the broker acknowledged that were gone before the archiver could read them",
    ["topic"],
)

EVENTS_DIR = "events"
DLQ_DIR = "dlq"
TMP_DIR = "_tmp"
LOCK_FILE = ".lock"
LOG_DIR = "_log"  # the archiver's view of the live log (state.json) and loss.json
ACKS_DIR = "acks"  # under LOG_DIR: the ack ledgers (streams/ack_ledger.py)


def ack_ledger_dir(root: Path) -> Path:
    """Where the gate and the stack's producers record acknowledgements for this archive."""
    return Path(root) / LOG_DIR / ACKS_DIR


SEGMENT_KEY = b"agentstream.segment"
DEFAULT_GROUP = "agentstream-archiver"
STAGE = "archiver"  # in the detail of a dlq row whose event row could not be built

ARCHIVE_VERSION = 2
"""Version 2 added ``log_headers``; version-1 files lack the column (read as null)."""

VERSION_KEY = b"agentstream.archive.version"

RecordHeaders = Sequence[tuple[str, bytes | None]]
"""Kafka record headers as aiokafka gives and takes them: (key, value or None), in order."""

HEADERS_TYPE = pa.list_(
    pa.field(
        "element",
        pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.binary())]),
        nullable=False,
    )
)
"""A record's headers in record order; repeated keys kept; a null value stays null."""

LOG_COLUMNS = [
    pa.field("log_generation", pa.int32(), nullable=False),
    pa.field("log_timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("log_key", pa.binary()),
    pa.field("raw", pa.binary(), nullable=False),
    # [] = no headers; null only for rows archived before version 2 (headers unknown)
    pa.field("log_headers", HEADERS_TYPE),
]

ARCHIVE_SCHEMA = pa.schema(
    list(EVENT_ROW_SCHEMA) + LOG_COLUMNS,
    metadata={**(EVENT_ROW_SCHEMA.metadata or {}), VERSION_KEY: str(ARCHIVE_VERSION).encode()},
)
"""An archived valid event: the flat event row + where it was in the log + its bytes and
headers."""

DLQ_SCHEMA = pa.schema(
    [
        pa.field("log_partition", pa.int32(), nullable=False),
        pa.field("log_offset", pa.int64(), nullable=False),
        *LOG_COLUMNS,
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("path", pa.string()),
    ],
    metadata={VERSION_KEY: str(ARCHIVE_VERSION).encode(), b"agentstream.row": b"dlq"},
)
"""An archived invalid record: where it was, its bytes, and why it was rejected."""


def headers_array(rows: Sequence[RecordHeaders | None]) -> pa.ListArray:
    """The ``log_headers`` column of ``rows`` (None -> null), built from flat key and
    value arrays: much faster than converting nested Python objects."""
    offsets: list[int] = [0]
    keys: list[str] = []
    values: list[bytes | None] = []
    nulls = False
    for headers in rows:
        if headers is None:
            nulls = True
        else:
            for k, v in headers:
                keys.append(k)
                values.append(v)
        offsets.append(len(keys))
    item = HEADERS_TYPE.value_type
    pairs = pa.StructArray.from_arrays(
        [pa.array(keys, pa.string()), pa.array(values, pa.binary())], fields=list(item)
    )
    mask = pa.array([h is None for h in rows], pa.bool_()) if nulls else None
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pairs, type=HEADERS_TYPE, mask=mask
    )


def headers_per_row(
    column: pa.Array | pa.ChunkedArray | None, rows: int, chunk_rows: int = 4096
) -> Iterator[list[tuple[str, bytes | None]] | None]:
    """Per row, lazily, the headers as aiokafka takes them (a list of (key, value)); None
    where the archive does not know them (a version-1 row, or ``column`` None: no such
    column).

    Cheap because the restore calls it for every record: rows are converted
    ``chunk_rows`` at a time (large Python lists of keys and values, held for a whole
    segment, make every garbage-collector pass slower), and within a chunk run by run of
    equal header counts, ``zip`` over one iterator grouping the pairs in C (the SDK's
    records all have three headers, so a chunk is usually one run).
    """
    if column is None:
        return itertools.repeat(None, rows)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], HEADERS_TYPE)
    return itertools.chain.from_iterable(
        _headers_of_chunk(column.slice(i, chunk_rows)) for i in range(0, len(column), chunk_rows)
    )


def _headers_of_chunk(column: pa.Array) -> Iterator[list[tuple[str, bytes | None]] | None]:
    keys_arr, values_arr = column.flatten().flatten()
    pairs = zip(keys_arr.to_pylist(), values_arr.to_pylist(), strict=True)
    runs: list[Iterable[list[tuple[str, bytes | None]] | None]] = []
    for n, run in itertools.groupby(pc.list_value_length(column).to_pylist()):
        count = len(list(run))
        if n is None:
            runs.append(itertools.repeat(None, count))
        elif n == 0:
            runs.append([] for _ in range(count))
        else:  # consumed in order (chain), each run takes its own pairs from the iterator
            runs.append(map(list, itertools.islice(zip(*[pairs] * n, strict=False), count)))
    return itertools.chain.from_iterable(runs)


_NAME_RE = re.compile(r"^g(?P<g>\d+)-p(?P<p>\d+)-o(?P<a>\d+)-o(?P<b>\d+)\.parquet$")


# --- naming and layout (pure) -----------------------------------------------------------


def segment_file_name(generation: int, partition: int, first: int, last: int) -> str:
    """``g0001-p03-o000001200-o000001399.parquet``: sorts and parses without opening."""
    return f"g{generation:04d}-p{partition:02d}-o{first:09d}-o{last:09d}.parquet"


def parse_segment_file_name(name: str) -> tuple[int, int, int, int] | None:
    """(generation, partition, first offset, last offset), or None for any other file."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return int(m["g"]), int(m["p"]), int(m["a"]), int(m["b"])


def bucket_dir(when: datetime) -> str:
    """``date=YYYY-MM-DD/hour=HH`` of a moment, in UTC."""
    utc = when.astimezone(UTC)
    return f"date={utc:%Y-%m-%d}/hour={utc:%H}"


def bucket_of_ms(timestamp_ms: int) -> str:
    return bucket_dir(datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC))


@dataclass(frozen=True, order=True, slots=True)
class ArchiveFile:
    """One file of one segment; ``kind`` is ``events`` or ``dlq``."""

    generation: int
    partition: int
    first_offset: int
    last_offset: int
    kind: str
    relpath: str  # relative to the archive root


@dataclass(frozen=True, slots=True)
class Segment:
    """All files of one partition's offset range."""

    generation: int
    partition: int
    first_offset: int
    last_offset: int
    files: tuple[ArchiveFile, ...]

    def of_kind(self, kind: str) -> list[ArchiveFile]:
        return [f for f in self.files if f.kind == kind]


def scan_files(root: Path) -> list[ArchiveFile]:
    """Every segment file under ``root`` (events and dlq), sorted by log position."""
    found: list[ArchiveFile] = []
    for kind in (EVENTS_DIR, DLQ_DIR):
        base = root / kind
        if not base.is_dir():
            continue
        for path in base.glob("date=*/hour=*/*.parquet"):
            parsed = parse_segment_file_name(path.name)
            if parsed is not None:
                found.append(ArchiveFile(*parsed, kind, str(path.relative_to(root))))
    found.sort()
    return found


def group_segments(files: Iterable[ArchiveFile]) -> list[Segment]:
    """Files grouped into segments, ordered by (generation, partition, first offset)."""
    by_key: dict[tuple[int, int, int, int], list[ArchiveFile]] = {}
    for f in files:
        by_key.setdefault((f.generation, f.partition, f.first_offset, f.last_offset), []).append(f)
    return [Segment(*key, files=tuple(sorted(v))) for key, v in sorted(by_key.items())]


def segment_siblings(root: Path, file: ArchiveFile) -> list[str]:
    """The relative paths of every file of this file's segment, from its footer."""
    meta = pq.read_metadata(root / file.relpath).metadata or {}
    info = json.loads(meta[SEGMENT_KEY])
    return list(info["files"])


def segment_complete(root: Path, segment: Segment) -> bool:
    """Every sibling its footer lists is in place (false after a crash between renames)."""
    present = {f.relpath for f in segment.files}
    try:
        listed = set(segment_siblings(root, segment.files[0]))
    except (OSError, KeyError, ValueError, pa.ArrowInvalid):
        return False
    return listed <= present


def drop_covered(segments: Iterable[Segment]) -> list[Segment]:
    """Leave out segments inside another one's offset range: the small segments a
    compaction merged (:func:`compact`), until they are deleted."""
    out: list[Segment] = []
    reach: dict[tuple[int, int], int] = {}
    for seg in sorted(
        segments, key=lambda x: (x.generation, x.partition, x.first_offset, -x.last_offset)
    ):
        key = (seg.generation, seg.partition)
        if seg.last_offset <= reach.get(key, -1):
            continue
        out.append(seg)
        reach[key] = seg.last_offset
    return out


def complete_segments(root: Path) -> list[Segment]:
    """The archive's segments, leaving out the last one of a partition if it is partial."""
    segments = drop_covered(group_segments(scan_files(root)))
    last_of: dict[tuple[int, int], Segment] = {}
    for s in segments:
        last_of[(s.generation, s.partition)] = s
    partial = {id(s) for s in last_of.values() if not segment_complete(root, s)}
    return [s for s in segments if id(s) not in partial]


@dataclass(frozen=True, slots=True)
class ArchiveState:
    """What the archive holds: its newest generation and, per partition, the last offset."""

    generation: int  # 0 when the archive is empty
    last_offsets: dict[int, int]  # of ``generation``, per partition
    segments: int
    files: int


def archive_state(root: Path) -> ArchiveState:
    segments = complete_segments(root)
    generation = max((s.generation for s in segments), default=0)
    last: dict[int, int] = {}
    for s in segments:
        if s.generation == generation:
            last[s.partition] = max(last.get(s.partition, -1), s.last_offset)
    return ArchiveState(generation, last, len(segments), sum(len(s.files) for s in segments))


def read_record_bytes(root: Path, segment: Segment, offset: int) -> bytes | None:
    """The archived value bytes at ``offset`` in ``segment`` (events or dlq)."""
    for f in segment.files:
        t = pq.read_table(root / f.relpath, columns=["raw"], filters=[("log_offset", "=", offset)])
        if t.num_rows:
            return t.column("raw")[0].as_py()
    return None


def repair(root: Path) -> list[str]:
    """Delete in-progress files and partial trailing segments; return what was deleted.

    Run before archiving starts (under the lock): a kill -9 leaves at most one partial
    segment per partition, and its events are still in the log after the last commit.
    """
    removed: list[str] = []
    tmp = root / TMP_DIR
    if tmp.is_dir():
        removed += [str(p.relative_to(root)) for p in tmp.iterdir()]
        shutil.rmtree(tmp)
    segments = group_segments(scan_files(root))
    last_of: dict[tuple[int, int], Segment] = {}
    for s in segments:
        last_of[(s.generation, s.partition)] = s
    for s in last_of.values():
        if not segment_complete(root, s):
            for f in s.files:
                (root / f.relpath).unlink(missing_ok=True)
                removed.append(f.relpath)
            _fsync_dirs({(root / f.relpath).parent for f in s.files})
    return removed


# --- compaction: few large files instead of one per flush ------------------------------------


def compact(
    root: Path,
    *,
    min_run: int = 20,
    max_records: int = 500_000,
    older_than_s: float = 60.0,
    delete_after_s: float = 3600.0,
    row_group_rows: int = 20_000,
) -> tuple[int, int]:
    """Merge runs of small segments; delete merged-away files once nobody reads them.

    The archiver closes a file per partition every ``archive_flush_s`` (the loss window),
    so a busy archive gets many small files. A run of at least ``min_run`` consecutive
    single-file segments of one partition in one directory, each older than
    ``older_than_s``, becomes one file with the run's offset range (written to ``_tmp``,
    fsynced, renamed: atomic). Readers ignore segments a larger one covers
    (:func:`drop_covered`), so the small files stay readable for ``delete_after_s`` (a
    reader that listed them earlier) and are deleted after. Returns (segments merged,
    files deleted). Run only by the archiver (it holds the directory's lock).
    """
    now = time.time()
    every = group_segments(scan_files(root))
    kept = {id(x) for x in drop_covered(every)}
    deleted = 0
    dirs: set[Path] = set()
    for seg in every:
        if id(seg) in kept:
            continue
        for f in seg.files:
            path = root / f.relpath
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime >= delete_after_s:
                    path.unlink()
                    deleted += 1
                    dirs.add(path.parent)
    _fsync_dirs(dirs)
    runs: list[list[Segment]] = []
    current: list[Segment] = []

    def small(x: Segment) -> bool:
        if len(x.files) != 1:
            return False
        try:
            return now - (root / x.files[0].relpath).stat().st_mtime >= older_than_s
        except OSError:
            return False

    def continues(x: Segment) -> bool:
        if not current:
            return False
        prev = current[-1]
        size = x.last_offset - current[0].first_offset + 1
        return (
            (prev.generation, prev.partition) == (x.generation, x.partition)
            and prev.last_offset + 1 == x.first_offset
            and prev.files[0].kind == x.files[0].kind
            and Path(prev.files[0].relpath).parent == Path(x.files[0].relpath).parent
            and size <= max_records
        )

    for seg in complete_segments(root):
        if small(seg) and continues(seg):
            current.append(seg)
            continue
        if len(current) >= min_run:
            runs.append(current)
        current = [seg] if small(seg) else []
    if len(current) >= min_run:
        runs.append(current)
    for run in runs:
        _merge(root, run, row_group_rows)
    return sum(len(r) for r in runs), deleted


def _merge(root: Path, run: list[Segment], row_group_rows: int) -> None:
    first, last = run[0], run[-1]
    kind = first.files[0].kind
    schema = ARCHIVE_SCHEMA if kind == EVENTS_DIR else DLQ_SCHEMA
    table = pa.concat_tables([pq.read_table(root / x.files[0].relpath, schema=schema) for x in run])
    directory = (root / first.files[0].relpath).parent
    name = segment_file_name(
        first.generation, first.partition, first.first_offset, last.last_offset
    )
    final = directory / name
    info = json.dumps(
        {
            "generation": first.generation,
            "partition": first.partition,
            "first_offset": first.first_offset,
            "last_offset": last.last_offset,
            "records": table.num_rows,
            "files": [str(final.relative_to(root))],
            "merged": len(run),
        }
    )
    _make_dirs(root / TMP_DIR)
    tmp = root / TMP_DIR / f"merge-{name}"
    writer = pq.ParquetWriter(tmp, schema, compression="zstd")
    writer.write_table(table, row_group_size=row_group_rows)
    writer.add_key_value_metadata({SEGMENT_KEY.decode(): info})
    writer.close()
    _fsync_path(tmp)
    os.replace(tmp, final)
    _fsync_dirs({directory, root / TMP_DIR})


# --- durable writes -----------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dirs(dirs: Iterable[Path]) -> None:
    for d in sorted(set(dirs)):
        if d.is_dir():
            _fsync_path(d)


def _make_dirs(path: Path) -> None:
    """mkdir -p, fsyncing each parent whose entry list changed (so the dir survives a crash)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        _fsync_path(d.parent)


@dataclass
class _BucketBuffer:
    """Rows of one bucket waiting to be written as a row group."""

    events: list[Event] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    errors: list[InvalidEvent] = field(default_factory=list)
    headers: list[RecordHeaders] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)


def _event_table(generation: int, partition: int, buf: _BucketBuffer) -> pa.Table:
    n = len(buf)
    table = events_to_table(buf.events, [partition] * n, buf.offsets)
    extra = [
        pa.array([generation] * n, pa.int32()),
        pa.array(buf.timestamps, pa.timestamp("ms", tz="UTC")),
        pa.array(buf.keys, pa.binary()),
        pa.array(buf.raws, pa.binary()),
        headers_array(buf.headers),
    ]
    return pa.Table.from_arrays(list(table.columns) + extra, schema=ARCHIVE_SCHEMA)


def _dlq_table(generation: int, partition: int, buf: _BucketBuffer) -> pa.Table:
    n = len(buf)
    return pa.Table.from_arrays(
        [
            pa.array([partition] * n, pa.int32()),
            pa.array(buf.offsets, pa.int64()),
            pa.array([generation] * n, pa.int32()),
            pa.array(buf.timestamps, pa.timestamp("ms", tz="UTC")),
            pa.array(buf.keys, pa.binary()),
            pa.array(buf.raws, pa.binary()),
            headers_array(buf.headers),
            pa.array([e.reason.value for e in buf.errors], pa.string()),
            pa.array([e.detail for e in buf.errors], pa.string()),
            pa.array([e.path for e in buf.errors], pa.string()),
        ],
        schema=DLQ_SCHEMA,
    )


class SegmentWriter:
    """One partition's open segment: a temp Parquet file per bucket, streamed in row groups.

    ``close()`` makes it durable (fsync, rename, fsync directories) and returns the paths;
    ``abort()`` deletes the temp files (their records are still in the log).
    """

    def __init__(
        self,
        root: Path,
        generation: int,
        partition: int,
        row_group_rows: int = 20_000,
        compression: str = "zstd",
    ) -> None:
        self.root, self.generation, self.partition = root, generation, partition
        self.row_group_rows = row_group_rows
        self.compression = compression
        self.first_offset: int | None = None
        self.last_offset: int | None = None
        self.first_raw = b""
        self.last_raw = b""
        self.records = 0
        self.bytes = 0
        self.opened_at = time.monotonic()
        self._buffers: dict[tuple[str, str], _BucketBuffer] = {}
        self._writers: dict[tuple[str, str], tuple[pq.ParquetWriter, Path]] = {}
        self._tmp = root / TMP_DIR
        self.processing_errors = 0  # admitted events whose row could not be built (-> dlq)

    def add(self, record: ConsumerRecord, outcome: Event | InvalidEvent) -> None:
        """Append one record (in offset order) with its decoded event or rejection."""
        value: bytes = record.value or b""
        if self.first_offset is None:
            self.first_offset = record.offset
            self.first_raw = value
            self.opened_at = time.monotonic()
        elif self.last_offset is not None and record.offset <= self.last_offset:
            raise ValueError(f"offset {record.offset} is not after {self.last_offset}")
        self.last_offset = record.offset
        self.last_raw = value
        if isinstance(outcome, InvalidEvent):
            key = (DLQ_DIR, bucket_of_ms(record.timestamp))
        else:
            key = (EVENTS_DIR, bucket_dir(outcome.time))
        buf = self._buffers.setdefault(key, _BucketBuffer())
        buf.offsets.append(record.offset)
        buf.timestamps.append(record.timestamp)
        buf.keys.append(record.key)
        buf.raws.append(value)
        # a ConsumerRecord always has them; records built by hand (tests) may not
        buf.headers.append(getattr(record, "headers", None) or ())
        if isinstance(outcome, InvalidEvent):
            buf.errors.append(outcome)
        else:
            buf.events.append(outcome)
        self.records += 1
        self.bytes += len(value)
        if len(buf) >= self.row_group_rows:
            self._flush(key)

    def _flush(self, key: tuple[str, str]) -> None:
        buf = self._buffers.pop(key, None)
        if not buf:
            return
        kind, _ = key
        if kind == DLQ_DIR:
            table = _dlq_table(self.generation, self.partition, buf)
        else:
            try:
                table = _event_table(self.generation, self.partition, buf)
            except Exception as err:
                if is_infrastructure_error(err):
                    raise
                buf = self._set_aside(buf, err)
                if not buf:
                    return
                table = _event_table(self.generation, self.partition, buf)
        if key not in self._writers:
            _make_dirs(self._tmp)
            tmp_path = self._tmp / f"p{self.partition:02d}-{kind}-{len(self._writers)}.parquet"
            writer = pq.ParquetWriter(tmp_path, table.schema, compression=self.compression)
            self._writers[key] = (writer, tmp_path)
        self._writers[key][0].write_table(table, row_group_size=max(len(buf), 1))

    def _set_aside(self, buf: _BucketBuffer, err: Exception) -> _BucketBuffer:
        """Move the events whose row cannot be built to the dlq; return the others.

        A record must not stop the archiver: each event of the failed row group is tried
        alone, and those that still fail are archived as dlq rows (reason
        ``processing_error``) with their bytes, so the archive stays a copy of the log.
        """
        keep = _BucketBuffer()
        dlq_keys: set[tuple[str, str]] = set()
        for i, event in enumerate(buf.events):
            one = _BucketBuffer(
                [event],
                [buf.offsets[i]],
                [buf.timestamps[i]],
                [buf.keys[i]],
                [buf.raws[i]],
                headers=[buf.headers[i]],
            )
            try:
                _event_table(self.generation, self.partition, one)
            except Exception as row_err:
                if is_infrastructure_error(row_err):
                    raise
                self.processing_errors += 1
                log.error(
                    "archive: p%d offset %d: building its row raised %r; archived in dlq "
                    "as processing_error",
                    self.partition,
                    buf.offsets[i],
                    row_err,
                )
                dkey = (DLQ_DIR, bucket_of_ms(buf.timestamps[i]))
                dlq = self._buffers.setdefault(dkey, _BucketBuffer())
                dlq.offsets.append(buf.offsets[i])
                dlq.timestamps.append(buf.timestamps[i])
                dlq.keys.append(buf.keys[i])
                dlq.raws.append(buf.raws[i])
                dlq.headers.append(buf.headers[i])
                dlq.errors.append(processing_error(STAGE, row_err))
                dlq_keys.add(dkey)
                continue
            keep.events.append(event)
            keep.offsets.append(buf.offsets[i])
            keep.timestamps.append(buf.timestamps[i])
            keep.keys.append(buf.keys[i])
            keep.raws.append(buf.raws[i])
            keep.headers.append(buf.headers[i])
        if not dlq_keys:  # only together did they fail: nothing to single out
            raise err
        for dkey in dlq_keys:
            self._flush(dkey)
        return keep

    def close(self) -> list[str]:
        """Write the rest, make every file durable and visible; return their relative paths."""
        if self.first_offset is None or self.last_offset is None:
            return []
        for key in list(self._buffers):
            self._flush(key)
        name = segment_file_name(
            self.generation, self.partition, self.first_offset, self.last_offset
        )
        finals = {key: self.root / key[0] / key[1] / name for key in self._writers}
        relpaths = sorted(str(p.relative_to(self.root)) for p in finals.values())
        info = json.dumps(
            {
                "generation": self.generation,
                "partition": self.partition,
                "first_offset": self.first_offset,
                "last_offset": self.last_offset,
                "records": self.records,
                "files": relpaths,
            }
        )
        for writer, tmp_path in self._writers.values():
            writer.add_key_value_metadata({SEGMENT_KEY.decode(): info})
            writer.close()
            _fsync_path(tmp_path)
        for key, (_, tmp_path) in self._writers.items():
            _make_dirs(finals[key].parent)
            os.replace(tmp_path, finals[key])
        _fsync_dirs({p.parent for p in finals.values()} | {self._tmp})
        self._writers.clear()
        return relpaths

    def abort(self) -> None:
        for writer, tmp_path in self._writers.values():
            with contextlib.suppress(Exception):
                writer.close()
            tmp_path.unlink(missing_ok=True)
        self._writers.clear()
        self._buffers.clear()


# --- the log side -------------------------------------------------------------------------


async def fetch_high_watermarks(
    consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition], deadline_s: float = 15.0
) -> dict[TopicPartition, int]:
    """The true high watermark of each partition, as a fetch response reports it.

    ``end_offsets`` is wrong on the embedded broker (start of the last batch + 1), so this
    seeks just before it and fetches: the fetch response carries the right value. The
    consumer's positions are left wherever the fetch left them; seek afterwards.
    """
    tps = list(tps)
    if not tps:
        return {}
    consumer.assign(tps)
    begin = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)
    for tp in tps:
        consumer.seek(tp, max(end[tp] - 1, begin[tp]))
    found: dict[TopicPartition, int] = {}
    stop_at = time.monotonic() + deadline_s
    while len(found) < len(tps):
        if time.monotonic() > stop_at:
            missing = sorted(tp.partition for tp in tps if tp not in found)
            raise TimeoutError(f"no fetch response for partitions {missing} in {deadline_s}s")
        await consumer.getmany(*[tp for tp in tps if tp not in found], timeout_ms=200)
        for tp in tps:
            hw = consumer.highwater(tp)
            if hw is not None and tp not in found:
                found[tp] = hw
    return found


async def fetch_record(
    consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, deadline_s: float = 15.0
) -> ConsumerRecord | None:
    """The record at ``offset``, or None when the partition does not hold it (any more)."""
    consumer.seek(tp, offset)
    stop_at = time.monotonic() + deadline_s
    while time.monotonic() < stop_at:
        got = await consumer.getmany(tp, timeout_ms=200)
        for rec in got.get(tp, []):
            if rec.offset == offset:
                return rec
            if rec.offset > offset:
                return None  # compacted away or never written
        hw = consumer.highwater(tp)
        if hw is not None and hw <= offset:
            return None
    raise TimeoutError(f"partition {tp.partition}: no answer fetching offset {offset}")


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """Where archiving (or a tail read after the archive) continues in the live log."""

    generation: int
    start_offsets: dict[int, int]  # partition -> next offset to read
    same_log: bool  # the live log is the archive's newest generation
    reason: str
    last_raw: dict[int, bytes] = field(default_factory=dict)  # partition -> last archived bytes
    last_offsets: dict[int, int] = field(default_factory=dict)  # partition -> last archived


async def plan_resume(
    consumer: AIOKafkaConsumer,
    root: Path,
    topic: str = EVENTS,
    marker: EpochMarker | None = None,
) -> ResumePlan:
    """Decide the generation and per-partition start offsets by comparing archive and log.

    ``marker`` is the live log's epoch marker: a log restored from this archive starts a
    new generation (if it must) where the restored records end, not at 0, so that the
    restored records are not archived twice.
    """
    plan = await _plan_resume(consumer, root, topic)
    if plan.same_log or marker is None or not marker.restored or plan.generation == 1:
        return plan
    start = {p: max(off, marker.restored_next.get(p, off)) for p, off in plan.start_offsets.items()}
    return ResumePlan(
        plan.generation, start, False, plan.reason + "; after the records restored from the archive"
    )


async def _plan_resume(consumer: AIOKafkaConsumer, root: Path, topic: str) -> ResumePlan:
    state = archive_state(root)
    await consumer.topics()  # metadata of every topic, without naming (creating) one
    partitions = sorted(consumer.partitions_for_topic(topic) or ())
    if not partitions:
        raise RuntimeError(f"topic {topic!r} has no partitions (does it exist?)")
    tps = {p: TopicPartition(topic, p) for p in partitions}
    consumer.assign(list(tps.values()))
    begin = await consumer.beginning_offsets(list(tps.values()))
    fresh = {p: begin[tps[p]] for p in partitions}
    if state.generation == 0:
        return ResumePlan(1, fresh, False, "empty archive")
    segments = [s for s in complete_segments(root) if s.generation == state.generation]
    last_segment = {s.partition: s for s in segments}  # sorted: the last one wins
    last_raw: dict[int, bytes] = {}
    for p, last in sorted(state.last_offsets.items()):
        if p not in tps:
            return ResumePlan(state.generation + 1, fresh, False, f"partition {p} no longer exists")
        live = await fetch_record(consumer, tps[p], last)
        archived = read_record_bytes(root, last_segment[p], last)
        if archived is not None:
            last_raw[p] = archived
        if live is None:
            if begin[tps[p]] > last:  # deleted by retention: same log, older than its start
                continue
            return ResumePlan(
                state.generation + 1, fresh, False, f"partition {p} has no offset {last}"
            )
        if live.value != archived:
            return ResumePlan(
                state.generation + 1,
                fresh,
                False,
                f"partition {p} offset {last} holds a different record",
            )
    start = dict(fresh)
    for p, last in state.last_offsets.items():
        if begin[tps[p]] > last + 1:
            log.error(
                "archive: partition %d offsets %d..%d were deleted before being archived",
                p,
                last + 1,
                begin[tps[p]] - 1,
            )
        start[p] = max(last + 1, begin[tps[p]])
    return ResumePlan(
        state.generation,
        start,
        True,
        "resuming the archive's generation",
        last_raw,
        dict(state.last_offsets),
    )


# --- lost records: what the broker acknowledged and nobody archived ------------------------


@dataclass(frozen=True, slots=True)
class LossIncident:
    """Records gone with a log incarnation before the archiver read them.

    ``ranges`` maps partition -> (first, last) offsets of that log that are in no archive:
    the log reached ``last + 1`` -- by the ack ledger (every acknowledgement the gate and
    the stack's own producers gave, :mod:`streams.ack_ledger`) or by a high watermark the
    archiver fetched -- but the archive holds it only up to ``first``. Exact for records
    acknowledged through the gate or a ledger-keeping producer; a producer that reached
    the broker's own port directly is covered only up to the archiver's last fetch.
    """

    detected_ms: int
    generation: int  # the archive generation the lost records belonged to
    old_epoch: str | None
    new_epoch: str | None
    ranges: dict[int, tuple[int, int]]

    @property
    def records(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges.values())

    def describe(self) -> str:
        where = ", ".join(f"p{p} offsets {a}..{b}" for p, (a, b) in sorted(self.ranges.items()))
        return f"{self.records} acknowledged records lost with the old log ({where})"


@dataclass(frozen=True, slots=True)
class LossReport:
    """Every loss the archiver detected under one archive directory (``status`` shows it)."""

    incidents: tuple[LossIncident, ...] = ()

    @property
    def records(self) -> int:
        return sum(i.records for i in self.incidents)

    def as_dict(self) -> dict[str, object]:
        return {
            "records": self.records,
            "incidents": [
                {
                    "detected_ms": i.detected_ms,
                    "generation": i.generation,
                    "old_epoch": i.old_epoch,
                    "new_epoch": i.new_epoch,
                    "records": i.records,
                    "ranges": {str(p): list(r) for p, r in sorted(i.ranges.items())},
                }
                for i in self.incidents
            ],
        }


def lost_ranges(
    archived_next: dict[int, int], seen_hw: dict[int, int]
) -> dict[int, tuple[int, int]]:
    """Pure: per partition, offsets the old log had (up to its seen high watermark) past
    what is archived."""
    return {
        p: (archived_next.get(p, 0), hw - 1)
        for p, hw in sorted(seen_hw.items())
        if hw > archived_next.get(p, 0)
    }


def _write_json(path: Path, data: object) -> None:
    """Atomically replace ``path`` with ``data`` as JSON (fsynced: it must survive a crash)."""
    _make_dirs(path.parent)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def read_loss_report(root: Path) -> LossReport:
    """The losses recorded under archive ``root`` (empty when none); never raises on a
    missing or unreadable file (an unreadable one is reported as a log error)."""
    path = Path(root) / LOG_DIR / "loss.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return LossReport()
    except (OSError, ValueError) as err:
        log.error("archive: cannot read %s: %s", path, err)
        return LossReport()
    incidents = tuple(
        LossIncident(
            int(i["detected_ms"]),
            int(i["generation"]),
            i.get("old_epoch"),
            i.get("new_epoch"),
            {int(p): (int(r[0]), int(r[1])) for p, r in i["ranges"].items()},
        )
        for i in data.get("incidents", [])
    )
    return LossReport(incidents)


def record_loss(root: Path, incident: LossIncident, topic: str = EVENTS) -> LossReport:
    """Append ``incident`` to the loss report, count it, and say it in the log."""
    report = LossReport((*read_loss_report(root).incidents, incident))
    _write_json(Path(root) / LOG_DIR / "loss.json", report.as_dict())
    LOST_RECORDS.labels(topic).inc(incident.records)
    log.error("archive: LOSS: %s; recorded in %s", incident.describe(), Path(root) / LOG_DIR)
    return report


@dataclass
class _LogState:
    """What the archiver knows of the live log, kept on disk so a restart can tell a loss."""

    epoch: str | None = None
    generation: int = 0
    seen_hw: dict[int, int] = field(default_factory=dict)  # confirmed in this epoch
    # where this generation's archiving began: below it the log held records restored from
    # the archive (or already archived), which a lost log does not take with it
    start: dict[int, int] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> _LogState:
        try:
            d = json.loads((root / LOG_DIR / "state.json").read_text())
            hw = {int(p): int(n) for p, n in d.get("seen_hw", {}).items()}
            start = {int(p): int(n) for p, n in d.get("start", {}).items()}
            return cls(d.get("epoch"), int(d.get("generation", 0)), hw, start)
        except (OSError, ValueError, TypeError, AttributeError):
            return cls()

    def save(self, root: Path) -> None:
        _write_json(
            root / LOG_DIR / "state.json",
            {
                "epoch": self.epoch,
                "generation": self.generation,
                "seen_hw": {str(p): n for p, n in sorted(self.seen_hw.items())},
                "start": {str(p): n for p, n in sorted(self.start.items())},
            },
        )


# --- the archiver -------------------------------------------------------------------------


class ArchiveLocked(RuntimeError):
    pass


@contextlib.contextmanager
def archive_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on the archive directory for as long as the archiver runs."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "?"
            raise ArchiveLocked(
                f"{root} is being written by another archiver (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


@dataclass
class ArchiverStats:
    records: int = 0
    invalid: int = 0
    segments: int = 0
    files: int = 0
    generation: int = 0
    positions: dict[int, int] = field(default_factory=dict)  # partition -> next offset
    started: bool = False
    resets: int = 0  # times the log was found reset under the running archiver
    dropped: int = 0  # records of segments dropped because they may mix two logs (re-read)
    processing_errors: int = 0  # admitted events whose row could not be built (in dlq/)
    lost: int = 0  # acknowledged records gone with a log before being read (LossReport)


class Archiver:
    """Consumes a topic and writes it to the archive; see the module docstring.

    One archiver per archive directory (enforced by a lock) reading every partition by
    manual assignment; the consumer group only carries commits, for lag monitoring.

    A broker that restarts under a running archiver (the embedded, in-memory one) is
    noticed in two ways: a partition's high watermark falls below the archiver's position,
    or the check made before each segment is closed fails (every partition's last archived
    record, and the segment's first and last records, must still be in the log byte for
    byte: :meth:`_vouch`). Then it keeps what provably came from the old log, drops a
    segment that may have continued in the new one, and starts the next generation from
    offset 0.
    """

    def __init__(
        self,
        bootstrap: str,
        root: Path,
        *,
        topic: str = EVENTS,
        group_id: str = DEFAULT_GROUP,
        max_segment_bytes: int = 64 << 20,
        max_segment_records: int = 500_000,
        max_segment_age_s: float = 60.0,
        row_group_rows: int = 20_000,
        max_event_bytes: int | None = None,
        poll_ms: int = 200,
        verify_deadline_s: float = 5.0,
        max_partition_fetch_bytes: int = 4 << 20,
        marker_grace_s: float = 10.0,
        log_check_s: float = 0.2,
        compact_every_s: float = 60.0,
        ack_dir: Path | None = None,
    ) -> None:
        self.bootstrap, self.root, self.topic, self.group_id = bootstrap, root, topic, group_id
        self.ack_dir = ack_dir or ack_ledger_dir(root)
        self.max_segment_bytes = max_segment_bytes
        self.max_segment_records = max_segment_records
        self.max_segment_age_s = max_segment_age_s
        self.row_group_rows = row_group_rows
        self.poll_ms = poll_ms
        self.verify_deadline_s = verify_deadline_s
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.marker_grace_s = marker_grace_s
        # how often the log's identity is read while busy; a high watermark seen counts
        # toward a loss report only once the identity was read after it
        self.log_check_s = log_check_s
        self.compact_every_s = compact_every_s  # 0: never merge small files
        self._compaction: asyncio.Future[tuple[int, int]] | None = None
        self._compacted_at = time.monotonic()
        self.codec = EventCodec(max_event_bytes) if max_event_bytes else EventCodec()
        self.stats = ArchiverStats()
        self._open: dict[int, SegmentWriter] = {}
        self._next: dict[int, int] = {}  # partition -> next offset to fetch
        # partition -> (offset, bytes) of the last archived record: the anchors that tell
        # whether the log is still the one this generation archived
        self._anchors: dict[int, tuple[int, bytes]] = {}
        self._reset = False
        # the live log's identity and how far it reached (streams/log_identity.py)
        self.log_watch: LogWatch | None = None
        self._state = _LogState()
        self._state_dirty = False
        self._pending_hw: dict[int, int] = {}  # high watermarks not yet confirmed same-log
        self._fetched_at: dict[int, float] = {}  # partition -> last fetch that gave records
        self._archived_next: dict[int, int] = {}  # partition -> first offset not archived
        self._stopping = False
        self._idle = False

    async def run(self, stop: asyncio.Event) -> ArchiverStats:
        """Archive until ``stop`` is set; open segments are closed (made durable) on the way out."""
        with archive_lock(self.root):
            removed = repair(self.root)
            if removed:
                log.warning("archive: removed %d partial files: %s", len(removed), removed)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=self.max_partition_fetch_bytes,
                # a record (and the high watermark) seen sooner: what a broker crash loses
                # is reported only up to the last high watermark confirmed
                fetch_max_wait_ms=100,
            )
            watch = self.log_watch = LogWatch(
                self.bootstrap, "archiver", interval_s=self.log_check_s
            )
            try:
                await consumer.start()
                await watch.start()
                self._state = _LogState.load(self.root)
                first = True
                while not stop.is_set():
                    await self._settled(stop, grace_s=0.0 if first else self.marker_grace_s)
                    if stop.is_set():
                        break
                    plan = await plan_resume(consumer, self.root, self.topic, watch.marker)
                    log.info("archive: generation %d (%s)", plan.generation, plan.reason)
                    if first:
                        self._loss_since_last_run(plan.generation)
                        first = False
                    self._state.epoch, self._state.generation = watch.epoch, plan.generation
                    self._state.start = dict(plan.start_offsets)
                    self._state.save(self.root)
                    self._archived_next = dict(plan.start_offsets)
                    self._pending_hw.clear()
                    self.stats.generation = plan.generation
                    self._anchors = {
                        p: (off, plan.last_raw[p])
                        for p, off in plan.last_offsets.items()
                        if p in plan.last_raw
                    }
                    self._next = dict(plan.start_offsets)
                    for p, off in plan.start_offsets.items():
                        consumer.seek(TopicPartition(self.topic, p), off)
                        self.stats.positions[p] = off
                    await self._commit_positions(consumer, plan.start_offsets)
                    self.stats.started = True
                    self._reset = False
                    await self._loop(consumer, plan.generation, stop)
                    if not self._reset:
                        break
                    self.stats.resets += 1
                    log.warning("archive: the log was reset under the archiver; new generation")
                    old_epoch = self._state.epoch
                    await watch.accept()
                    self._lost(plan.generation, old_epoch, watch.epoch, self._archived_next)
                    self._state = _LogState(watch.epoch, plan.generation)
            finally:
                if self._compaction is not None:  # a merge in progress finishes (bounded)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(self._compaction), 5)
                for seg in self._open.values():
                    seg.abort()
                self._open.clear()
                if self._state_dirty:
                    with contextlib.suppress(OSError):
                        self._state.save(self.root)
                await watch.stop()
                await close_consumer(consumer)  # a dead broker must not hold the exit
        return self.stats

    async def _commit_positions(
        self, consumer: AIOKafkaConsumer, positions: dict[int, int]
    ) -> None:
        """Mirror where the archive resumes into the group, for lag monitoring only.

        A restored log has no group offsets: without this, a partition that gets no new
        record would show its whole length as the archiver's lag in ``status``.
        """
        if not positions:
            return
        with contextlib.suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(
                consumer.commit(
                    {TopicPartition(self.topic, p): off for p, off in positions.items()}
                ),
                5,
            )

    async def _settled(self, stop: asyncio.Event, grace_s: float) -> None:
        """Wait until the live log has an identity and no restore is writing into it.

        A new log is planned against the archive only once ``agentstream up`` has restored
        it (its marker says so): planning earlier would archive restored records again. A
        log that gets no marker within ``grace_s`` (a broker restarted by hand) gets one
        from the archiver.
        """
        watch = self.log_watch
        assert watch is not None
        give_up_at = time.monotonic() + grace_s
        told = False
        while not stop.is_set():
            try:
                marker = await watch.current()
            except (KafkaError, OSError, TimeoutError) as err:
                log.info("archive: cannot read the log's epoch yet (%r)", err)
                marker = None
            else:
                if marker is not None and not marker.restoring:
                    break
                if marker is None and time.monotonic() >= give_up_at:
                    try:
                        await asyncio.wait_for(ensure_epoch(self.bootstrap), 15)
                    except (KafkaError, OSError, TimeoutError, RuntimeError) as err:
                        log.warning("archive: cannot give the log an epoch marker (%r)", err)
                        break  # no marker on this cluster: archive by content checks alone
                    continue
            if not told:
                told = True
                what = "being restored" if marker is not None else "without an epoch marker yet"
                log.info("archive: the log is %s; waiting before archiving it", what)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        await watch.accept()

    def _maybe_compact(self) -> None:
        """Every ``compact_every_s``, merge small files in a worker thread (:func:`compact`)."""
        if self._compaction is not None and self._compaction.done():
            try:
                merged, deleted = self._compaction.result()
                if merged or deleted:
                    log.info("archive: merged %d small segments, deleted %d files", merged, deleted)
            except Exception as err:  # compaction is an optimisation: never stop archiving
                log.warning("archive: compaction failed: %r", err)
            self._compaction = None
        now = time.monotonic()
        if (
            self.compact_every_s > 0
            and self._compaction is None
            and now - self._compacted_at >= self.compact_every_s
        ):
            self._compacted_at = now
            self._compaction = asyncio.ensure_future(
                asyncio.to_thread(compact, self.root, max_records=100_000)
            )

    @property
    def seen_highwater(self) -> dict[int, int]:
        """Per partition, the highest high watermark of the current log confirmed so far."""
        return dict(self._state.seen_hw)

    def _loss_since_last_run(self, generation: int) -> None:
        """At start: if the log this archive last read is gone, report what it lost."""
        prev = self._state
        assert self.log_watch is not None
        if prev.epoch is None or prev.epoch == self.log_watch.epoch:
            return  # first run, or the same log: nothing went away
        archived = _archived_next_of(self.root, prev.generation)
        for p, first in prev.start.items():  # restored records were never at risk
            archived[p] = max(archived.get(p, 0), first)
        self._lost(prev.generation, prev.epoch, self.log_watch.epoch, archived)
        self._state = _LogState(self.log_watch.epoch, generation)

    def _lost(
        self, generation: int, old: str | None, new: str | None, archived: dict[int, int]
    ) -> None:
        """Report what the log ``old`` had (by its ledger or the high watermarks seen) and
        the archive does not; then drop the ledgers of every log but ``new``."""
        reached = dict(self._state.seen_hw)
        if old is not None:
            for p, end in read_acked(self.ack_dir, old, self.topic).items():
                reached[p] = max(reached.get(p, 0), end)
        ranges = lost_ranges(archived, reached)
        if ranges:
            incident = LossIncident(int(time.time() * 1000), generation, old, new, ranges)
            record_loss(self.root, incident, self.topic)
            self.stats.lost += incident.records
        if new is not None:
            for path in prune_ledgers(self.ack_dir, {new}):
                log.info("archive: ledger of an earlier log accounted for; removed %s", path)

    async def _loop(self, consumer: AIOKafkaConsumer, generation: int, stop: asyncio.Event) -> None:
        while not stop.is_set() and not self._reset:
            batches = await consumer.getmany(timeout_ms=self.poll_ms, max_records=20_000)
            fetched = time.monotonic()
            for tp, records in sorted(batches.items()):
                p = tp.partition
                if records:
                    self._fetched_at[p] = fetched
                seg = self._open.get(p)
                for rec in records:
                    if rec.offset < self._next.get(p, 0):
                        continue  # a fetch that repeats records (Tansu, after a restore)
                    if seg is None:
                        seg = SegmentWriter(self.root, generation, p, self.row_group_rows)
                        self._open[p] = seg
                    # the shared admission rule: what the processor dead-letters goes to dlq/
                    outcome = admit(rec.key, rec.value or b"", self.codec.decode)
                    if isinstance(outcome, InvalidEvent):
                        self.stats.invalid += 1
                    seg.add(rec, outcome)
                    self._next[p] = rec.offset + 1
                    self.stats.records += 1
                    if (
                        seg.bytes >= self.max_segment_bytes
                        or seg.records >= self.max_segment_records
                    ):
                        await self._close(consumer, p)
                        seg = None
            for tp in consumer.assignment():
                hw = consumer.highwater(tp)
                if hw is not None and hw < self._next.get(tp.partition, 0):
                    self._reset = True  # the log is shorter than what we read: a new log
                if hw is not None:
                    self._pending_hw[tp.partition] = max(hw, self._pending_hw.get(tp.partition, 0))
            idle = not any(batches.values())
            await self._check_log(fetched, idle=idle)
            self._maybe_compact()
            if idle and not self._idle:
                held = sum(seg.records for seg in self._open.values())
                log.info(
                    "archive: read everything in the log: %d records read, %d not yet written",
                    self.stats.records,
                    held,
                )
            self._idle = idle
            now = time.monotonic()
            for p, seg in list(self._open.items()):
                if self._reset or now - seg.opened_at >= self.max_segment_age_s:
                    await self._close(consumer, p)
        self._stopping = stop.is_set()
        for p in list(self._open):
            await self._close(consumer, p)

    async def _check_log(self, fetched: float, idle: bool) -> None:
        """Is the log still the one being archived? Confirm the high watermarks seen.

        High watermarks count toward a possible loss only once the log's identity was
        read after them: one read from a new log must not count as the old log's.
        """
        watch = self.log_watch
        if watch is None:
            return
        positions = dict(self._next)
        change = await watch.check(positions, dict(self._pending_hw), force=idle)
        if change is not None:
            self._reset = True
            self._pending_hw.clear()
            return
        # The identity was read after these fetches -- or could not be read because the
        # broker is gone: then the high watermarks fetched since the last read came from
        # the log that just died (a new log would have answered the read, or shown a
        # high watermark below our position, which resets). Counting them is what lets a
        # crash report the acknowledged records the archiver had not fetched yet.
        broker_gone = watch.failed and not self._reset
        if (watch.confirmed_at >= fetched or broker_gone) and self._pending_hw:
            seen = self._state.seen_hw
            for p, hw in self._pending_hw.items():
                if hw > seen.get(p, 0):
                    seen[p] = hw
                    self._state_dirty = True
            self._pending_hw.clear()

    def _same_log_proven(self, partition: int) -> bool:
        """The log's epoch was read, unchanged, after this partition's last fetch."""
        watch = self.log_watch
        return (
            watch is not None
            and watch.marker is not None
            and watch.confirmed_at >= self._fetched_at.get(partition, float("inf"))
        )

    async def _close(self, consumer: AIOKafkaConsumer, partition: int) -> None:
        seg = self._open.pop(partition)
        if seg.first_offset is None or seg.last_offset is None:
            return
        broker_away = self.log_watch is not None and self.log_watch.failed
        if self._same_log_proven(partition):
            keep = True  # no fetches needed: the epoch marker vouches for the whole log
        elif self._stopping and broker_away:
            log.warning(
                "archive: the broker does not answer; keeping p%d o%d..o%d as read",
                partition,
                seg.first_offset,
                seg.last_offset,
            )
            keep = True  # stopping with the broker gone: keep everything read (SIGTERM)
        else:
            keep = await self._vouch(consumer, partition, seg)
        if not keep:
            seg.abort()
            self.stats.dropped += seg.records
            log.error(
                "archive: dropped segment p%d o%d..o%d: it may mix two incarnations of the log",
                partition,
                seg.first_offset,
                seg.last_offset,
            )
            return
        files = await asyncio.to_thread(seg.close)
        self.stats.processing_errors += seg.processing_errors
        self.stats.segments += 1
        self.stats.files += len(files)
        self.stats.positions[partition] = seg.last_offset + 1
        self._archived_next[partition] = seg.last_offset + 1
        self._anchors[partition] = (seg.last_offset, seg.last_raw)
        if self._state_dirty:
            self._state.save(self.root)
            self._state_dirty = False
        if broker_away:
            return  # a commit would wait for a coordinator that is not there
        # durable first, then the commit (it only serves lag monitoring: files are the truth)
        with contextlib.suppress(KafkaError, TimeoutError):
            await asyncio.wait_for(
                consumer.commit({TopicPartition(self.topic, partition): seg.last_offset + 1}), 5
            )

    async def _vouch(self, consumer: AIOKafkaConsumer, partition: int, seg: SegmentWriter) -> bool:
        """May this segment be archived under its generation? Notes a log reset on the way.

        First: is the log still the one this generation archived? Every partition's last
        archived record (the anchors) must still be there, byte for byte. If so, the
        segment's first and last records must be too. If the log was replaced: logs only
        grow and the archiver reads sequentially, so when the new log does not hold the
        segment's last record (or holds other bytes there) everything in the segment came
        from the old log -> keep; otherwise the segment may be (partly) from the new log
        -> drop it (the next generation re-reads it).
        """
        assert seg.first_offset is not None and seg.last_offset is not None
        tp = TopicPartition(self.topic, partition)
        try:
            # the checks fetch from several partitions: put every position back afterwards
            positions = {t: await consumer.position(t) for t in consumer.assignment()}
            try:
                return await self._vouch_at(consumer, tp, seg)
            finally:
                for t, offset in positions.items():
                    consumer.seek(t, offset)
        except (TimeoutError, KafkaError) as err:
            # the broker does not answer: what we hold came from the log we were reading
            log.warning(
                "archive: cannot verify p%d against the log (%s); keeping it", partition, err
            )
            return True

    async def _vouch_at(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, seg: SegmentWriter
    ) -> bool:
        assert seg.first_offset is not None and seg.last_offset is not None
        deadline = self.verify_deadline_s

        async def holds(t: TopicPartition, offset: int, raw: bytes) -> bool:
            rec = await fetch_record(consumer, t, offset, deadline)
            return rec is not None and rec.value == raw

        same_log = True
        for p, (offset, raw) in sorted(self._anchors.items()):
            anchor_tp = tp if p == tp.partition else TopicPartition(self.topic, p)
            if not await holds(anchor_tp, offset, raw):
                same_log = False
                break
        if same_log:
            same_log = await holds(tp, seg.first_offset, seg.first_raw)
        last_there = await holds(tp, seg.last_offset, seg.last_raw)
        if same_log and last_there:
            return True
        self._reset = True
        return not last_there


def _archived_next_of(root: Path, generation: int) -> dict[int, int]:
    """Per partition, the first offset of ``generation`` not in a complete segment."""
    out: dict[int, int] = {}
    for s in complete_segments(root):
        if s.generation == generation:
            out[s.partition] = max(out.get(s.partition, 0), s.last_offset + 1)
    return out


async def run_archiver(
    bootstrap: str, root: Path, stop: asyncio.Event, **options: object
) -> ArchiverStats:
    return await Archiver(bootstrap, root, **options).run(stop)  # type: ignore[arg-type]
