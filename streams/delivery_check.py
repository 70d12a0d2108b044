"""Did what a producer counted as delivered survive? (The producer side of loss detection.)

On the embedded broker an acknowledgement means "in memory": until the archiver has
written an event to the Parquet archive, a broker crash loses it, and the producer cannot
tell from the acknowledgement alone. :func:`wait_archived` waits until every event id a
producer had acknowledged is in the archive, while watching the log's identity
(:mod:`streams.log_identity`). It ends in one of three ways:

- every id is archived: nothing can be lost any more;
- the log was replaced (new epoch, or the broker is gone: its log was in memory): the ids
  not in the archive by then are lost, and the caller must say so (``agentstream simulate
  --verify`` exits 1 naming them);
- the deadline passed with the log unchanged: the missing ids are still in the live log,
  not lost; the caller reports them as not yet archived (is the archiver running?).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from aiokafka.errors import KafkaError

from streams.archive import EVENTS_DIR, LOCK_FILE, complete_segments
from streams.log_identity import fetch_marker


@dataclass(frozen=True, slots=True)
class ArchiveCheck:
    """The outcome of :func:`wait_archived`."""

    acknowledged: int
    missing: frozenset[str] = field(default_factory=frozenset)
    log_replaced: bool = False  # the log changed (or the broker went away) while waiting
    detail: str = ""
    seconds: float = 0.0

    @property
    def archived(self) -> int:
        return self.acknowledged - len(self.missing)

    @property
    def lost(self) -> int:
        """Acknowledged ids in neither the log nor the archive."""
        return len(self.missing) if self.log_replaced else 0


class _ArchiveIds:
    """Event ids in archive files written since a moment; each file is read once."""

    def __init__(self, root: Path, since_unix: float) -> None:
        self.root, self.since = root, since_unix - 2.0  # file times are not exact
        self._read: set[str] = set()

    def new_ids(self) -> set[str]:
        found: set[str] = set()
        if not self.root.is_dir():
            return found
        for seg in complete_segments(self.root):
            for f in seg.of_kind(EVENTS_DIR):
                if f.relpath in self._read:
                    continue
                path = self.root / f.relpath
                try:
                    if path.stat().st_mtime < self.since:
                        self._read.add(f.relpath)
                        continue
                    found.update(pq.read_table(path, columns=["event_id"])["event_id"].to_pylist())
                except (OSError, ValueError):
                    continue  # replaced while listing: read it at the next pass
                self._read.add(f.relpath)
        return found


def archiver_pid(root: Path) -> int | None:
    """The pid of the archiver writing ``root``, if one is alive (read from its lock file,
    without taking the lock: probing it could make a starting archiver fail)."""
    try:
        pid = int((Path(root) / LOCK_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"archive" in cmdline else None


async def _epoch(bootstrap: str) -> str | None:
    marker = await asyncio.wait_for(fetch_marker(bootstrap), 5.0)
    return marker.epoch if marker else None


async def wait_archived(
    bootstrap: str,
    root: Path,
    ids: set[str],
    *,
    since_unix: float,
    epoch: str | None,
    timeout_s: float = 60.0,
    poll_s: float = 0.5,
    flush_grace_s: float = 3.0,
) -> ArchiveCheck:
    """Wait until every id in ``ids`` is in the archive at ``root`` (see the module doc).

    ``epoch`` is the log's epoch when producing started; ``since_unix`` when it started
    (only archive files written from then on are read). After the log is found replaced,
    the archiver gets ``flush_grace_s`` to write what it had already read.
    """
    started = time.monotonic()
    missing = set(ids)
    files = _ArchiveIds(root, since_unix)
    failures = 0
    replaced_at: float | None = None
    detail = ""
    while True:
        missing -= await asyncio.to_thread(files.new_ids)
        now = time.monotonic()
        if not missing:
            return ArchiveCheck(
                len(ids), frozenset(), replaced_at is not None, detail, now - started
            )
        if replaced_at is not None:
            if now - replaced_at >= flush_grace_s:
                return ArchiveCheck(len(ids), frozenset(missing), True, detail, now - started)
        else:
            try:
                current = await _epoch(bootstrap)
                failures = 0
                if epoch is not None and current != epoch:
                    replaced_at = now
                    detail = f"the log's epoch changed from {epoch} to {current or 'none'}"
            except (KafkaError, OSError, TimeoutError) as err:
                failures += 1
                if failures >= 3:  # the in-memory log went with its broker
                    replaced_at = now
                    detail = f"the broker at {bootstrap} is gone ({type(err).__name__})"
            if replaced_at is None and now - started >= timeout_s:
                return ArchiveCheck(
                    len(ids),
                    frozenset(missing),
                    False,
                    f"not archived within {timeout_s:g}s; still in the live log",
                    now - started,
                )
        await asyncio.sleep(poll_s)
