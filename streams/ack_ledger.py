"""The acknowledgement ledger: how far the broker acknowledged each partition, per log.

Why: the embedded broker keeps the log in memory, so a crash takes with it what was
acknowledged but not yet archived. The archiver learns of records only by fetching them,
so on its own it cannot know what the broker acknowledged after its last fetch. The
writers that *hand out* acknowledgements (the gate, for every outside producer, and the
stack's own ingest such as the OTLP receiver) record each acknowledged end offset here
*before* the producer sees the acknowledgement. After a crash the archiver compares the
ledger of the lost log with what it archived: the difference is exactly what was lost.

Layout: one file per (writer, log epoch) in the ledger directory, ``<writer>@<epoch>.acks``,
memory-mapped, of fixed-size slots ``(topic: 96 bytes, partition: int32, end: int64)``. A
slot is written with plain stores into the mapping: they reach the page cache at once, so
they survive the writer's own kill -9 and the broker's (not a power cut: the log itself is
in memory, and the archive's fsync covers what was archived). The end offset is written
last, so a reader never sees a slot's end without its key.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import struct
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"ASACKS1\n"
SLOTS = 4096
_SLOT = struct.Struct(">96siq")  # topic (utf-8, NUL padded), partition, acked end offset
_END = struct.Struct(">q")
_HEADER = len(MAGIC)
FILE_SIZE = _HEADER + SLOTS * _SLOT.size
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def ledger_file(directory: Path, writer: str, epoch: str) -> Path:
    return Path(directory) / f"{_SAFE.sub('_', writer)}@{_SAFE.sub('_', epoch)}.acks"


class AckLedger:
    """One writer's ledger for one log epoch; :meth:`record` before acknowledging."""

    def __init__(self, directory: Path, writer: str, epoch: str) -> None:
        self.epoch = epoch
        self.path = ledger_file(directory, writer, epoch)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != FILE_SIZE:
                os.ftruncate(fd, FILE_SIZE)
            self._map = mmap.mmap(fd, FILE_SIZE)
        finally:
            os.close(fd)
        if self._map[:_HEADER] != MAGIC:
            self._map[:_HEADER] = MAGIC
        self._slots: dict[tuple[str, int], int] = {}  # key -> slot index
        self._ends: dict[tuple[str, int], int] = {}
        for i, (topic, partition, end) in enumerate(_read_slots(self._map)):
            self._slots[(topic, partition)] = i
            self._ends[(topic, partition)] = end

    def record(self, topic: str, partition: int, end: int) -> None:
        """The broker acknowledged ``topic``/``partition`` up to (not including) ``end``."""
        key = (topic, partition)
        if end <= self._ends.get(key, -1):
            return
        slot = self._slots.get(key)
        if slot is None:
            slot = len(self._slots)
            if slot >= SLOTS:
                log.error("ack ledger %s is full (%d partitions); not recorded", self.path, SLOTS)
                return
            name = topic.encode()[:96]
            _SLOT.pack_into(self._map, _HEADER + slot * _SLOT.size, name, partition, -1)
            self._slots[key] = slot
        _END.pack_into(self._map, _HEADER + slot * _SLOT.size + 100, end)
        self._ends[key] = end

    def acked(self) -> dict[tuple[str, int], int]:
        return dict(self._ends)

    def close(self) -> None:
        with contextlib.suppress(ValueError, BufferError):
            self._map.flush()
            self._map.close()


async def ledger_for_current_log(directory: Path, writer: str, bootstrap: str) -> AckLedger:
    """``writer``'s ledger for the log the broker at ``bootstrap`` holds now (the log gets
    its epoch marker here if nobody wrote one yet: a first start without an archive)."""
    from streams.log_identity import ensure_epoch

    marker = await ensure_epoch(bootstrap)
    return AckLedger(directory, writer, marker.epoch)


def _read_slots(buf: bytes | mmap.mmap) -> list[tuple[str, int, int]]:
    if len(buf) < FILE_SIZE or buf[:_HEADER] != MAGIC:
        return []
    out = []
    for i in range(SLOTS):
        raw, partition, end = _SLOT.unpack_from(buf, _HEADER + i * _SLOT.size)
        if not raw.strip(b"\0"):
            break
        if end >= 0:
            out.append((raw.rstrip(b"\0").decode(errors="replace"), partition, end))
    return out


def read_acked(directory: Path, epoch: str, topic: str) -> dict[int, int]:
    """Per partition, the highest end offset any writer recorded for ``topic`` in the log
    ``epoch`` (empty when there is no ledger)."""
    out: dict[int, int] = {}
    for path in sorted(Path(directory).glob(f"*@{_SAFE.sub('_', epoch)}.acks")):
        try:
            data = path.read_bytes()
        except OSError as err:
            log.error("ack ledger %s unreadable: %s", path, err)
            continue
        for t, partition, end in _read_slots(data):
            if t == topic and end > out.get(partition, -1):
                out[partition] = end
    return out


def prune(directory: Path, keep_epochs: set[str]) -> list[Path]:
    """Remove the ledgers of every log epoch but ``keep_epochs`` (their losses were
    accounted for); returns what was removed."""
    keep = {_SAFE.sub("_", e) for e in keep_epochs}
    removed = []
    for path in Path(directory).glob("*@*.acks"):
        if path.stem.rsplit("@", 1)[1] not in keep:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed
