"""Debug replay and verify: the pure timeline and stepper, the terminal stepper driven
through stdin and through a pseudo-terminal, ``--json``, and ``verify`` catching a
deliberately changed reducer against states the real processor recorded."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
from conftest import Broker
from rich.console import Console

from agentstream.debug_replay import (
    Step,
    Stepper,
    Timeline,
    TimelineFilter,
    build_timeline,
    is_failure,
    run_interactive,
    state_diff,
    step_json,
    verify,
)
from schemas import payloads as p
from schemas.envelope import Event
from schemas.state import AgentState
from streams.processor import build_app, processor_progress
from streams.producer import EventProducer
from streams.reducer import ReducerConfig, advance, fold
from streams.simulator import SimulationConfig, generate

EVENTS = list(generate(SimulationConfig(agents=4, runs=6, seed=3)))


def run_with_failures(events: Sequence[Event]) -> str:
    """The run with the most failed tool calls (the simulator makes some)."""
    fails: dict[str, int] = {}
    for e in events:
        if e.runid and isinstance(e.data, p.ActionCompleted) and e.data.status == "error":
            fails[e.runid] = fails.get(e.runid, 0) + 1
    return max(fails, key=lambda r: fails[r])


RUN = run_with_failures(EVENTS)


def history(events: Sequence[Event]) -> list[tuple[None, Event]]:
    return [(None, e) for e in events]


# --- the timeline -------------------------------------------------------------------------


def test_each_step_shows_the_state_the_pipeline_computes():
    timeline = build_timeline(history(EVENTS), TimelineFilter(run_id=RUN))
    run_events = [e for e in EVENTS if e.runid == RUN]
    assert [s.event.id for s in timeline.steps] == [e.id for e in run_events]
    assert timeline.events_folded == len(EVENTS)
    for step in timeline.steps:
        # independently: fold everything up to and including this event
        upto = EVENTS[: EVENTS.index(step.event) + 1]
        states, derived = fold(upto)
        assert step.after == states[step.event.agentid], step.index
        before = fold(EVENTS[: EVENTS.index(step.event)])[0].get(step.event.agentid)
        assert step.before == before
        _, derived_before = fold(EVENTS[: EVENTS.index(step.event)])
        assert list(step.derived) == derived[len(derived_before) :]
        assert step.failure == is_failure(step.event, step.derived)
    # steps keep their own states: later steps did not mutate earlier ones
    first = timeline.steps[0]
    assert (
        first.after.events_total
        == fold(EVENTS[: EVENTS.index(first.event) + 1])[0][first.event.agentid].events_total
    )
    failures = timeline.failures()
    assert failures, "the chosen run has failed calls"
    for i in failures:
        s = timeline.steps[i]
        assert (
            (isinstance(s.event.data, p.ActionCompleted) and s.event.data.status == "error")
            or (isinstance(s.event.data, p.RunFinished) and s.event.data.status != "succeeded")
            or any(type(d).__name__ == "Violation" for d in s.derived)
        )


def test_filters_by_agent_time_and_type():
    run_events = [e for e in EVENTS if e.runid == RUN]
    agent = run_events[1].agentid
    by_agent = build_timeline(history(EVENTS), TimelineFilter(run_id=RUN, agent_id=agent))
    assert [s.event.id for s in by_agent.steps] == [e.id for e in run_events if e.agentid == agent]
    mid = run_events[len(run_events) // 2].time
    windowed = build_timeline(
        history(EVENTS), TimelineFilter(run_id=RUN, from_time=mid, to_time=mid + timedelta(1))
    )
    assert [s.event.id for s in windowed.steps] == [e.id for e in run_events if e.time >= mid]
    for spec, pred in [
        (("completed",), lambda e: e.type.startswith("agent.act.completed")),
        (("think",), lambda e: e.category == "think"),
        (
            ("agent.learn.lesson.v1", "run_finished"),
            lambda e: e.type.endswith(("lesson.v1", "run_finished.v1")),
        ),
    ]:
        tl = build_timeline(history(EVENTS), TimelineFilter(run_id=RUN, types=spec))
        assert [s.event.id for s in tl.steps] == [e.id for e in run_events if pred(e)], spec
        assert tl.steps, spec


def test_state_diff_names_the_paths_that_changed():
    timeline = build_timeline(history(EVENTS), TimelineFilter(run_id=RUN, types=("completed",)))
    step = timeline.steps[0]
    changes = step.changes
    wire = step.event.type
    assert changes[f"counts[{wire}]"] == (
        step.before.counts.get(wire) if step.before else None,
        step.after.counts[wire],
    )
    assert changes["events_total"] == (step.after.events_total - 1, step.after.events_total)
    assert state_diff(step.after, step.after) == {}
    tool = step.event.data.tool
    assert any(k.startswith(f"tools[{tool}].") or k == f"tools[{tool}]" for k in changes)


# --- the stepper --------------------------------------------------------------------------


def test_stepper_navigation():
    timeline = build_timeline(history(EVENTS), TimelineFilter(run_id=RUN))
    s = Stepper(timeline)
    assert s.pos == 0
    s.back()
    assert s.pos == 0 and "start" in s.message
    s.handle("n")
    s.handle("right")
    assert s.pos == 2
    s.handle("b")
    assert s.pos == 1
    s.handle("f")
    assert s.pos == timeline.failures()[0]
    s.handle("f")
    assert s.pos == timeline.failures()[1]
    s.handle("F")
    assert s.pos == timeline.failures()[0]
    s.handle("G")
    assert s.pos == len(timeline) - 1
    s.handle("n")
    assert s.pos == len(timeline) - 1 and "end" in s.message
    s.handle("g")
    assert s.pos == 0
    speed = s.speed
    s.handle("+")
    assert s.speed == speed * 2
    s.handle("-")
    s.handle("-")
    assert s.speed == speed / 2
    s.handle("x")
    assert "unknown key" in s.message
    assert s.handle("q") is False


class ScriptedKeys:
    """Keys with the times they arrive at (a fake clock makes 'play' deterministic)."""

    def __init__(self, script: list[tuple[float, str]]) -> None:
        self.script = list(script)
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def get(self, timeout: float | None) -> str | None:
        at, key = self.script[0]
        if timeout is not None and self.now + timeout < at:
            self.now += timeout
            return None
        self.now = max(self.now, at)
        self.script.pop(0)
        return key


def test_interactive_loop_plays_at_speed_and_stops_on_keys():
    timeline = build_timeline(history(EVENTS), TimelineFilter(run_id=RUN))
    stepper = Stepper(timeline, speed=4.0)  # a step every 0.25 s while playing
    # n at 0 -> step 2; c at 0.1 plays: steps at 0.35, 0.6, 0.85; c at 1.1 pauses;
    # nothing happens while paused (4 s), b goes back one, q quits
    keys = ScriptedKeys([(0.0, "n"), (0.1, "c"), (1.1, "c"), (5.0, "b"), (6.0, "q")])
    console = Console(record=True, width=120, force_terminal=False)
    shown = run_interactive(stepper, console, keys, clear=False, clock=keys.clock)
    n = len(timeline)
    headers = [
        line.split()[1] for line in console.export_text().splitlines() if line.startswith("step ")
    ]
    assert headers == [f"{k}/{n}" for k in (1, 2, 2, 3, 4, 5, 5, 4)]
    assert shown == 8 and stepper.pos == 3 and not stepper.playing


def expected_headers(timeline: Timeline, keys: str) -> list[str]:
    """The step numbers the viewer shows for a key sequence (the pure stepper decides)."""
    s = Stepper(timeline)
    shown = [s.pos]
    for k in keys:
        if not s.handle(k):
            break
        shown.append(s.pos)
    return [f"{i + 1}/{len(timeline)}" for i in shown]


# --- the command line, against the broker ---------------------------------------------------


async def publish(bootstrap: str, events: Sequence[Event]) -> None:
    async with EventProducer(bootstrap, linger_ms=2) as producer:
        await producer.send_many(events)


def cli_env(kafka: Broker, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AGENTSTREAM_KAFKA_URL": f"kafka://{kafka.bootstrap}",
        "AGENTSTREAM_DATA_DIR": str(tmp_path / "data"),
        "AGENTSTREAM_CONFIG": str(tmp_path / "none.toml"),
        "COLUMNS": "140",
    }


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "replay", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
async def test_debug_cli_json_and_keys_through_stdin(kafka: Broker, tmp_path: Path):
    await publish(kafka.bootstrap, EVENTS)
    env = cli_env(kafka, tmp_path)
    res = await asyncio.to_thread(cli, env, "debug", "--run", RUN, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    expected = build_timeline(history(EVENTS), TimelineFilter(run_id=RUN))
    # partitions are merged by log time: every agent keeps its own order
    got_ids = [s["event"]["id"] for s in doc["steps"]]
    assert sorted(got_ids) == sorted(s.event.id for s in expected.steps)
    times = [s["event"]["time"] for s in doc["steps"]]
    assert times == sorted(times)
    by_id = {s.event.id: s for s in expected.steps}
    for agent in {s.event.agentid for s in expected.steps}:
        mine = [i for i in got_ids if by_id[i].event.agentid == agent]
        assert mine == [s.event.id for s in expected.steps if s.event.agentid == agent]
    for got in doc["steps"]:
        want = by_id[got["event"]["id"]]
        assert msgspec.convert(got["state"], AgentState) == want.after
        assert got["failure"] == want.failure
        assert got["position"]["partition"] >= 0
        assert got == json.loads(json.dumps(step_json(want), default=str)) | {
            "index": got["index"],
            "position": got["position"],
        }
    # the order the viewer shows, for the key test below
    shown_order = Timeline(
        [
            Step(n, s.record, s.event, s.before, s.after, s.derived, s.failure)
            for n, s in enumerate(by_id[i] for i in got_ids)
        ]
    )

    res = await asyncio.to_thread(cli, env, "debug", "--run", RUN, stdin="nnbffGq")
    assert res.returncode == 0, res.stderr
    shown = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("step ")]
    assert shown == expected_headers(shown_order, "nnbffGq")
    assert len(set(shown)) >= 5 and "FAILURE" in res.stdout

    res = await asyncio.to_thread(cli, env, "debug", "--run", "no-such-run")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "no events of run 'no-such-run'" in res.stderr


@pytest.mark.integration
async def test_debug_cli_in_a_terminal_reads_raw_keys(kafka: Broker, tmp_path: Path):
    """The real terminal path: raw mode, arrow keys, through a pseudo-terminal."""
    await publish(kafka.bootstrap, EVENTS)
    env = cli_env(kafka, tmp_path) | {"TERM": "xterm"}
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentstream.cli", "replay", "debug", "--run", RUN],
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    out = b""

    def read_until(done, what: str, timeout: float = 60) -> None:
        nonlocal out
        end = time.monotonic() + timeout
        while not done(out):
            if time.monotonic() > end:
                raise AssertionError(f"waiting for {what}: {out[-1500:]!r}")
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break

    try:
        n = sum(1 for e in EVENTS if e.runid == RUN)
        s1, s2, s3 = (f"step {k}/{n}".encode() for k in (1, 2, 3))
        read_until(lambda o: s1 in o, "the first step")
        os.write(master, b"\x1b[C")  # right arrow
        read_until(lambda o: s2 in o, "step 2")
        os.write(master, b"\x1b[C")
        read_until(lambda o: s3 in o, "step 3")
        os.write(master, b"\x1b[D")  # left arrow: back to step 2
        read_until(lambda o: o.count(s2) >= 2 and o.rfind(s2) > o.find(s3), "step 2 again")
        os.write(master, b"q")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert b"\x1b[" in out  # it drew for a terminal (colours, clearing)


# --- verify ---------------------------------------------------------------------------------


def snapshots(events: Sequence[Event], every: int = 7) -> dict[str, list[AgentState]]:
    """States as a processor records them: after some events, per agent, in order."""
    states: dict[str, AgentState] = {}
    out: dict[str, list[AgentState]] = {}
    from streams.reducer import copy_state, initial_state

    for i, e in enumerate(events):
        st = states.get(e.agentid) or initial_state(e)
        st = copy_state(st)
        advance(st, e, ReducerConfig(), [])
        states[e.agentid] = st
        if i % every == 0 or i == len(events) - 1:
            out.setdefault(e.agentid, []).append(st)
    return out


def changed_reducer(tool: str):
    """The current reducer, 'improved' to count one tool's failures as successes."""

    def reducer(state, event, config, out):
        if (
            isinstance(event.data, p.ActionCompleted)
            and event.data.tool == tool
            and event.data.status == "error"
        ):
            event = msgspec.structs.replace(
                event, data=msgspec.structs.replace(event.data, status="ok")
            )
        return advance(state, event, config, out)

    return reducer


def test_verify_passes_with_the_recording_reducer_and_pins_a_changed_one():
    recorded = snapshots(EVENTS)
    report = verify(history(EVENTS), recorded)
    assert report.ok and report.snapshots == sum(len(v) for v in recorded.values())
    assert report.unmatched == 0

    failing = next(
        e for e in EVENTS if isinstance(e.data, p.ActionCompleted) and e.data.status == "error"
    )
    report = verify(history(EVENTS), recorded, reducer=changed_reducer(failing.data.tool))
    assert not report.ok
    d = report.divergences[failing.agentid]
    # the first recorded state after the first changed event is where it shows
    agent_events = [e for e in EVENTS if e.agentid == failing.agentid]
    recorded_after = {s.last_event_id for s in recorded[failing.agentid]}
    first_changed = next(
        e
        for e in agent_events
        if isinstance(e.data, p.ActionCompleted)
        and e.data.tool == failing.data.tool
        and e.data.status == "error"
    )
    expected_at = next(
        e for e in agent_events[agent_events.index(first_changed) :] if e.id in recorded_after
    )
    assert d.event.id == expected_at.id
    assert (
        d.differences[f"tools[{failing.data.tool}].errors"][0]
        > (d.differences[f"tools[{failing.data.tool}].errors"][1])
    )
    # the error became an ok with the wrong result: errors move to mismatches (state v2)
    tool_keys = f"tools[{failing.data.tool}]"
    assert all(k.startswith((tool_keys, "world.", "run.world.", "runs.")) for k in d.differences)
    # with --run, only states recorded after that run's events are compared
    other = verify(history(EVENTS), recorded, run_id="no-such-run")
    assert other.ok and other.snapshots == 0


@pytest.mark.integration
async def test_verify_against_states_the_processor_recorded(kafka: Broker, tmp_path: Path):
    await publish(kafka.bootstrap, EVENTS)
    stop = asyncio.Event()
    processor = build_app(bootstrap=kafka.bootstrap, data_dir=tmp_path / "proc", use_table=False)
    task = asyncio.create_task(processor.run(stop))
    try:
        deadline = time.monotonic() + 120
        while not (prog := await processor_progress(kafka.bootstrap)).caught_up or sum(
            prog.highwater.values()
        ) < len(EVENTS):
            assert time.monotonic() < deadline, prog
            await asyncio.sleep(0.3)
    finally:
        stop.set()
        await task
    env = cli_env(kafka, tmp_path)
    res = await asyncio.to_thread(cli, env, "verify", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] and doc["snapshots"] >= len({e.agentid for e in EVENTS})

    # the same recorded history, checked in-process with a deliberately changed reducer
    from agentstream.commands.replay import _recorded_states
    from streams.log_reader import KafkaLogSource

    recorded = await _recorded_states(kafka.bootstrap)
    events = []
    async for batch in KafkaLogSource(kafka.bootstrap).batches():
        events.extend(batch.events())
    failing = next(
        e for _, e in events if isinstance(e.data, p.ActionCompleted) and e.data.status == "error"
    )
    report = verify(events, recorded, reducer=changed_reducer(failing.data.tool))
    assert failing.agentid in report.divergences
    d = report.divergences[failing.agentid]
    assert d.record is not None and d.record.partition >= 0
    assert any(k.startswith(f"tools[{failing.data.tool}]") for k in d.differences)
    # and the CLI reports a divergence (exit 1) when the records disagree with the reducer
    wrong = msgspec.structs.replace(recorded[failing.agentid][-1], lessons=12345)
    from schemas.state import encode_state
    from schemas.topics import STATE
    from streams.processor import OutRecord, Publisher

    pub = Publisher(kafka.bootstrap)
    await pub.start()
    await pub.publish([OutRecord(STATE, failing.agentid.encode(), encode_state(wrong))])
    await pub.stop()
    res = await asyncio.to_thread(cli, env, "verify")
    assert res.returncode == 1
    assert f"{failing.agentid} diverges after event {wrong.last_event_id}" in res.stdout
    assert "lessons" in res.stdout and "12345" in res.stdout
