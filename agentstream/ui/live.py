"""The live view's data: one shared reader per UI process, fanned out to every browser.

:class:`LiveFigures` is the pure part: it folds records of ``agent-events``,
``agent-violations`` and ``agent-events-dlq`` into the figures the page shows (events/s by
type, dead letters per minute by reason, agents active now, recent violations, the tail).
:class:`LiveHub` is the I/O part: one aiokafka consumer (no group, positions from the fetch
high watermark, since Tansu's ListOffsets answer is wrong), one status poll (the same
``Stack.status`` that ``agentstream status`` prints, lag per consumer group included), and
one bounded queue per subscriber. Messages carry a sequence id; a reconnecting client
sends ``Last-Event-ID`` and gets what it missed from a ring buffer, or a ``gap`` message
saying how many it lost. A client too slow for its queue loses the oldest messages and is
told how many (``gap``); it never slows the reader or other clients.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from agentstream.settings import Settings

log = logging.getLogger(__name__)

WINDOW_S = 60  # seconds of per-second counts kept for the rate chart
RATE_S = 5  # events/s is averaged over this many seconds
DLQ_MINUTES = 15  # minutes of dead-letter counts kept
ACTIVE_S = 120.0  # an agent is "active now" if it emitted within this many seconds
TAIL_KEEP = 200  # newest events kept for a new subscriber's first paint
TAIL_BATCH = 200  # at most this many events in one message (the rest are counted)
VIOLATIONS_KEEP = 50
RING = 2000  # messages kept for Last-Event-ID resumption
QUEUE = 500  # messages queued per subscriber before the oldest are dropped
IDLE_S = 30.0  # no subscriber and no snapshot for this long: the status poll pauses


def agent_status(type_: str, tool: str | None) -> str:
    """What an agent is doing, from its latest event's type."""
    kind = type_.rsplit(".", 2)[-2] if type_.count(".") >= 2 else type_
    if kind == "agent_stopped":
        return "stopped"
    if kind == "run_finished":
        return "idle"
    if kind == "started" and ".act." in type_:
        return f"calling {tool}" if tool else "calling a tool"
    if ".think." in type_:
        return "thinking"
    if ".learn." in type_:
        return "learning"
    if kind == "message":
        return "messaging"
    return "working"


@dataclass
class TailFilter:
    """What one subscriber's tail shows (empty: everything)."""

    agent: str = ""
    type: str = ""
    run: str = ""

    def match(self, ev: dict[str, Any]) -> bool:
        return (
            (not self.agent or ev["agent"] == self.agent)
            and (not self.type or self.type in ev["type"])
            and (not self.run or ev["run"] == self.run)
        )


@dataclass
class LiveFigures:
    """Everything the live view shows, folded from log records (pure: no I/O, no clock)."""

    per_second: collections.OrderedDict[int, collections.Counter[str]] = field(
        default_factory=collections.OrderedDict
    )
    dlq_minutes: collections.OrderedDict[int, collections.Counter[str]] = field(
        default_factory=collections.OrderedDict
    )
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    violations: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=VIOLATIONS_KEEP)
    )
    tail: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=TAIL_KEEP)
    )
    totals: collections.Counter[str] = field(default_factory=collections.Counter)

    def add_event(self, raw: bytes, ts_ms: int, now_s: float, where: str) -> dict[str, Any] | None:
        """Fold one ``agent-events`` record; the tail line, or None for an invalid record
        (the worker dead-letters it; here it is counted as ``invalid``)."""
        from schemas.arrow import summarize
        from schemas.codec import decode_event
        from schemas.errors import InvalidEvent

        sec = int(now_s)
        bucket = self.per_second.get(sec)
        if bucket is None:
            bucket = self.per_second[sec] = collections.Counter()
            while self.per_second and next(iter(self.per_second)) < sec - WINDOW_S:
                self.per_second.popitem(last=False)
        try:
            ev = decode_event(raw)
        except (InvalidEvent, UnicodeError, ValueError):
            bucket["(invalid)"] += 1
            self.totals["invalid"] += 1
            return None
        type_ = ev.type
        bucket[type_] += 1
        self.totals["events"] += 1
        tool = getattr(ev.data, "tool", None)
        self.agents[ev.agentid] = {
            "agent": ev.agentid,
            "status": agent_status(type_, tool),
            "type": type_,
            "run": ev.runid,
            "tenant": ev.tenant,
            "last_seen_s": now_s,
            "event": str(ev.id),
        }
        line = {
            "id": str(ev.id),
            "type": type_,
            "agent": ev.agentid,
            "run": ev.runid,
            "tenant": ev.tenant,
            "time": ev.time.isoformat(),
            "summary": summarize(ev.data),
            "ts_ms": ts_ms,
            "at": where,
        }
        self.tail.append(line)
        return line

    def add_violation(self, raw: bytes) -> dict[str, Any] | None:
        from schemas.derived import decode_violation

        try:
            v = decode_violation(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError):
            return None
        row = {
            "id": v.violation_id,
            "category": str(v.category),
            "agent": v.agent_id,
            "run": v.run_id,
            "tenant": v.tenant,
            "time": v.time.isoformat(),
            "detected_by": v.detected_by,
            "tool": v.tool,
            "detail": v.detail,
        }
        self.violations.appendleft(row)
        self.totals["violations"] += 1
        return row

    def add_dead_letter(self, raw: bytes, ts_ms: int) -> None:
        from schemas.deadletter import decode_dead_letter

        try:
            reason = decode_dead_letter(raw).reason
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError):
            reason = "(undecodable DLQ record)"
        minute = ts_ms // 60_000
        bucket = self.dlq_minutes.get(minute)
        if bucket is None:
            bucket = self.dlq_minutes[minute] = collections.Counter()
            # records arrive in log order per partition, so minutes may interleave a little
            self.dlq_minutes = collections.OrderedDict(sorted(self.dlq_minutes.items()))
            while len(self.dlq_minutes) > DLQ_MINUTES:
                self.dlq_minutes.popitem(last=False)
        bucket[reason] += 1
        self.totals["dead_letters"] += 1

    def snapshot(self, now_s: float) -> dict[str, Any]:
        """The figures at ``now_s`` (rates over the last complete seconds)."""
        now = int(now_s)
        recent = [self.per_second.get(s, collections.Counter()) for s in range(now - RATE_S, now)]
        by_type: collections.Counter[str] = collections.Counter()
        for c in recent:
            by_type.update(c)
        series = [
            [s, sum(self.per_second.get(s, collections.Counter()).values())]
            for s in range(now - WINDOW_S, now)
        ]
        active = sorted(
            (
                {**a, "idle_s": round(now_s - a["last_seen_s"], 1)}
                for a in self.agents.values()
                if now_s - a["last_seen_s"] <= ACTIVE_S and a["status"] != "stopped"
            ),
            key=lambda a: a["agent"],
        )
        return {
            "rate": {
                "window_s": RATE_S,
                "total": round(sum(by_type.values()) / RATE_S, 2),
                "by_type": {t: round(n / RATE_S, 2) for t, n in by_type.most_common()},
            },
            "series": series,
            "dead_letters": [
                {"minute": m * 60, "by_reason": dict(c)} for m, c in self.dlq_minutes.items()
            ],
            "agents": active,
            "violations": list(self.violations),
            "totals": dict(self.totals),
        }


@dataclass(eq=False)  # hashed by identity: kept in a set
class Subscriber:
    filter: TailFilter
    queue: asyncio.Queue[tuple[int, str, bytes]] = field(
        default_factory=lambda: asyncio.Queue(QUEUE)
    )
    dropped: int = 0


def sse(seq: int, kind: str, data: bytes) -> bytes:
    """One server-sent event (data is one line of JSON)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, kind.encode(), data)


class LiveHub:
    """One log reader and one status poll for the whole UI process (started by the first
    subscriber, stopped with the app)."""

    def __init__(
        self,
        settings: Settings,
        *,
        status_every_s: float = 2.0,
        stats_every_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.status_every_s = status_every_s
        self.stats_every_s = stats_every_s
        self.clock = clock
        self.figures = LiveFigures()
        self.parts: list[dict[str, Any]] = []
        self.status_error: str | None = None
        self.status_at: float | None = None
        self.log_state: dict[str, Any] = {"ok": False, "detail": "starting"}
        self.subscribers: set[Subscriber] = set()
        self.ring: collections.deque[tuple[int, str, bytes]] = collections.deque(maxlen=RING)
        self.seq = 0
        self.demand_at = clock()  # last subscribe or snapshot (the status poll idles after)
        self._tasks: list[asyncio.Task[None]] = []
        self._enc = msgspec.json.Encoder()

    # --- lifecycle --------------------------------------------------------------------
    def ensure_started(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._read_log(), name="live-log"),
            asyncio.create_task(self._poll_status(), name="live-status"),
            asyncio.create_task(self._tick(), name="live-stats"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []

    # --- fan-out ------------------------------------------------------------------------
    def subscribe(self, flt: TailFilter, last_id: int | None = None) -> Subscriber:
        self.ensure_started()
        self.demand_at = self.clock()
        sub = Subscriber(flt)
        if last_id is not None and last_id < self.seq:
            missed = [m for m in self.ring if m[0] > last_id]
            lost = self.seq - last_id - len(missed)
            if lost > 0:
                self._put(sub, self._message("gap", {"lost": lost, "why": "resumed too late"}))
            for m in missed:
                if m[1] != "events" or self._filtered(m, flt) is not None:
                    self._put(sub, self._filtered(m, flt) or m)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _message(self, kind: str, body: Any) -> tuple[int, str, bytes]:
        self.seq += 1
        return (self.seq, kind, self._enc.encode(body))

    def _filtered(
        self, msg: tuple[int, str, bytes], flt: TailFilter
    ) -> tuple[int, str, bytes] | None:
        if msg[1] != "events" or not (flt.agent or flt.type or flt.run):
            return msg
        body = msgspec.json.decode(msg[2])
        lines = [e for e in body["events"] if flt.match(e)]
        if not lines:
            return None
        return (msg[0], msg[1], self._enc.encode({**body, "events": lines}))

    def _put(self, sub: Subscriber, msg: tuple[int, str, bytes]) -> None:
        while True:
            try:
                sub.queue.put_nowait(msg)
                return
            except asyncio.QueueFull:
                sub.queue.get_nowait()  # drop the oldest: a slow client never blocks the hub
                sub.dropped += 1

    def publish(self, kind: str, body: Any) -> None:
        msg = self._message(kind, body)
        self.ring.append(msg)
        for sub in list(self.subscribers):
            shown = self._filtered(msg, sub.filter)
            if shown is not None:
                self._put(sub, shown)

    def snapshot(self) -> dict[str, Any]:
        now = self.demand_at = self.clock()
        return {
            "ok": True,
            "now": now,
            "seq": self.seq,
            "log": self.log_state,
            "parts": self.parts,
            "status_error": self.status_error,
            "status_at": self.status_at,
            "tail": list(self.figures.tail)[-50:],
            **self.figures.snapshot(now),
        }

    async def stream(
        self, flt: TailFilter, last_id: int | None, heartbeat_s: float
    ) -> AsyncIterator[bytes]:
        """The SSE body for one client: a snapshot first, then messages and heartbeats."""
        sub = self.subscribe(flt, last_id)
        try:
            yield b"retry: 2000\n\n"
            if last_id is None:
                snap = self.snapshot()
                snap["tail"] = [e for e in snap["tail"] if flt.match(e)]
                yield sse(self.seq, "snapshot", self._enc.encode(snap))
            while True:
                try:
                    seq, kind, data = await asyncio.wait_for(sub.queue.get(), heartbeat_s)
                except TimeoutError:
                    yield b": heartbeat\n\n"
                    continue
                if sub.dropped:
                    yield sse(
                        seq, "gap", self._enc.encode({"lost": sub.dropped, "why": "slow client"})
                    )
                    sub.dropped = 0
                yield sse(seq, kind, data)
        finally:
            self.unsubscribe(sub)

    # --- the three loops -------------------------------------------------------------------
    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.stats_every_s)
            if self.subscribers:
                snap = self.snapshot()
                del snap["tail"]
                self.publish("stats", snap)

    async def _poll_status(self) -> None:
        from agentstream.stack import Stack

        stack = Stack(self.settings)
        while True:
            if not self.subscribers and self.clock() - self.demand_at > IDLE_S:
                await asyncio.sleep(self.status_every_s)  # nobody watches: no broker queries
                continue
            try:
                parts = await asyncio.to_thread(stack.status, True)
                sup = await asyncio.to_thread(stack.supervisor_status)
                self.parts = [p.as_dict() for p in ([sup] if sup else []) + parts]
                self.status_error, self.status_at = None, self.clock()
            except Exception as err:  # a courtesy panel: report, never stop the live view
                self.status_error = f"{type(err).__name__}: {err}"
            await asyncio.sleep(self.status_every_s)

    async def _read_log(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.log_state = {"ok": False, "detail": f"{type(err).__name__}: {err}"}
                log.info("live view: log reader: %s (retrying)", err)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _follow(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from schemas.topics import DLQ, EVENTS, VIOLATIONS

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=100,
            request_timeout_ms=10_000,
            max_partition_fetch_bytes=1 << 20,
        )
        await consumer.start()
        try:
            known = await consumer.topics()  # never name a missing topic (Tansu creates it)
            wanted = [t for t in (EVENTS, VIOLATIONS, DLQ) if t in known]
            if EVENTS not in wanted:
                raise LookupError(f"topic {EVENTS} does not exist yet")
            tps = [
                TopicPartition(t, p)
                for t in wanted
                for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            hw: dict[Any, int] = {}
            deadline = time.monotonic() + 15
            while len(hw) < len(tps):
                await consumer.getmany(*tps, timeout_ms=100, max_records=1)
                hw.update({tp: v for tp in tps if (v := consumer.highwater(tp)) is not None})
                if time.monotonic() > deadline:
                    raise TimeoutError("no fetch response from every partition")
            for tp in tps:
                consumer.seek(tp, hw[tp])  # from now on: the live view shows what is new
            self.log_state = {
                "ok": True,
                "detail": f"following {', '.join(wanted)} at {self.settings.bootstrap_servers}",
                "from": {f"{tp.topic}/{tp.partition}": hw[tp] for tp in tps},
            }
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                self._fold(batches, EVENTS, VIOLATIONS)
        finally:
            await consumer.stop()

    def _fold(self, batches: dict[Any, list[Any]], events: str, violations: str) -> None:
        now = self.clock()
        lines: list[dict[str, Any]] = []
        new_violations: list[dict[str, Any]] = []
        for tp, records in batches.items():
            for r in records:
                if r.value is None:
                    continue
                if tp.topic == events:
                    line = self.figures.add_event(
                        r.value, r.timestamp, now, f"{tp.partition}@{r.offset}"
                    )
                    if line is not None:
                        lines.append(line)
                elif tp.topic == violations:
                    row = self.figures.add_violation(r.value)
                    if row is not None:
                        new_violations.append(row)
                else:
                    self.figures.add_dead_letter(r.value, r.timestamp)
        if lines and self.subscribers:
            lines.sort(key=lambda e: e["ts_ms"])
            self.publish(
                "events",
                {"events": lines[-TAIL_BATCH:], "skipped": max(0, len(lines) - TAIL_BATCH)},
            )
        if new_violations and self.subscribers:
            self.publish("violations", {"violations": new_violations})
