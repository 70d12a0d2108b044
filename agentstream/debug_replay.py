"""Step-by-step replay of recorded history, and checking the reducer against it.

The core is pure and works on events already read (``(LogRecord, Event)`` pairs in log
order): :func:`build_timeline` re-runs the reducer over *all* of an agent's history and
keeps, for every event that matches the filter, the agent's state right after it, so the
state shown is exactly what the pipeline computes (a run's first step already carries
everything the agent did before the run). :func:`verify` folds history with a given
reducer and compares with the states the processor recorded on ``agent-state``.

The terminal part (:func:`run_interactive`) renders one step at a time with rich and reads
single keys: from the terminal in raw mode, or one character at a time from a pipe, which
is how it is driven in tests and scripts (``printf 'nnfq' | agentstream replay debug ...``).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import select
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import msgspec
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from schemas import payloads as p
from schemas.derived import Episode, Violation
from schemas.envelope import Event
from schemas.errors import InvalidEvent
from schemas.state import AgentState
from streams.log_reader import LogRecord
from streams.reducer import (
    DEFAULT_CONFIG,
    Derived,
    ReducerConfig,
    advance,
    copy_state,
    initial_state,
)

Reducer = Callable[[AgentState, Event, ReducerConfig, list[Derived]], bool]

# --- filtering ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineFilter:
    """Which events become steps. Every given criterion must hold.

    ``types`` entries match a wire type (``agent.act.completed.v2``), a type without its
    version (``agent.act.completed``), a category (``think``, ``act``, ``learn``,
    ``lifecycle``) or a short name (``completed``, ``thought``, ``run_finished``).
    Times are event times; ``to_time`` is exclusive.
    """

    run_id: str | None = None
    agent_id: str | None = None
    from_time: datetime | None = None
    to_time: datetime | None = None
    types: tuple[str, ...] = ()

    def type_matches(self, wire: str) -> bool:
        if not self.types:
            return True
        base = wire.rsplit(".v", 1)[0]
        parts = base.split(".")
        return any(t in (wire, base, parts[1], parts[-1]) for t in self.types)

    def matches(self, event: Event) -> bool:
        if self.run_id is not None and event.runid != self.run_id:
            return False
        if self.agent_id is not None and event.agentid != self.agent_id:
            return False
        if self.from_time is not None and event.time < self.from_time:
            return False
        if self.to_time is not None and event.time >= self.to_time:
            return False
        return self.type_matches(event.type)


def is_failure(event: Event, derived: Sequence[Derived]) -> bool:
    """What "jump to the next failure" stops at: a failed call or run, or a violation."""
    data = event.data
    if isinstance(data, p.ActionCompleted) and data.status == "error":
        return True
    if isinstance(data, p.RunFinished) and data.status != "succeeded":
        return True
    return any(isinstance(d, Violation) for d in derived)


# --- the timeline ---------------------------------------------------------------------------


def merge_partitions(
    pairs: Iterable[tuple[LogRecord, Event]],
) -> list[tuple[LogRecord, Event]]:
    """One sequence from records read partition by partition: by log time (generation
    first), never reordering a partition (so each agent stays in log order)."""
    runs: dict[tuple[int, int], list[tuple[LogRecord, Event]]] = {}
    for rec, event in pairs:
        runs.setdefault((rec.generation, rec.partition), []).append((rec, event))
    return list(
        heapq.merge(
            *(runs[k] for k in sorted(runs)),
            key=lambda pair: (pair[0].generation, pair[0].timestamp_ms),
        )
    )


async def read_history(
    bootstrap: str,
    source: str,
    archive_root: Path | None,
    agent: str | None = None,
    agents: Collection[str] | None = None,
    bounds: Mapping[int, tuple[int, int]] | None = None,
) -> list[tuple[LogRecord, Event]]:
    """Every valid event of ``source`` (``kafka`` or ``archive``) with its record, merged
    by :func:`merge_partitions`. ``agent`` reads only the Kafka partition its key maps to.
    ``agents`` keeps only those agents' events, skipping the others before decoding: an
    agent's state depends on its own events only, so their steps are the same.
    ``bounds`` (Kafka only) reads partition -> [first, end) offsets and no other partition:
    from the first event of the agents asked about to just after the last event needed,
    the same steps for a fraction of the log.
    """
    import pyarrow.compute as pc

    from agentstream.rebuild import RebuildOptions, open_sources
    from streams.log_reader import ArchiveLogSource, KafkaLogSource

    keys = None if agents is None else {a.encode() for a in agents}
    if source == "kafka":
        only = agent.encode() if agent else None
        if only is None and keys is not None and len(keys) == 1:
            only = next(iter(keys))
        if bounds is not None:
            sources: list[Any] = [
                KafkaLogSource(
                    bootstrap,
                    start_offsets={p: lo for p, (lo, _) in bounds.items()},
                    end_offsets={p: hi for p, (_, hi) in bounds.items()},
                )
            ]
        else:
            sources = [KafkaLogSource(bootstrap, only_key=only)]
    else:
        opts = RebuildOptions(bootstrap, source, archive_root, switch=False)  # type: ignore[arg-type]
        sources = await open_sources(opts)
        for src in sources:
            if keys is not None and isinstance(src, ArchiveLogSource):
                src.filter_expr = pc.field("log_key").isin(sorted(keys))
    out: list[tuple[LogRecord, Event]] = []
    for src in sources:
        async for batch in src.batches():
            if keys is None:
                out.extend(batch.events())
                continue
            decode = batch.codec.decode
            for rec in batch.records:
                if rec.key in keys:
                    with contextlib.suppress(InvalidEvent):
                        out.append((rec, decode(rec.value)))
    return merge_partitions(out)


@dataclass(frozen=True)
class Step:
    """One matching event, and the state of its agent before and after it."""

    index: int
    record: LogRecord | None
    event: Event
    before: AgentState | None
    after: AgentState
    derived: tuple[Derived, ...]
    failure: bool

    @property
    def changes(self) -> dict[str, tuple[Any, Any]]:
        return state_diff(self.before, self.after)


@dataclass
class Timeline:
    steps: list[Step]
    events_folded: int = 0
    agents: int = 0

    def __len__(self) -> int:
        return len(self.steps)

    def failures(self) -> list[int]:
        return [s.index for s in self.steps if s.failure]


def build_timeline(
    history: Iterable[tuple[LogRecord | None, Event]],
    flt: TimelineFilter,
    config: ReducerConfig = DEFAULT_CONFIG,
    reducer: Reducer = advance,
) -> Timeline:
    """Fold all of ``history`` (log order per agent); keep a step per matching event.

    States kept in steps are never mutated afterwards: before an agent's state is advanced
    in place, it is copied if a step still refers to it.
    """
    states: dict[str, AgentState] = {}
    shared: set[str] = set()  # agents whose current state object belongs to a step
    steps: list[Step] = []
    folded = 0
    for record, event in history:
        folded += 1
        agent = event.agentid
        state = states.get(agent)
        if state is None:
            state = states[agent] = initial_state(event)
            before: AgentState | None = None
        else:
            before = state
        if agent in shared or (before is not None and flt.matches(event)):
            state = states[agent] = copy_state(state)
            shared.discard(agent)
        derived: list[Derived] = []
        reducer(state, event, config, derived)
        if flt.matches(event):
            steps.append(
                Step(
                    len(steps),
                    record,
                    event,
                    before,
                    state,
                    tuple(derived),
                    is_failure(event, derived),
                )
            )
            shared.add(agent)
    return Timeline(steps, folded, len(states))


# --- comparing states -----------------------------------------------------------------------

_builtins = msgspec.to_builtins


def state_diff(old: AgentState | None, new: AgentState | None) -> dict[str, tuple[Any, Any]]:
    """Paths whose values differ (``counts[agent.act.started.v1]``, ``world.recent_success_rate``),
    mapped to (old, new) as plain values; a missing side is None."""
    a = _builtins(old) if old is not None else {}
    b = _builtins(new) if new is not None else {}
    out: dict[str, tuple[Any, Any]] = {}
    _diff("", a, b, out)
    return out


def _diff(path: str, a: Any, b: Any, out: dict[str, tuple[Any, Any]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if not path:
                sub = key
            elif _keyed(path):
                sub = f"{path}[{key}]"
            else:
                sub = f"{path}.{key}"
            if key not in a or key not in b:
                out[sub] = (a.get(key), b.get(key))
            elif a[key] != b[key]:
                _diff(sub, a[key], b[key], out)
        return
    if a != b:
        out[path] = (a, b)


_KEYED = ("counts", "tools", "open_actions", "episodes", "seen")


def _keyed(path: str) -> bool:
    """Dict fields keyed by data (types, tools, ids) get ``[key]``, records get ``.field``."""
    return path in _KEYED


@dataclass
class Divergence:
    """The first recorded state of an agent that the reducer does not reproduce."""

    agent_id: str
    event: Event  # the state was recorded right after this event
    record: LogRecord | None
    differences: dict[str, tuple[Any, Any]]  # path -> (recorded, recomputed)
    last_agreement: str | None  # id of the last event after which both agreed
    snapshots_agreed: int


@dataclass
class VerifyReport:
    events: int = 0
    snapshots: int = 0  # recorded states compared
    unmatched: int = 0  # recorded states after an event the history does not hold
    agents: dict[str, int] = field(default_factory=dict)  # agent -> snapshots that agreed
    divergences: dict[str, Divergence] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.divergences


def verify(
    history: Iterable[tuple[LogRecord | None, Event]],
    recorded: dict[str, list[AgentState]],
    config: ReducerConfig = DEFAULT_CONFIG,
    reducer: Reducer = advance,
    run_id: str | None = None,
) -> VerifyReport:
    """Fold history with ``reducer``; wherever a state was recorded (right after the event
    named by its ``last_event_id``), the recomputed state must be equal, field by field.

    ``recorded`` holds every state published per agent, in log order. With ``run_id`` only
    states recorded after events of that run are compared (the fold still covers all).
    """
    at: dict[str, dict[str, AgentState]] = {}
    for agent, snaps in recorded.items():
        for s in snaps:
            if s.last_event_id:
                at.setdefault(agent, {})[s.last_event_id] = s  # the latest one for that event
    report = VerifyReport()
    pending = {a: set(ids) for a, ids in at.items()}
    last_ok: dict[str, str | None] = {}
    states: dict[str, AgentState] = {}
    for record, event in history:
        report.events += 1
        agent = event.agentid
        state = states.get(agent)
        if state is None:
            state = states[agent] = initial_state(event)
        reducer(state, event, config, [])
        snaps = at.get(agent)
        if not snaps or event.id not in snaps or agent in report.divergences:
            continue
        pending[agent].discard(event.id)
        if run_id is not None and event.runid != run_id:
            continue
        want = snaps[event.id]
        report.snapshots += 1
        if state == want:
            report.agents[agent] = report.agents.get(agent, 0) + 1
            last_ok[agent] = event.id
            continue
        report.divergences[agent] = Divergence(
            agent,
            event,
            record,
            state_diff(want, state),
            last_ok.get(agent),
            report.agents.get(agent, 0),
        )
    report.unmatched = sum(len(v) for a, v in pending.items() if a not in report.divergences)
    return report


# --- JSON -------------------------------------------------------------------------------------


def step_json(step: Step) -> dict[str, Any]:
    rec = step.record
    return {
        "index": step.index,
        "position": None
        if rec is None
        else {"generation": rec.generation, "partition": rec.partition, "offset": rec.offset},
        "event": _builtins(step.event) | {"type": step.event.type},
        "state": _builtins(step.after),
        "changes": {k: {"before": a, "after": b} for k, (a, b) in step.changes.items()},
        "derived": [
            {"kind": "violation" if isinstance(d, Violation) else "episode", **_builtins(d)}
            for d in step.derived
        ],
        "failure": step.failure,
    }


def timeline_json(timeline: Timeline) -> dict[str, Any]:
    return {
        "steps": [step_json(s) for s in timeline.steps],
        "events_folded": timeline.events_folded,
        "agents": timeline.agents,
    }


def divergence_json(d: Divergence) -> dict[str, Any]:
    rec = d.record
    return {
        "agent_id": d.agent_id,
        "event_id": d.event.id,
        "event_type": d.event.type,
        "event_time": d.event.time.isoformat(),
        "position": None if rec is None else {"partition": rec.partition, "offset": rec.offset},
        "last_agreement": d.last_agreement,
        "snapshots_agreed": d.snapshots_agreed,
        "differences": {k: {"recorded": a, "recomputed": b} for k, (a, b) in d.differences.items()},
    }


# --- navigation (pure) ------------------------------------------------------------------------


class Stepper:
    """Where the viewer is in a timeline, and where each command takes it."""

    def __init__(self, timeline: Timeline, speed: float = 2.0) -> None:
        self.timeline = timeline
        self.pos = 0
        self.speed = speed  # steps per second while playing
        self.playing = False
        self.message = ""

    @property
    def step(self) -> Step | None:
        return self.timeline.steps[self.pos] if self.timeline.steps else None

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.timeline) - 1

    def next(self) -> None:
        if self.at_end:
            self.playing = False
            self.message = "end of the timeline"
        else:
            self.pos += 1

    def back(self) -> None:
        if self.pos == 0:
            self.message = "start of the timeline"
        else:
            self.pos -= 1

    def first(self) -> None:
        self.pos = 0

    def last(self) -> None:
        self.pos = max(0, len(self.timeline) - 1)

    def next_failure(self) -> None:
        later = [i for i in self.timeline.failures() if i > self.pos]
        if later:
            self.pos = later[0]
        else:
            self.message = "no failure after this step"

    def prev_failure(self) -> None:
        earlier = [i for i in self.timeline.failures() if i < self.pos]
        if earlier:
            self.pos = earlier[-1]
        else:
            self.message = "no failure before this step"

    def faster(self) -> None:
        self.speed = min(self.speed * 2, 64.0)

    def slower(self) -> None:
        self.speed = max(self.speed / 2, 0.25)

    def help(self) -> None:
        self.message = HELP

    def toggle_play(self) -> None:
        self.playing = not self.playing and not self.at_end

    def handle(self, key: str) -> bool:
        """Apply one key; False means quit."""
        self.message = ""
        if key in ("q", "Q", "\x03", "\x04", "eof"):
            return False
        action = KEYMAP.get(key)
        if action is None:
            self.message = f"unknown key {key!r} (h for help)"
            return True
        if action != "toggle_play":
            self.playing = False
        getattr(self, action)()
        return True


KEYMAP: dict[str, str] = {
    "n": "next",
    " ": "next",
    "right": "next",
    "j": "next",
    "b": "back",
    "p": "back",
    "left": "back",
    "k": "back",
    "f": "next_failure",
    "F": "prev_failure",
    "g": "first",
    "home": "first",
    "G": "last",
    "end": "last",
    "c": "toggle_play",
    "+": "faster",
    "-": "slower",
    "h": "help",
    "?": "help",
}

HELP = (
    "n/space/→ next · b/← back · f next failure · F previous failure · g first · G last · "
    "c continue/pause · +/- speed · q quit"
)


# --- rendering --------------------------------------------------------------------------------

_HIDDEN_STATE = {"seen", "context", "episodes"}  # large; summarised by size


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_step(stepper: Stepper) -> Group:
    step = stepper.step
    tl = stepper.timeline
    if step is None:
        return Group(Text("no matching events"))
    e = step.event
    rec = step.record
    where = "" if rec is None else f"  p{rec.partition}@{rec.offset}"
    flag = "  [bold red]FAILURE[/]" if step.failure else ""
    header = Text.from_markup(
        f"[bold]step {step.index + 1}/{len(tl)}[/]  {e.time.isoformat()}  "
        f"[cyan]{e.agentid}[/]  [magenta]{e.type}[/]{where}{flag}"
    )
    ev = Table.grid(padding=(0, 1))
    ev.add_column(style="dim")
    ev.add_column()
    for name in ("id", "runid", "taskid", "subject", "causes"):
        value = getattr(e, name)
        if value:
            ev.add_row(name, _short(list(value) if name == "causes" else value))
    for key, value in _builtins(e.data).items():
        ev.add_row(f"data.{key}", _short(value))
    changes = step.changes
    st = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    st.add_column("state after")
    st.add_column("value")
    st.add_column("before", style="dim")
    after = _builtins(step.after)
    for key, value in after.items():
        if key in _HIDDEN_STATE:
            changed = any(k == key or k.startswith(f"{key}[") for k in changes)
            shown = f"{len(value)} entries"
        else:
            changed = any(k == key or k.startswith((f"{key}[", f"{key}.")) for k in changes)
            shown = _short(value, 100)
        if value in (None, {}, [], "", 0) and not changed:
            continue
        before = ""
        if changed and key not in _HIDDEN_STATE:
            old = _builtins(step.before).get(key) if step.before is not None else None
            before = _short(old, 60)
        st.add_row(
            Text(key, style="bold yellow" if changed else ""),
            Text(shown, style="yellow" if changed else ""),
            before,
        )
    parts: list[Any] = [
        header,
        Panel(ev, title="event", border_style="blue"),
        Panel(st, title=f"state of {e.agentid}", border_style="green"),
    ]
    if step.derived:
        lines = []
        for d in step.derived:
            if isinstance(d, Violation):
                lines.append(f"[red]violation[/] {d.category.value}: {_short(d.detail or '', 100)}")
            elif isinstance(d, Episode):
                lines.append(f"[green]episode[/] r{d.revision} {d.tool} → {d.outcome}")
        parts.append(Panel(Text.from_markup("\n".join(lines)), title="derived"))
    status = "playing" if stepper.playing else "paused"
    footer = f"[dim]{status} at {stepper.speed:g} steps/s · h help · q quit[/]"
    if stepper.message:
        footer = f"[yellow]{stepper.message}[/]  " + footer
    parts.append(Text.from_markup(footer))
    return Group(*parts)


# --- keys and the loop ------------------------------------------------------------------------


class KeySource(Protocol):
    def get(self, timeout: float | None) -> str | None:
        """The next key (``right``, ``left``, a character, ``eof``), or None on timeout."""
        ...


class StreamKeys:
    """Keys from a non-terminal stream, one character each (newlines are ignored)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def get(self, timeout: float | None) -> str | None:
        if timeout is not None:
            with contextlib.suppress(OSError, ValueError):
                ready, _, _ = select.select([self.stream], [], [], timeout)
                if not ready:
                    return None
        while True:
            ch = self.stream.read(1)
            if ch == "":
                return "eof"
            if ch not in "\r\n":
                return ch


class TtyKeys:
    """Single keys from the terminal in raw mode (arrow keys decoded)."""

    _ESC = {"[C": "right", "[D": "left", "[H": "home", "[F": "end", "OC": "right", "OD": "left"}

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def get(self, timeout: float | None) -> str | None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        ch = os.read(self.fd, 1).decode(errors="replace")
        if ch != "\x1b":
            return ch
        ready, _, _ = select.select([self.fd], [], [], 0.05)
        if not ready:
            return "q"  # a lone Escape quits
        seq = os.read(self.fd, 2).decode(errors="replace")
        return self._ESC.get(seq, "")


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    import termios
    import tty

    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def run_interactive(
    stepper: Stepper,
    console: Console,
    keys: KeySource,
    clear: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Show the current step, act on keys, play at the stepper's speed; return steps shown."""
    shown = 0

    def show() -> None:
        nonlocal shown
        if clear:
            console.clear()
        else:
            console.rule()
        console.print(render_step(stepper))
        shown += 1

    show()
    due = clock() + 1 / stepper.speed
    while True:
        timeout = max(0.0, due - clock()) if stepper.playing else None
        key = keys.get(timeout)
        if key is None:  # timer: the next step while playing
            stepper.next()
            due = clock() + 1 / stepper.speed
            show()
            continue
        if not stepper.handle(key):
            return shown
        if stepper.playing:
            due = clock() + 1 / stepper.speed
        show()


def interactive_keys() -> tuple[KeySource, contextlib.AbstractContextManager[None]]:
    """Keys from the terminal (raw mode) when stdin is one, else from stdin as a stream."""
    if sys.stdin.isatty():
        fd = sys.stdin.fileno()
        return TtyKeys(fd), raw_terminal(fd)
    return StreamKeys(sys.stdin), contextlib.nullcontext()
