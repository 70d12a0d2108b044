"""Dead letters from ``agent-events-dlq``: reason, detail, path, stage and the original
bytes, shown safely (decoded text when the bytes are UTF-8, hex otherwise).

The topic is read with the log reader the replay uses. Records are kept in memory and each
request reads only what arrived since (per-partition positions); a log that restarted
(high watermark below a kept position, e.g. a fresh embedded broker) is read again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec

from agentstream.ui.backends import Backends, Unavailable

SHOW_BYTES = 16 * 1024  # of the original, per record


def show_bytes(raw: bytes) -> dict[str, Any]:
    """``{"text": ...}`` for UTF-8 without control bytes (tab/newline allowed), else
    ``{"hex": ...}``; never more than SHOW_BYTES of the input."""
    part = raw[:SHOW_BYTES]
    clipped = len(raw) > SHOW_BYTES
    try:
        text = part.decode("utf-8")
        if not any(ord(c) < 32 and c not in "\t\n\r" for c in text):
            return {"encoding": "text", "text": text, "clipped": clipped}
    except UnicodeDecodeError:
        pass
    lines = [
        f"{i:08x}  " + " ".join(f"{b:02x}" for b in part[i : i + 16])
        for i in range(0, len(part), 16)
    ]
    return {"encoding": "hex", "text": "\n".join(lines), "clipped": clipped}


def _entry(partition: int, offset: int, ts: int, value: bytes) -> dict[str, Any]:
    from schemas.deadletter import decode_dead_letter

    try:
        dl = decode_dead_letter(value)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return {
            "dlq_partition": partition,
            "dlq_offset": offset,
            "timestamp_ms": ts,
            "reason": "(not a dead-letter record)",
            "detail": "this DLQ record does not decode as a DeadLetter",
            "original": show_bytes(value),
            "original_size": len(value),
        }
    d = msgspec.to_builtins(dl)
    d.pop("original", None)
    d["key"] = None if dl.key is None else dl.key.decode("utf-8", "replace")
    d["original"] = show_bytes(dl.original)
    d["dlq_partition"] = partition
    d["dlq_offset"] = offset
    d.setdefault("stage", None)
    return d


@dataclass
class DeadLetterCache:
    backends: Backends
    records: list[dict[str, Any]] = field(default_factory=list)
    positions: dict[int, int] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def refresh(self) -> None:
        from aiokafka.errors import KafkaError

        from schemas.topics import DLQ
        from streams.log_reader import KafkaLogSource
        from streams.state_reader import fetch_high_watermarks

        async with self._lock:
            try:
                hw = await fetch_high_watermarks(self.backends.bootstrap, DLQ, timeout_s=10.0)
                if any(hw.get(p, 0) < pos for p, pos in self.positions.items()):
                    self.records, self.positions = [], {}  # a new log: read it again
                if all(hw.get(p, 0) <= self.positions.get(p, 0) for p in hw):
                    return
                src = KafkaLogSource(
                    self.backends.bootstrap,
                    DLQ,
                    start_offsets=dict(self.positions),
                    end_offsets=hw,
                    idle_timeout_s=10.0,
                )
                async for batch in src.batches():
                    for r in batch.records:
                        self.records.append(_entry(r.partition, r.offset, r.timestamp_ms, r.value))
                self.positions = {p: max(self.positions.get(p, 0), e) for p, e in hw.items()}
            except (KafkaError, OSError, LookupError, RuntimeError, TimeoutError) as err:
                raise Unavailable(
                    f"cannot read {DLQ} at {self.backends.bootstrap}: {err}"
                ) from None

    async def page(self, reason: str | None, limit: int, offset: int) -> dict[str, Any]:
        await self.refresh()
        rows = sorted(
            self.records,
            key=lambda r: (r.get("timestamp_ms") or 0, r["dlq_partition"], r["dlq_offset"]),
            reverse=True,
        )
        reasons = Counter(r["reason"] for r in rows)
        if reason:
            rows = [r for r in rows if r["reason"] == reason]
        return {
            "total": len(rows),
            "all": len(self.records),
            "reasons": dict(reasons.most_common()),
            "offset": offset,
            "limit": limit,
            "records": rows[offset : offset + limit],
        }
