"""The chaos suite: faults injected into the running stack, and what they cost.

    python bench/chaos.py                       # full form: 5 kills per part, 3+3 broker kills
    python bench/chaos.py --quick               # one of each scenario (what CI runs)
    python bench/chaos.py --only kill-worker,poison --kills 2

It starts the embedded stack (``agentstream up`` through :class:`agentstream.stack.Stack`:
broker, graph, archiver, worker, projections) in a fresh data directory on its own ports,
then runs scenarios one after another on that stack, each while a producer publishes new
events:

``clean``            no fault: the baseline every recovery time is compared with
``kill-<part>``      kill -9 of the worker, the projections, the archiver or the graph, N
                     times mid-stream (the supervisor restarts them)
``broker``           kill -9 of the broker, N times, the other parts left running
``broker-restart``   kill -9 of the broker and of every consumer, N times
``down-up``          ``down`` then ``up``, then new events
``poison``           a seeded corpus of bad records through the broker

Ground truth never comes from our own consumers. It is the producer's own acknowledged ids,
a raw dump of ``agent-events`` and the Parquet archive. After each scenario the suite waits
until every consumer group has caught up, then reports:

- *produced* / *acknowledged*: events the producer handed over / the broker acknowledged;
- *lost*: acknowledged events in neither the log nor the archive;
- *missing*: events of the log (admitted by the shared rule) absent from a read model
  (ClickHouse ``events``, the graph, the archive);
- *duplicated*: event ids held more often than the log holds them, in any read model;
- *wrong states*: agents whose state on ``agent-state`` (and ``agent_state`` in ClickHouse)
  differs from a clean fold of the admitted log with :func:`streams.reducer.reduce`;
- *leaked*: poison records found in a read model; *crashes*: part restarts not caused by
  the scenario's own kills.

Results go to ``bench/results/chaos.json`` and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pyarrow.dataset as ds
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import RESULTS_DIR, git_sha, machine

from agentstream.processes import free_port
from agentstream.settings import Settings, load_settings
from agentstream.stack import Stack, loss_report
from schemas.admission import admit
from schemas.codec import EventCodec, encode_event
from schemas.deadletter import decode_dead_letter
from schemas.envelope import Event
from schemas.errors import InvalidEvent
from schemas.ids import Uuid7Generator, uuid7_time_ms
from schemas.state import AgentState
from schemas.topics import DLQ, EVENTS
from streams.archive import archive_state
from streams.reducer import reduce
from streams.simulator import SimulationConfig, generate
from streams.state_reader import fetch_high_watermarks, read_states

T = TypeVar("T")
console = Console()
if not console.is_terminal:  # a log file or CI: room for the whole table
    console = Console(width=160)

CONSUMER_PARTS = ("worker", "projections", "archiver")
# a part the supervisor shows as "crash-loop" after several quick restarts is running again
# (it stays in that state until it has run a minute): either counts as up
UP_STATES = ("running", "crash-loop")
KILLABLE = ("worker", "projections", "archiver", "graph")


# --- the corpus of bad records ------------------------------------------------------------------


@dataclass(frozen=True)
class Poison:
    """One bad record: its name, key and bytes, and the id it carries if any."""

    name: str
    key: bytes | None
    value: bytes | None
    tracked_id: str | None  # a fresh id: if it turns up in a read model, the record leaked


def _deep(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def poison_corpus(seed: int, base: list[Event]) -> list[Poison]:
    """A seeded list of records every consumer must reject, each with a fresh event id.

    Built from valid simulator events by textual mutation: what H1's codec hardening and the
    shared admission rule (issue 11) must dead-letter, never crash on, never store.
    """
    rng = random.Random(seed)
    ids = Uuid7Generator(seed)
    out: list[Poison] = []

    def fresh(e: Event) -> tuple[Event, str, bytes]:
        new_id = ids.new(uuid7_time_ms(e.id))
        ev = msgspec.structs.replace(e, id=new_id)
        return ev, new_id, encode_event(ev)

    def mutate(
        name: str, fn: Callable[[str], str], key: bytes | None = None, kind: str = ""
    ) -> None:
        e = rng.choice([b for b in base if kind in type(b).__struct_config__.tag])  # type: ignore[attr-defined]
        ev, new_id, raw = fresh(e)
        text = fn(raw.decode())
        out.append(Poison(name, ev.agentid.encode() if key is None else key, text.encode(), new_id))

    def raw_mutate(name: str, fn: Callable[[bytes], bytes]) -> None:
        e = rng.choice(base)
        ev, new_id, raw = fresh(e)
        out.append(Poison(name, ev.agentid.encode(), fn(raw), new_id))

    # invalid UTF-8 inside a string
    raw_mutate("invalid-utf8", lambda b: b.replace(b'"source":"', b'"source":"\xff\xfe', 1))
    # duplicate keys: the last agentid would win
    mutate("duplicate-key", lambda t: t.replace('"agentid":', '"agentid":"intruder","agentid":', 1))
    # nesting far deeper than any store keeps
    for name, depth in (("deep-nesting", 5000), ("nesting-200", 200)):
        mutate(
            name,
            lambda t, d=depth: t.replace('"arguments":{', '"arguments":{"x":' + _deep(d) + ",", 1),
            kind="started",
        )
    # numbers outside the columns (token counts are UInt32, durations Float64)
    for name, number in (
        ("tokens-2^32", 2**32),
        ("tokens-5e9", 5_000_000_000),
        ("int-2^63", 2**63),
        ("int-2^64", 2**64),
        ("int-huge", 10**40),
        ("tokens-negative", -1),
    ):
        mutate(
            name,
            lambda t, n=number: _renumber(t, "gen_ai.usage.input_tokens", str(n)),
            kind="thought",
        )
    mutate("float-overflow", lambda t: _renumber(t, "duration_ms", "1e309"), kind="completed")
    mutate("float-nan", lambda t: _renumber(t, "duration_ms", "NaN"), kind="completed")
    # times outside what every store holds
    for name, year in (("year-1", "0001"), ("year-9999", "9999")):
        mutate(name, lambda t, y=year: _retime(t, y))
    # versions with non-ASCII digits
    mutate(
        "arabic-version",
        lambda t: t.replace('.v1"', '.v\u0661"', 1).replace('.v2"', '.v\u0662"', 1),
    )
    # the envelope itself broken
    mutate("truncated", lambda t: t[: len(t) // 2])
    mutate("not-an-object", lambda t: "[" + t + "]")
    mutate("unknown-type", lambda t: _retype(t, "agent.think.daydream.v1"))
    mutate("future-version", lambda t: _retype(t, "agent.think.thought.v99"))
    # the admission rule: keyed otherwise than by the agent
    mutate("key-mismatch", lambda t: t, key=b"not-the-agent")
    e = rng.choice(base)
    _, new_id, raw = fresh(e)
    out.append(Poison("null-key", None, raw, new_id))
    out.append(Poison("tombstone", b"nobody", None, None))
    out.append(Poison("empty", b"nobody", b"", None))
    out.append(Poison("whitespace", b"nobody", b"  \n ", None))
    out.append(Poison("binary", b"nobody", bytes(rng.randrange(256) for _ in range(300)), None))
    rng.shuffle(out)
    return out


def _renumber(text: str, name: str, number: str) -> str:
    i = text.find(f'"{name}":')
    if i < 0:
        return text
    j = i + len(name) + 3
    k = j
    while k < len(text) and text[k] in "0123456789.eE+-":
        k += 1
    return text[:j] + number + text[k:]


def _retime(text: str, year: str) -> str:
    i = text.find('"time":"')
    if i < 0:
        return text
    return text[: i + 8] + year + text[i + 12 :]


def _retype(text: str, wire: str) -> str:
    i = text.find('"type":"')
    j = text.find('"', i + 8)
    return text[: i + 8] + wire + text[j:]


# --- bounded waits on aiokafka ----------------------------------------------------------------


async def bounded(awaitable: Awaitable[T], timeout_s: float) -> T:
    """``awaitable``'s result within ``timeout_s``, else TimeoutError, without waiting for
    the cancellation to finish (aiokafka 0.14 calls do not always honour it with the broker
    gone, and ``asyncio.wait_for`` would then wait forever)."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()
        raise TimeoutError(f"no answer in {timeout_s:.0f}s")
    return task.result()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


_abandoned: set[asyncio.Task[Any]] = set()


def _abandon(client: AIOKafkaProducer) -> None:
    """Close a producer in the background; a close that hangs must not hang the suite."""
    task = asyncio.ensure_future(client.stop())
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)


OutRecord = tuple[str | None, bytes | None, bytes | None]  # (event id if tracked, key, value)


# --- the producer: its acks are the ground truth ----------------------------------------------


@dataclass
class ProducerTally:
    produced: int = 0  # distinct events handed to the producer
    acked: set[str] = field(default_factory=set)  # event ids the broker acknowledged
    failed_sends: int = 0  # attempts that errored (retried)
    given_up: set[str] = field(default_factory=set)  # never acknowledged before the deadline
    poison_sent: int = 0


class ChaosProducer:
    """Publishes with acks=all, retrying whatever was not acknowledged (a broker may die).

    A retry after a lost acknowledgement may write a record twice: the log then holds the
    same event twice, which every consumer must treat as one (ids are the identity).
    """

    def __init__(self, bootstrap: str, tally: ProducerTally) -> None:
        self.bootstrap = bootstrap
        self.tally = tally
        self._client: AIOKafkaProducer | None = None

    async def _producer(self) -> AIOKafkaProducer:
        if self._client is None:
            client = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                linger_ms=5,
                request_timeout_ms=5000,
                retry_backoff_ms=200,
                max_request_size=4 << 20,
                enable_idempotence=False,
            )
            try:
                await bounded(client.start(), 15)
            except BaseException:
                _abandon(client)
                raise
            self._client = client
        return self._client

    async def _reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            _abandon(client)

    async def send_all(
        self,
        records: list[OutRecord],
        rate: float,
        *,
        more: Callable[[int], list[OutRecord]] | None = None,
        until: asyncio.Event | None = None,
        drain_s: float = 180.0,
        chunk: int = 50,
    ) -> None:
        """Send ``(id, key, value)`` records at about ``rate``/s until each is acknowledged.

        With ``more`` and ``until``: after ``records``, keep taking new ones from ``more``
        until ``until`` is set (so every fault happens mid-stream), then drain. Whatever is
        not acknowledged ``drain_s`` after that is given up (and counted).
        """
        self.tally.produced += sum(1 for i, _, _ in records if i is not None)
        pending = list(records)
        started = time.monotonic()
        drain_from: float | None = None
        sent = 0
        backoff = 0.2
        while True:
            if not pending and more is not None and until is not None and not until.is_set():
                pending = more(chunk)
                self.tally.produced += sum(1 for i, _, _ in pending if i is not None)
            if not pending:
                return
            if drain_from is None and (until is None or until.is_set()):
                drain_from = time.monotonic()
            if drain_from is not None and time.monotonic() - drain_from > drain_s:
                self.tally.given_up |= {i for i, _, _ in pending if i is not None}
                return
            part, pending = pending[:chunk], pending[chunk:]
            try:
                producer = await self._producer()
                futures = [await bounded(producer.send(EVENTS, v, key=k), 10) for _, k, v in part]
                results = await bounded(asyncio.gather(*futures, return_exceptions=True), 30)
            except (KafkaError, OSError, TimeoutError, asyncio.CancelledError) as err:
                if isinstance(err, asyncio.CancelledError) and _cancelling():
                    raise
                self.tally.failed_sends += len(part)
                pending = part + pending
                if not isinstance(err, KafkaError) or "closed" in str(err).lower():
                    await self._reset()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                started, sent = time.monotonic(), 0  # no burst to "catch up" after an outage
                continue
            retry = []
            for rec, res in zip(part, results, strict=True):
                if isinstance(res, BaseException):
                    retry.append(rec)
                elif rec[0] is not None:
                    self.tally.acked.add(rec[0])
            if retry:
                self.tally.failed_sends += len(retry)
                pending = retry + pending
                await self._reset()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                started, sent = time.monotonic(), 0
                continue
            backoff = 0.2
            sent += len(part)
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)

    async def close(self) -> None:
        await self._reset()


# --- observing the stack -------------------------------------------------------------------------


async def dump_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` up to its fetch high watermark (read with no group)."""
    hw = await fetch_high_watermarks(bootstrap, topic)
    todo = {TopicPartition(topic, p): end for p, end in hw.items() if end > 0}
    if not todo:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    out: dict[tuple[int, int], Any] = {}  # by position: a fetch may repeat records (Tansu)
    try:
        consumer.assign(list(todo))
        await consumer.seek_to_beginning(*todo)
        deadline = time.monotonic() + 120
        while todo and time.monotonic() < deadline:
            for tp, msgs in (await consumer.getmany(*todo, timeout_ms=300)).items():
                for m in msgs:
                    if m.offset < todo.get(tp, 0):
                        out[(m.partition, m.offset)] = m
            for tp in [tp for tp, end in todo.items() if await consumer.position(tp) >= end]:
                del todo[tp]
        if todo:
            raise TimeoutError(f"could not read {topic} to its end: {todo}")
    finally:
        await consumer.stop()
    return [out[k] for k in sorted(out)]


def read_archive(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(event rows, dlq rows) of the whole archive, every generation."""
    out: list[list[dict[str, Any]]] = []
    for kind, cols in (
        ("events", ["event_id", "log_generation", "log_partition", "log_offset"]),
        ("dlq", ["log_generation", "log_partition", "log_offset", "reason", "raw"]),
    ):
        base = root / kind
        if not base.is_dir() or not any(base.rglob("*.parquet")):
            out.append([])
            continue
        table = ds.dataset(base, format="parquet", partitioning="hive").to_table(columns=cols)
        out.append(table.to_pylist())
    return out[0], out[1]


def reported_loss(root: Path) -> int:
    """Records the archiver reports as acknowledged by a broker and lost with it (0 when
    this version of the archiver has no loss report)."""
    from streams import archive

    reader = getattr(archive, "read_loss_report", None)
    if reader is None:
        return 0
    return int(getattr(reader(root), "records", 0))


def clean_fold(events: list[Event]) -> dict[str, AgentState]:
    """Per-agent state of ``events`` (log order) with the pure reducer; a step that raises is
    skipped, as the worker dead-letters it."""
    states: dict[str, AgentState] = {}
    for e in events:
        try:
            states[e.agentid], _ = reduce(states.get(e.agentid), e)
        except Exception:  # the worker dead-letters it: so does the truth
            continue
    return states


@dataclass
class Observation:
    """What the stack holds after a scenario, and how it compares with the truth."""

    log_records: int = 0
    log_events: int = 0  # admitted events in the log (with duplicates)
    lost: int = 0
    lost_ids: list[str] = field(default_factory=list)
    lost_all: set[str] = field(default_factory=set)
    missing: dict[str, int] = field(default_factory=dict)
    duplicated: dict[str, int] = field(default_factory=dict)
    wrong_states: dict[str, int] = field(default_factory=dict)
    leaked: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    archive_dlq: dict[str, int] = field(default_factory=dict)
    loss_report: str | None = None
    loss_reported: int = 0  # records the stack itself reports lost (archive loss report)
    errors: list[str] = field(default_factory=list)
    wrong_agents: list[dict[str, Any]] = field(default_factory=list)


class Harness:
    """One embedded stack in its own data directory and ports, and the checks on it."""

    def __init__(self, data_dir: Path, port_base: int | None, engine: str, projections: list[str]):
        def port(offset: int) -> int:
            return port_base + offset if port_base else free_port()

        env = {
            "AGENTSTREAM_DATA_DIR": str(data_dir),
            "AGENTSTREAM_KAFKA_URL": f"kafka://127.0.0.1:{port(92)}",
            "AGENTSTREAM_GRAPH_URL": f"falkordb://127.0.0.1:{port(79)}",
            "AGENTSTREAM_UI_ENABLED": "false",
            "AGENTSTREAM_OTLP_ENABLED": "false",
            "AGENTSTREAM_METRICS_PORT_BASE": str(port(400) if port_base else 0),
            "AGENTSTREAM_PROJECTIONS": json.dumps(projections),
            "AGENTSTREAM_WORKER_ENGINE": engine,
        }
        self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # parts and helpers started from here load the same settings
        self.settings: Settings = load_settings()
        self.stack = Stack(self.settings)
        self.bootstrap = self.settings.bootstrap_servers
        self.codec = EventCodec(self.settings.max_event_bytes)
        self.graph_name = self.settings.graph_name
        self.last_status: dict[str, Any] = {}

    def restore_env(self) -> None:
        """Put back the caller's environment (a test session goes on after the suite)."""
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    # --- lifecycle ---------------------------------------------------------------------------
    async def up(self) -> None:
        await asyncio.to_thread(self.stack.up)

    async def down(self) -> None:
        await asyncio.to_thread(self.stack.down)

    def status(self) -> dict[str, Any]:
        return {p.part: p for p in self.stack.status(lag=True)}

    def restarts(self) -> dict[str, int]:
        return {p.part: p.restarts for p in self.stack.status(lag=False)}

    async def kill(self, part: str, deadline_s: float = 90.0) -> float:
        """kill -9 the part's process; return seconds until the supervisor has it running."""
        before = await self._running_pid(part, deadline_s)
        os.kill(before, signal.SIGKILL)
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline_s:
            st = await asyncio.to_thread(self.stack.status, False)
            now = next((p for p in st if p.part == part), None)
            if now is not None and now.state in UP_STATES and now.pid not in (None, before):
                return time.monotonic() - t0
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{part} was not running again {deadline_s:.0f}s after kill -9")

    async def _running_pid(self, part: str, deadline_s: float) -> int:
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline_s:
            st = await asyncio.to_thread(self.stack.status, False)
            now = next((p for p in st if p.part == part), None)
            if now is not None and now.state in UP_STATES and now.pid:
                return int(now.pid)
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{part} is not running")

    async def converge(self, timeout_s: float) -> tuple[bool, float]:
        """Wait until every part runs and every consumer group has read the whole log, twice
        in a row with the log unchanged; return (converged, seconds)."""
        t0 = time.monotonic()
        stable = 0
        last_hw: dict[int, int] | None = None
        while time.monotonic() - t0 < timeout_s:
            try:
                parts = await asyncio.to_thread(self.stack.status, True)
                hw = await fetch_high_watermarks(self.bootstrap, EVENTS, timeout_s=5)
            except Exception:  # a part restarting: look again
                stable = 0
                await asyncio.sleep(0.5)
                continue
            wanted = [p for p in parts if p.state not in ("disabled",)]
            ok = (
                all(p.state in UP_STATES for p in wanted)
                and all(
                    p.lag is not None and all(v == 0 for v in p.lag.values())
                    for p in wanted
                    if p.part in ("worker", "projections")
                )
                and self._archived(hw)
            )
            self.last_status = {p.part: (p.state, p.lag) for p in wanted}
            if ok and hw == last_hw:
                stable += 1
                if stable >= 2:
                    return True, time.monotonic() - t0
            else:
                stable = 0
            last_hw = hw
            await asyncio.sleep(0.5)
        return False, time.monotonic() - t0

    def start_worker(self) -> subprocess.Popen[bytes]:
        """A worker the supervisor does not know about: it is left running through faults."""
        log = open(self.settings.data_dir / "logs" / "chaos-extra-worker.log", "ab")  # noqa: SIM115
        return subprocess.Popen(
            [sys.executable, "-m", "agentstream.cli", "worker", "--engine", "aiokafka"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(os.environ),
        )

    @staticmethod
    def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def _archived(self, hw: dict[int, int]) -> bool:
        """Does the archive hold every offset of the log? (Its files are the archiver's truth:
        after a restore it has nothing new to write, so its group commit can lag.)"""
        state = archive_state(self.settings.archive_location)
        return all(state.last_offsets.get(p, -1) >= end - 1 for p, end in hw.items() if end)

    # --- the checks ----------------------------------------------------------------------------
    async def observe(self, tally: ProducerTally, poison: list[Poison]) -> Observation:
        obs = Observation()
        log = await dump_topic(self.bootstrap, EVENTS)
        obs.log_records = len(log)
        events: list[Event] = []
        log_ids: Counter[str] = Counter()
        for m in sorted(log, key=lambda m: (m.partition, m.offset)):
            got = admit(m.key, m.value, self.codec.decode)
            if isinstance(got, InvalidEvent):
                continue
            events.append(got)
            log_ids[got.id] += 1
        obs.log_events = len(events)
        arch_events, arch_dlq = read_archive(self.settings.archive_location)
        arch_ids = Counter(r["event_id"] for r in arch_events)
        obs.archive_dlq = dict(Counter(r["reason"] for r in arch_dlq))

        lost = sorted(tally.acked - set(log_ids) - set(arch_ids))
        obs.lost_all = set(lost)
        obs.lost, obs.lost_ids = len(lost), lost[:20]
        obs.loss_report = loss_report(self.settings)
        obs.loss_reported = reported_loss(self.settings.archive_location)

        models: dict[str, Counter[str]] = {"archive": arch_ids}
        try:
            models["clickhouse"] = self._clickhouse_ids()
        except Exception as err:  # reported, not fatal
            obs.errors.append(f"clickhouse: {err}")
        try:
            models["graph"] = self._graph_ids()
        except Exception as err:
            obs.errors.append(f"graph: {err}")
        for name, ids in models.items():
            obs.missing[name] = sum(1 for i in log_ids if i not in ids)
            if name == "archive":  # a byte copy of the log: as many copies as the log has
                obs.duplicated[name] = sum(max(0, n - log_ids.get(i, 0)) for i, n in ids.items())
            else:
                obs.duplicated[name] = sum(n - 1 for n in ids.values() if n > 1)
            tracked = {p.tracked_id for p in poison if p.tracked_id}
            obs.leaked[name] = sum(1 for i in tracked if i in ids)

        truth = clean_fold(events)
        published = await read_states(self.bootstrap)
        wrong = sorted(a for a in set(truth) | set(published) if truth.get(a) != published.get(a))
        obs.wrong_states["agent-state"] = len(wrong)
        if wrong:  # what each wrong agent looks like: the truth, the reader, the raw topic
            obs.wrong_agents = await self._wrong_agents(wrong, truth, published)
        try:
            obs.wrong_states["clickhouse"] = self._clickhouse_wrong_states(truth)
        except Exception as err:
            obs.errors.append(f"clickhouse agent_state: {err}")
        dlq = [decode_dead_letter(m.value) for m in await dump_topic(self.bootstrap, DLQ)]
        obs.dead_letters = dict(Counter(d.reason for d in dlq))
        return obs

    async def _wrong_agents(
        self, wrong: list[str], truth: dict[str, AgentState], published: dict[str, AgentState]
    ) -> list[dict[str, Any]]:
        """Per wrong agent (first 10): events_total in the clean fold, in what the state
        reader returned, and in the record at the highest offset of ``agent-state`` for that
        key; plus how many state records the topic holds for it and the highest events_total
        any of them carries (a reader artefact and a stale last write look different)."""
        from schemas.state import decode_state
        from schemas.topics import STATE

        by_agent: dict[str, list[tuple[int, int]]] = {}
        for m in await dump_topic(self.bootstrap, STATE):
            if m.key is None or m.value is None:
                continue
            try:
                n = decode_state(m.value).events_total
            except Exception:
                continue
            by_agent.setdefault(m.key.decode("utf-8", "replace"), []).append((m.offset, n))
        out = []
        for a in wrong[:10]:
            recs = sorted(by_agent.get(a, []))
            t, p = truth.get(a), published.get(a)
            out.append(
                {
                    "agent": a,
                    "truth_events_total": t.events_total if t else None,
                    "reader_events_total": p.events_total if p else None,
                    "last_offset_events_total": recs[-1][1] if recs else None,
                    "max_events_total": max(n for _, n in recs) if recs else None,
                    "state_records": len(recs),
                    "last_offsets": recs[-5:],
                }
            )
        return out

    def _reader(self) -> Any:
        from projections.analytics.service import ServiceReader, find_service
        from projections.analytics.store import parse_url

        location = parse_url(self.settings.analytics_url)
        database = location.database or "agentstream"
        # never open the chDB directory here: it belongs to the projections process
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = find_service(self.settings.data_dir / "run", location, database)
            if info is not None:
                return ServiceReader(info)
            time.sleep(0.5)
        raise RuntimeError("the projections process serves no analytics endpoint")

    def _clickhouse_ids(self) -> Counter[str]:
        reader = self._reader()
        try:
            t = reader.query(
                "SELECT toString(event_id) AS id, count() AS n FROM events GROUP BY id"
            )
        finally:
            reader.close()
        return Counter(
            dict(zip(t.column("id").to_pylist(), t.column("n").to_pylist(), strict=True))
        )

    def _clickhouse_wrong_states(self, truth: dict[str, AgentState]) -> int:
        reader = self._reader()
        try:
            t = reader.query(
                "SELECT agent_id, events_total, toString(last_event_id) AS last "
                "FROM agent_state FINAL"
            )
        finally:
            reader.close()
        got = {
            a: (n, last)
            for a, n, last in zip(
                t.column("agent_id").to_pylist(),
                t.column("events_total").to_pylist(),
                t.column("last").to_pylist(),
                strict=True,
            )
        }
        want = {a: (s.events_total, s.last_event_id) for a, s in truth.items()}
        return sum(1 for a in set(got) | set(want) if got.get(a) != want.get(a))

    def _graph_ids(self) -> Counter[str]:
        from projections.graph.falkordb_store import FalkorDBStore

        store = FalkorDBStore(self.settings.graph_host, self.settings.graph_port, self.graph_name)
        try:
            rows = store.read("MATCH (e:Event) WHERE e.type IS NOT NULL RETURN e.id, count(e)")
        finally:
            store.close()
        return Counter({str(i): int(n) for i, n in rows})


# --- scenarios -----------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    name: str
    faults: int
    produced: int
    acknowledged: int
    lost: int
    loss_reported: int  # of them, what the stack itself reported (status, archive log)
    missing: int
    duplicated: int
    wrong_states: int
    leaked: int
    crashes: int
    dead_letters: int
    converged: bool
    fault_errors: int
    seconds: float
    converge_s: float
    recovery_ratio: float | None = None  # converge time / the clean run's
    fault_recovery_s: list[float] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.converged
            and self.fault_errors == 0
            # the one loss allowed: a broker crash's unarchived window, and only if reported
            and (
                self.lost == 0
                or (self.name.startswith("broker") and self.loss_reported >= self.lost)
            )
            and self.missing == 0
            and self.duplicated == 0
            and self.wrong_states == 0
            and self.leaked == 0
            and self.crashes == 0
        )


@dataclass
class FaultLog:
    """What a scenario's faults did: how many, how long each recovery took, which part
    restarts they caused, and what did not go as planned."""

    count: int = 0
    took: list[float] = field(default_factory=list)
    expected: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


Fault = Callable[[FaultLog], Awaitable[None]]


@dataclass
class ChaosConfig:
    seed: int = 11
    kills: int = 5
    broker_restarts: int = 3
    events: int = 1500  # at least, per scenario
    rate: float = 300.0  # events/s, produced for as long as the faults last
    agents: int = 8
    engine: str = "aiokafka"
    projections: tuple[str, ...] = ("analytics", "graph")
    converge_timeout_s: float = 240.0
    restart_deadline_s: float = 180.0  # a killed part must be running again within this
    only: tuple[str, ...] = ()
    prefill: int = 0  # events published (as fast as acknowledged) before the first scenario
    prefill_rate: float = 5000.0


class Chaos:
    """Runs the scenarios on one stack and collects their results."""

    def __init__(self, cfg: ChaosConfig, harness: Harness) -> None:
        self.cfg = cfg
        self.h = harness
        self.rng = random.Random(cfg.seed)
        self.tally = ProducerTally()
        self.producer = ChaosProducer(harness.bootstrap, self.tally)
        self.poison: list[Poison] = []
        total = 10_000_000  # lazily generated: as many as the faults last
        self._events: Iterator[Event] = iter(
            generate(
                SimulationConfig(agents=cfg.agents, runs=None, seed=cfg.seed, max_events=total)
            )
        )
        self.results: list[ScenarioResult] = []
        self.clean_converge_s: float | None = None
        self.lost_so_far: set[str] = set()  # lost in earlier scenarios: not counted again
        self.prefill_s: dict[str, float] = {}
        self.reported_so_far = 0

    def next_events(self, n: int) -> list[OutRecord]:
        out: list[OutRecord] = []
        for e in self._events:
            out.append((e.id, e.agentid.encode(), encode_event(e)))
            if len(out) >= n:
                break
        return out

    async def scenario(
        self,
        name: str,
        faults: Fault,
        n_events: int | None = None,
        left_running: str | None = None,
    ) -> ScenarioResult:
        """Produce new events while ``faults()`` runs; converge; observe.

        ``left_running``: a part started here, outside the supervisor, for the whole
        scenario (``"worker"``: a second worker in the processor's group that nobody
        restarts, so it lives through every fault)."""
        extra = self.h.start_worker() if left_running == "worker" else None
        try:
            return await self._scenario(name, faults, n_events)
        finally:
            if extra is not None:
                self.h.stop_process(extra)

    async def _scenario(self, name: str, faults: Fault, n_events: int | None) -> ScenarioResult:
        console.rule(f"[bold]{name}")
        t0 = time.monotonic()
        produced0, acked0 = self.tally.produced, len(self.tally.acked)
        restarts0 = await asyncio.to_thread(self.h.restarts)
        records = self.next_events(n_events or self.cfg.events)
        until = asyncio.Event()
        send = asyncio.create_task(
            self.producer.send_all(records, self.cfg.rate, more=self.next_events, until=until)
        )
        flog = FaultLog()
        watch = asyncio.create_task(self._watchdog(name, t0))
        try:
            await faults(flog)
        except Exception as err:  # a fault that did not go as planned is a finding, not a crash
            flog.errors.append(f"{type(err).__name__}: {err}")
            console.print(f"[red]{name}: {type(err).__name__}: {err}")
        finally:
            until.set()
            await send
        fault_times, fault_count, expected_restarts = flog.took, flog.count, flog.expected
        converged, converge_s = await self.h.converge(self.cfg.converge_timeout_s)
        try:
            obs = await asyncio.wait_for(self.h.observe(self.tally, self.poison), 300)
        except Exception as err:  # the stack cannot even be read: that is the finding
            obs = Observation(errors=[f"observe: {type(err).__name__}: {err}"])
            flog.errors.append(obs.errors[0])
            converged = False
        watch.cancel()
        # counted once, in the scenario where they went missing: taken before the running
        # totals are updated (they used to be taken after, which made both always 0)
        new_lost = sorted(obs.lost_all - self.lost_so_far)
        new_reported = max(0, obs.loss_reported - self.reported_so_far)
        obs.lost_ids = new_lost[:20]
        self.lost_so_far |= obs.lost_all
        self.reported_so_far = max(self.reported_so_far, obs.loss_reported)
        restarts1 = await asyncio.to_thread(self.h.restarts)
        crashes = sum(
            max(0, restarts1.get(p, 0) - restarts0.get(p, 0) - expected_restarts.get(p, 0))
            for p in restarts1
        )
        res = ScenarioResult(
            name=name,
            faults=fault_count,
            produced=self.tally.produced - produced0,
            acknowledged=len(self.tally.acked) - acked0,
            lost=len(new_lost),
            loss_reported=new_reported,
            missing=sum(obs.missing.values()),
            duplicated=sum(obs.duplicated.values()),
            wrong_states=sum(obs.wrong_states.values()),
            leaked=sum(obs.leaked.values()),
            crashes=crashes,
            dead_letters=sum(obs.dead_letters.values()),
            converged=converged,
            fault_errors=len(flog.errors),
            seconds=time.monotonic() - t0,
            converge_s=converge_s,
            fault_recovery_s=[round(x, 2) for x in fault_times],
            detail={
                "missing": obs.missing,
                "duplicated": obs.duplicated,
                "wrong_states": obs.wrong_states,
                "leaked": obs.leaked,
                "dead_letters_by_reason": obs.dead_letters,
                "archive_dlq_by_reason": obs.archive_dlq,
                "lost_ids": obs.lost_ids,
                "loss_report": obs.loss_report,
                "wrong_agents": obs.wrong_agents,
                "log_records": obs.log_records,
                "log_events": obs.log_events,
                "errors": obs.errors,
                "fault_errors": flog.errors,
                "producer_failed_sends": self.tally.failed_sends,
                "producer_given_up": len(self.tally.given_up),
            },
        )
        if name == "clean":
            self.clean_converge_s = max(converge_s, 0.5)
        elif self.clean_converge_s:
            res.recovery_ratio = converge_s / self.clean_converge_s
        self.results.append(res)
        verdict = "[green]ok" if res.ok else "[red]FAILED"
        console.print(
            f"{name}: {verdict}[/] lost={res.lost} missing={obs.missing} dup={obs.duplicated} "
            f"wrong={obs.wrong_states} leaked={res.leaked} crashes={crashes} "
            f"converged={converged} in {converge_s:.1f}s"
        )
        return res

    async def _watchdog(self, name: str, t0: float) -> None:
        """Every 20 s, one line on where the scenario stands (a stuck fault shows itself)."""
        while True:
            await asyncio.sleep(20)
            console.print(
                f"[dim]{name} +{time.monotonic() - t0:.0f}s: acked {len(self.tally.acked):,} "
                f"of {self.tally.produced:,}, failed sends {self.tally.failed_sends:,}; "
                f"parts {self.h.last_status}"
            )

    async def _pause(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.4, 1.6))

    async def _kill(self, flog: FaultLog, part: str, deadline_s: float | None = None) -> None:
        deadline_s = deadline_s or self.cfg.restart_deadline_s
        flog.count += 1
        flog.expected[part] += 1
        try:
            flog.took.append(await self.h.kill(part, deadline_s))
        except TimeoutError as err:
            flog.errors.append(str(err))
            console.print(f"[red]{err}")

    def kills_of(self, part: str, times: int) -> Fault:
        async def run(flog: FaultLog) -> None:
            for _ in range(times):
                await self._pause()
                await self._kill(flog, part)

        return run

    def broker_kills(self, times: int, with_consumers: bool) -> Fault:
        async def run(flog: FaultLog) -> None:
            for _ in range(times):
                await self._pause()
                await self._kill(flog, "broker")
                if with_consumers:
                    for part in CONSUMER_PARTS:
                        await self._kill(flog, part)
                        flog.count -= 1  # one fault: the broker and its consumers together
                await self.h.converge(60)  # let the restored log settle before the next kill

        return run

    def down_up(self) -> Fault:
        async def run(flog: FaultLog) -> None:
            await self._pause()
            t0 = time.monotonic()
            await self.h.down()
            await self.h.up()
            flog.took.append(time.monotonic() - t0)
            flog.count += 1

        return run

    def poison_corpus(self) -> Fault:
        async def run(flog: FaultLog) -> None:
            base = [e for e in generate(SimulationConfig(agents=3, runs=2, seed=self.cfg.seed + 1))]
            self.poison = poison_corpus(self.cfg.seed, base)
            records = [(None, p.key, p.value) for p in self.poison]
            self.tally.poison_sent += len(records)
            await self.producer.send_all(records, self.cfg.rate)
            flog.count += len(records)

        return run

    def wanted(self, name: str) -> bool:
        return not self.cfg.only or name in self.cfg.only or name == "clean"

    async def prefill(self) -> None:
        """Grow the log to ``cfg.prefill`` events before the scenarios (a long-running stack's
        log), and wait until the stack has caught up with them; not a scenario."""
        n = self.cfg.prefill
        if n <= 0:
            return
        console.rule(f"[bold]prefill: {n:,} events")
        t0 = time.monotonic()
        await self.producer.send_all(
            self.next_events(n), self.cfg.prefill_rate, chunk=500, drain_s=max(180.0, n / 100)
        )
        sent_s = time.monotonic() - t0
        converged, took = await self.h.converge(max(600.0, n / 100))
        self.prefill_s = {"produce_s": round(sent_s, 1), "converge_s": round(took, 1)}
        console.print(
            f"prefill: {n:,} events acknowledged in {sent_s:.1f}s; stack caught up: "
            f"{converged} after {took:.1f}s more"
        )

    async def run(self) -> None:
        cfg = self.cfg
        await self.prefill()
        await self.scenario("clean", _no_fault)
        for part in KILLABLE:
            if self.wanted(f"kill-{part}"):
                await self.scenario(f"kill-{part}", self.kills_of(part, cfg.kills))
        if self.wanted("broker"):
            await self.scenario(
                "broker", self.broker_kills(cfg.broker_restarts, False), left_running="worker"
            )
        if self.wanted("broker-restart"):
            await self.scenario("broker-restart", self.broker_kills(cfg.broker_restarts, True))
        if self.wanted("down-up"):
            await self.scenario("down-up", self.down_up(), left_running="worker")
        if self.wanted("poison"):
            await self.scenario("poison", self.poison_corpus())
        await self.producer.close()


async def _no_fault(flog: FaultLog) -> None:
    return None


# --- report --------------------------------------------------------------------------------------


def print_table(results: list[ScenarioResult]) -> None:
    table = Table(title="chaos: faults injected into the running stack")
    for col in (
        "scenario",
        "faults",
        "produced",
        "acked",
        "lost",
        "reported",
        "missing",
        "dup",
        "wrong",
        "leaked",
        "crashes",
        "DLQ",
        "converge s",
        "vs clean",
        "verdict",
    ):
        table.add_column(col, justify="left" if col in ("scenario", "verdict") else "right")
    for r in results:
        table.add_row(
            r.name,
            str(r.faults),
            f"{r.produced:,}",
            f"{r.acknowledged:,}",
            str(r.lost),
            str(r.loss_reported),
            str(r.missing),
            str(r.duplicated),
            str(r.wrong_states),
            str(r.leaked),
            str(r.crashes),
            str(r.dead_letters),
            f"{r.converge_s:.1f}",
            "-" if r.recovery_ratio is None else f"{r.recovery_ratio:.2f}x",
            "[green]ok" if r.ok else "[red]FAILED",
        )
    console.print(table)


def write_results(cfg: ChaosConfig, results: list[ScenarioResult], name: str = "chaos") -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    doc = {
        "benchmark": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_sha(),
        "machine": machine(),
        "params": {**asdict(cfg), "projections": list(cfg.projections), "only": list(cfg.only)},
        "baseline": "clean: the same production with no fault; recovery_ratio = converge time "
        "/ the clean run's",
        "scenarios": [{**asdict(r), "ok": r.ok} for r in results],
        "all_ok": all(r.ok for r in results),
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


async def run_chaos(
    cfg: ChaosConfig, data_dir: Path, port_base: int | None = None
) -> list[ScenarioResult]:
    """Start a stack in ``data_dir``, run the scenarios, always take the stack down."""
    harness = Harness(data_dir, port_base, cfg.engine, list(cfg.projections))
    chaos = Chaos(cfg, harness)
    try:
        await harness.up()
        await chaos.run()
    finally:
        with contextlib.suppress(Exception):
            await chaos.producer.close()
        try:
            await harness.down()
        finally:
            harness.restore_env()
    return chaos.results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one fault of each kind (CI form)")
    ap.add_argument("--kills", type=int, default=5, help="kill -9 per part (default 5)")
    ap.add_argument("--broker-restarts", type=int, default=3, help="per broker scenario (3)")
    ap.add_argument("--events", type=int, default=1500, help="new events per scenario")
    ap.add_argument("--rate", type=float, default=300.0, help="events/s while faulting")
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--engine", choices=("aiokafka", "faust"), default="aiokafka")
    ap.add_argument("--projections", default="analytics,graph")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument(
        "--prefill", type=int, default=0, help="events in the log before the first scenario"
    )
    ap.add_argument("--prefill-rate", type=float, default=5000.0, help="events/s of the prefill")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a fresh temp dir")
    ap.add_argument("--port-base", type=int, default=None, help="default: free ports")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--results-name", default="chaos")
    return ap.parse_args(argv)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM: unwind through the finally blocks (stack down)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = ChaosConfig(
        seed=args.seed,
        kills=1 if args.quick else args.kills,
        broker_restarts=1 if args.quick else args.broker_restarts,
        events=min(args.events, 600) if args.quick else args.events,
        rate=min(args.rate, 100.0) if args.quick else args.rate,
        agents=args.agents,
        engine=args.engine,
        projections=tuple(p for p in args.projections.split(",") if p),
        only=tuple(p for p in args.only.split(",") if p),
        prefill=args.prefill,
        prefill_rate=args.prefill_rate,
    )
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="agentstream-chaos-"))
    try:
        results = asyncio.run(run_chaos(cfg, data_dir, args.port_base))
    finally:
        if not args.keep and args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    path = write_results(cfg, results, args.results_name)
    print_table(results)
    console.print(f"results: {path}")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
