"""The pure reducer on plain data: transitions, world model, violations, episodes, dedup."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from schemas import payloads as p
from schemas.derived import Episode, Violation, ViolationCategory, derived_id
from schemas.envelope import Event, new_event
from schemas.ids import Uuid7Generator
from schemas.state import AgentState, AgentStatus, decode_state, encode_state
from streams.reducer import DEFAULT_CONFIG, ReducerConfig, fold, reduce
from streams.simulator import SimulationConfig, generate, is_mismatch

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Agent:
    """Builds one agent's events with increasing times and ids."""

    def __init__(self, agent: str = "a1", run: str | None = "r1", seed: int = 7) -> None:
        self.agent, self.run = agent, run
        self.ids = Uuid7Generator(seed)
        self.t = T0

    def ev(
        self, data: p.Payload, *, dt: float = 1.0, causes: tuple[str, ...] = (), **kw: object
    ) -> Event:
        self.t += timedelta(seconds=dt)
        kw.setdefault("runid", self.run)
        return new_event(
            data,
            id=self.ids.new(int(self.t.timestamp() * 1000)),
            time=self.t,
            agentid=self.agent,
            causes=causes,
            **kw,  # type: ignore[arg-type]
        )

    def thought(self, text: str = "hmm", **kw: object) -> Event:
        data = p.Thought(text=text, model="m1", input_tokens=10, output_tokens=4, cost_usd=0.5)
        return self.ev(data, **kw)

    def decision(self, chosen: str = "search", **kw: object) -> Event:
        return self.ev(p.Decision(chosen=chosen, confidence=0.75, rationale="why not"), **kw)

    def start(self, call: str = "c1", expected: str | None = "found", **kw: object) -> Event:
        data = p.ActionStarted(call_id=call, tool="search", arguments={"q": 1}, expected=expected)
        return self.ev(data, **kw)

    def done(
        self, call: str = "c1", status: str = "ok", actual: str | None = "found", **kw: object
    ) -> Event:
        data = p.ActionCompleted(
            call_id=call, tool="search", status=status, actual=actual, result="r", duration_ms=5
        )
        return self.ev(data, **kw)

    def lesson(self, insight: str = "do x", **kw: object) -> Event:
        return self.ev(p.Lesson(situation="s", action="a", outcome="o", insight=insight), **kw)

    def run_started(self, goal: str = "g", **kw: object) -> Event:
        return self.ev(p.RunStarted(goal=goal), **kw)

    def run_finished(self, status: str = "succeeded", **kw: object) -> Event:
        return self.ev(p.RunFinished(status=status), **kw)  # type: ignore[arg-type]


def run(events: list[Event], config: ReducerConfig = DEFAULT_CONFIG) -> tuple[AgentState, list]:
    states, derived = fold(events, config)
    assert len(states) == 1
    return next(iter(states.values())), derived


def violations(derived: list, category: ViolationCategory | None = None) -> list[Violation]:
    return [
        d
        for d in derived
        if isinstance(d, Violation) and (category is None or d.category == category)
    ]


def episodes(derived: list) -> list[Episode]:
    return [d for d in derived if isinstance(d, Episode)]


# --- lifecycle status ---------------------------------------------------------------------


def test_status_follows_the_lifecycle() -> None:
    a = Agent()
    steps = [
        (a.ev(p.AgentStarted(name="Ada", role="coder", model="m0"), runid=None), "idle"),
        (a.run_started(), "thinking"),
        (a.thought(), "thinking"),
        (a.start(), "acting"),
        (a.thought(), "acting"),  # thinking while a tool call is open is still acting
        (a.done(), "thinking"),
        (a.ev(p.Message(to_agent="b", text="hi")), "thinking"),  # talking changes nothing
        (a.lesson(), "learning"),
        (a.ev(p.Feedback(score=0.5, source="human")), "learning"),
        (a.run_finished("succeeded"), "finished"),
        (a.ev(p.AgentStopped(), runid=None), "finished"),
    ]
    state = None
    for event, status in steps:
        state, _ = reduce(state, event)
        assert state.status == AgentStatus(status), event.type
    assert state is not None
    assert state.stopped
    assert (state.name, state.role, state.model) == ("Ada", "coder", "m0")
    assert state.last_feedback_score == 0.5


@pytest.mark.parametrize(
    ("status", "expected"),
    [("succeeded", "finished"), ("failed", "failed"), ("cancelled", "failed")],
)
def test_run_outcome_sets_the_status(status: str, expected: str) -> None:
    a = Agent()
    state, _ = run([a.run_started(goal="ship"), a.thought(), a.run_finished(status)])
    assert state.status == AgentStatus(expected)
    assert state.run is not None
    assert (state.run.goal, state.run.status, state.run.finished_at) == ("ship", status, a.t)


def test_agent_stopped_while_working_is_idle_and_abandons_open_actions() -> None:
    a = Agent()
    s = a.start()
    stopped = a.ev(p.AgentStopped(reason="killed"), runid=None)
    state, derived = run([a.run_started(), s, stopped])
    assert state.status == AgentStatus.IDLE and state.stopped and not state.open_actions
    (v,) = violations(derived, ViolationCategory.ABANDONED)
    assert v.event_ids == (s.id, stopped.id) and v.detected_by == stopped.id


def test_a_new_run_without_run_started_is_entered_implicitly() -> None:
    a = Agent()
    first = [a.run_started(), a.thought(), a.run_finished()]
    a.run = "r2"
    state, _ = run([*first, a.thought()])
    assert state.run_id == "r2" and state.run is not None
    assert state.run.run_id == "r2" and state.run.goal is None and state.run.status == "running"
    assert state.status == AgentStatus.THINKING
    assert state.run.world.input_tokens == 10  # only r2's thought


# --- counters, world model ------------------------------------------------------------------


def test_counts_tokens_costs_tools_and_last_decision() -> None:
    a = Agent()
    d = a.decision("grep")
    events = [
        a.ev(p.Plan(goal="g", steps=[p.PlanStep(id="1", description="x")]), taskid="t9"),
        a.thought(),
        a.thought(),
        d,
        a.start("c1"),
        a.done("c1"),
        a.start("c2"),
        a.done("c2", status="error", actual=None),
        a.lesson(),
    ]
    state, _ = run(events)
    assert state.counts == {
        "agent.think.plan.v1": 1,
        "agent.think.thought.v1": 2,
        "agent.think.decision.v2": 1,
        "agent.act.started.v1": 2,
        "agent.act.completed.v2": 2,
        "agent.learn.lesson.v1": 1,
    }
    assert state.events_total == 9
    assert state.task_id == "t9"
    w = state.world
    assert (w.input_tokens, w.output_tokens, w.cost_usd) == (20, 8, 1.0)
    assert state.tools["search"].ok == 1 and state.tools["search"].error == 1
    assert state.tools["search"].duration_ms == 10
    assert state.last_decision is not None
    assert (state.last_decision.event_id, state.last_decision.chosen) == (d.id, "grep")
    assert state.lessons == 1
    assert state.first_event_time == d.time == min(e.time for e in events)  # built first
    assert state.last_event_time == events[-1].time
    assert state.last_event_id == events[-1].id


def test_world_model_rolling_success_rate_and_failures_in_a_row() -> None:
    a = Agent()
    events = [a.run_started()]
    outcomes = ["ok", "ok", "error", "error", "wrong", "ok", "error"]
    for i, o in enumerate(outcomes):
        events.append(a.start(f"c{i}", expected="found"))
        if o == "wrong":
            events.append(a.done(f"c{i}", actual="nothing"))
        else:
            events.append(a.done(f"c{i}", status=o, actual="found" if o == "ok" else None))
    state, _ = run(events, ReducerConfig(success_window=4))
    w = state.world
    assert w.outcomes == "FFSF"  # the last 4: error, wrong, ok, error
    assert w.recent_success_rate == 0.25
    assert w.failures_in_a_row == 1
    # one vocabulary: failed = errors + mismatches, successes = actions - failed
    assert (w.actions, w.errors, w.mismatches, w.failed) == (7, 3, 1, 4)
    assert state.run is not None and state.run.world.outcomes == "FFSF"
    rw = state.run.world
    assert (rw.actions, rw.errors, rw.mismatches, rw.failed) == (7, 3, 1, 4)
    t = state.tools["search"]
    assert (t.actions, t.errors, t.mismatches, t.failed) == (7, 3, 1, 4)
    # the version 1 names still read, with their old meaning
    assert (w.actions_ok, w.actions_failed, w.success_rate) == (3, 4, 0.25)
    assert (t.ok, t.error, t.wrong_result) == (4, 3, 1)


def test_run_world_model_starts_fresh_each_run() -> None:
    a = Agent()
    first = [a.run_started(), a.start(), a.done(status="error", actual=None), a.run_finished()]
    a.run = "r2"
    state, _ = run([*first, a.run_started(), a.thought()])
    assert state.world.failures_in_a_row == 1 and state.world.input_tokens == 10
    assert state.run is not None
    assert state.run.world.failures_in_a_row == 0 and state.run.world.outcomes == ""


def test_interleaved_runs_keep_their_own_world_models() -> None:
    a = Agent()
    a.run = "r1"
    r1 = [a.run_started(goal="one"), a.thought("r1 plan"), a.start("c1")]
    a.run = "r2"
    r2 = [a.run_started(goal="two"), a.thought("r2 plan"), a.start("c2")]
    a.run = "r1"
    back = [a.done("c1", status="error", actual=None)]
    a.run = "r2"
    done2 = a.done("c2")
    state, derived = run([*r1, *r2, *back, done2])
    assert set(state.runs) == {"r1", "r2"} and state.run_id == "r2"
    assert state.run == state.runs["r2"] and state.run.goal == "two"
    w1, w2 = state.runs["r1"].world, state.runs["r2"].world
    assert (w1.outcomes, w1.failures_in_a_row, w1.input_tokens) == ("F", 1, 10)
    assert (w2.outcomes, w2.failures_in_a_row, w2.input_tokens) == ("S", 0, 10)
    assert state.world.outcomes == "FS" and state.world.input_tokens == 20
    # each action's situation is the latest think event of its own run
    assert [e.situation for e in episodes(derived)] == ["r1 plan", "r2 plan"]


def test_runs_are_bounded_and_finished_ones_go_first() -> None:
    a = Agent()
    events = []
    for i in range(4):
        a.run = f"r{i}"
        events.append(a.run_started())
        if i in (1, 2):
            events.append(a.run_finished())
    state, _ = run(events, ReducerConfig(run_window=3))
    assert list(state.runs) == ["r0", "r2", "r3"]  # r1 (finished, oldest) was forgotten
    a.run = "r4"
    state, _ = run([*events, a.run_started()], ReducerConfig(run_window=3))
    assert list(state.runs) == ["r0", "r3", "r4"]


def test_last_event_time_is_the_latest_not_the_last() -> None:
    a = Agent()
    e1 = a.thought(dt=10)
    e2 = a.thought(dt=-5)  # arrives later in the log, happened earlier
    state, _ = run([e1, e2])
    assert state.last_event_time == e1.time and state.last_event_id == e2.id
    assert state.first_event_time == e2.time


# --- violations -----------------------------------------------------------------------------


def test_tool_error() -> None:
    a = Agent()
    s, c = a.start(), a.done(status="error", actual=None)
    _, derived = run([s, c])
    (v,) = violations(derived)
    assert v.category == ViolationCategory.TOOL_ERROR
    assert v.event_ids == (s.id, c.id) and v.detected_by == c.id and v.time == c.time
    assert (v.tool, v.call_id, v.expected, v.run_id) == ("search", "c1", "found", "r1")
    assert v.violation_id == derived_id("violation", "tool_error", c.id)


def test_wrong_result_only_when_expected_and_actual_differ() -> None:
    a = Agent()
    s1, c1 = a.start("c1", expected="found"), a.done("c1", actual="nothing")
    s2, c2 = a.start("c2", expected="found"), a.done("c2", actual="found")
    s3, c3 = a.start("c3", expected=None), a.done("c3", actual="anything")
    s4, c4 = a.start("c4", expected="found"), a.done("c4", actual=None)
    _, derived = run([s1, c1, s2, c2, s3, c3, s4, c4])
    (v,) = violations(derived)
    assert v.category == ViolationCategory.WRONG_RESULT
    assert (v.expected, v.actual, v.event_ids) == ("found", "nothing", (s1.id, c1.id))


def test_missing_start() -> None:
    a = Agent()
    c = a.done("ghost", status="error", actual=None)
    state, derived = run([a.thought(), c])
    cats = sorted(v.category.value for v in violations(derived))
    assert cats == ["missing_start", "tool_error"]
    missing = violations(derived, ViolationCategory.MISSING_START)[0]
    assert missing.event_ids == (c.id,) and missing.call_id == "ghost"
    assert not episodes(derived)  # no start: nothing to make an episode of
    assert (state.world.actions, state.world.errors, state.world.failed) == (1, 1, 1)


def test_timeout_is_reported_once_by_a_later_event_and_marks_the_action_stuck() -> None:
    a = Agent()
    s = a.start("slow")
    cfg = ReducerConfig(action_timeout=timedelta(seconds=60))
    early = a.thought(dt=30)  # 30 s: fine
    late = a.thought(dt=31)  # 61 s: stuck
    later = a.thought(dt=100)
    state, derived = run([a.run_started(), s, early, late, later], cfg)
    (v,) = violations(derived)
    assert v.category == ViolationCategory.TIMEOUT
    assert v.event_ids == (s.id, late.id) and v.detected_by == late.id
    assert state.world.stuck == ("slow",)
    assert state.run is not None and state.run.world.stuck == ("slow",)
    assert state.open_actions["slow"].timed_out

    # completing it later closes it (no second timeout) and clears "stuck"
    state2, derived2 = reduce(state, a.done("slow"), cfg)
    assert not violations(derived2) and len(episodes(derived2)) == 1
    assert state2.world.stuck == () and state2.run is not None and state2.run.world.stuck == ()


def test_a_completion_after_the_timeout_reports_the_timeout_itself() -> None:
    a = Agent()
    s, c = a.start(), a.done(dt=600)
    _, derived = run([s, c], ReducerConfig(action_timeout=timedelta(seconds=60)))
    (v,) = violations(derived)
    assert v.category == ViolationCategory.TIMEOUT and v.event_ids == (s.id, c.id)


def test_abandoned_when_the_run_finishes_with_open_actions_of_that_run_only() -> None:
    a = Agent()
    s1 = a.start("c1")
    a.run = "other"
    s2 = a.start("c2")
    a.run = "r1"
    fin = a.run_finished("failed")
    state, derived = run([a.run_started(), s1, s2, fin])
    (v,) = violations(derived)
    assert v.category == ViolationCategory.ABANDONED
    assert (v.event_ids, v.call_id, v.run_id) == ((s1.id, fin.id), "c1", "r1")
    assert list(state.open_actions) == ["c2"]  # the other run's call is still open
    assert v.violation_id == derived_id("violation", "abandoned", s1.id)


def test_too_many_open_actions_evicts_the_oldest_as_abandoned() -> None:
    a = Agent()
    starts = [a.start(f"c{i}") for i in range(4)]
    state, derived = run(starts, ReducerConfig(max_open_actions=3))
    (v,) = violations(derived)
    assert v.category == ViolationCategory.ABANDONED and v.call_id == "c0"
    assert "evicted" in v.detail
    assert list(state.open_actions) == ["c1", "c2", "c3"]


# --- episodes -------------------------------------------------------------------------------


def test_episode_situation_is_the_cause_when_one_is_known() -> None:
    a = Agent()
    t1 = a.thought("look in the cache")
    t2 = a.thought("unrelated musing")
    s = a.start(causes=(t1.id,))
    c = a.done()
    _, derived = run([t1, t2, s, c])
    (e,) = episodes(derived)
    assert e.situation == "look in the cache"
    assert e.event_ids == (t1.id, s.id, c.id)
    assert e.episode_id == derived_id("episode", c.id) and e.revision == 0
    assert (e.tool, e.outcome, e.expected, e.actual, e.lesson) == (
        "search",
        "success",
        "found",
        "found",
        None,
    )
    assert e.action == 'search {"q":1}'


def test_episode_situation_falls_back_to_the_latest_think_event_of_the_run() -> None:
    a = Agent()
    d = a.decision("grep")
    s, c = a.start(), a.done(status="error", actual=None)
    _, derived = run([a.run_started(), a.thought("old"), d, s, c])
    (e,) = episodes(derived)
    assert e.situation == "decided grep: why not" and e.event_ids == (d.id, s.id, c.id)
    assert e.outcome == "failure"


def test_episode_without_any_thought_has_an_empty_situation() -> None:
    a = Agent()
    s, c = a.start(), a.done()
    _, derived = run([a.run_started(), s, c])
    (e,) = episodes(derived)
    assert e.situation == "" and e.event_ids == (s.id, c.id)


def test_lesson_naming_the_completion_revises_that_episode() -> None:
    a = Agent()
    s1, c1 = a.start("c1"), a.done("c1")
    s2, c2 = a.start("c2"), a.done("c2")
    lesson = a.lesson("cache first", causes=(c1.id,))
    _, derived = run([a.thought(), s1, c1, s2, c2, lesson])
    eps = episodes(derived)
    assert [(e.revision, e.lesson) for e in eps] == [(0, None), (0, None), (1, "cache first")]
    assert eps[2].episode_id == eps[0].episode_id
    assert eps[2].event_ids[-1] == lesson.id
    assert (
        msgspec.structs.replace(eps[2], revision=0, lesson=None, event_ids=eps[0].event_ids)
        == (eps[0])
    )


def test_lesson_without_a_known_cause_goes_to_the_latest_unlessoned_episode_of_its_run() -> None:
    a = Agent()
    s1, c1 = a.start("c1"), a.done("c1")
    s2, c2 = a.start("c2"), a.done("c2")
    l1, l2 = a.lesson("first"), a.lesson("second")
    _, derived = run([s1, c1, s2, c2, l1, l2])
    revised = [e for e in episodes(derived) if e.revision]
    assert [(e.episode_id, e.lesson) for e in revised] == [
        (derived_id("episode", c2.id), "first"),
        (derived_id("episode", c1.id), "second"),
    ]


def test_lesson_of_another_run_does_not_attach() -> None:
    a = Agent()
    events = [a.start(), a.done()]
    a.run = "r2"
    state, derived = run([*events, a.lesson()])
    assert [e.revision for e in episodes(derived)] == [0]
    assert state.lessons == 1


# --- duplicates, ordering, determinism ------------------------------------------------------


def test_duplicate_ids_do_not_change_state_or_derive_anything() -> None:
    a = Agent()
    events = [a.run_started(), a.thought(), a.start(), a.done(status="error", actual=None)]
    once, derived_once = fold(events)
    dup, derived_dup = fold([*events, *events, events[1]])
    assert dup == once and derived_dup == derived_once
    state = once["a1"]
    same, out = reduce(state, events[3])
    assert same is state and out == []


def test_the_dedup_window_is_bounded_and_deterministic() -> None:
    a = Agent()
    cfg = ReducerConfig(dedup_window=3)
    events = [a.thought() for _ in range(5)]
    state, _ = run(events, cfg)
    assert list(state.seen) == [e.id for e in events[2:]]
    assert list(state.seen.values()) == [3, 4, 5]
    # a duplicate older than the window is applied again (documented limit)
    again, _ = reduce(state, events[0], cfg)
    assert again.events_total == 6
    # one inside the window is not
    same, _ = reduce(state, events[4], cfg)
    assert same.events_total == 5


def test_completion_before_its_start_is_a_missing_start_then_an_open_action() -> None:
    a = Agent()
    s = a.start("c1")
    c = a.done("c1")
    state, derived = run([c, s])  # the producer sent them out of order
    assert [v.category for v in violations(derived)] == [ViolationCategory.MISSING_START]
    assert list(state.open_actions) == ["c1"] and state.status == AgentStatus.ACTING


def test_reduce_never_mutates_its_input_and_equals_fold() -> None:
    a = Agent()
    events = [a.run_started(), a.thought(), a.start(), a.done(), a.lesson(), a.run_finished()]
    state = None
    history = []
    for e in events:
        before = None if state is None else decode_state(encode_state(state))
        new, _ = reduce(state, e)
        if state is not None:
            assert state == before  # untouched
        history.append(new)
        state = new
    folded, _ = fold(events)
    assert state == folded["a1"]
    assert len({encode_state(s) for s in history}) == len(events)


def test_state_round_trips_through_json() -> None:
    a = Agent()
    state, _ = run([a.run_started(), a.decision(), a.start(), a.thought(), a.done(), a.lesson()])
    raw = encode_state(state)
    assert decode_state(raw) == state
    assert encode_state(decode_state(raw)) == raw


def test_event_of_another_agent_is_refused() -> None:
    state, _ = reduce(None, Agent("a1").thought())
    with pytest.raises(ValueError, match="a2"):
        reduce(state, Agent("a2", seed=8).thought())


@pytest.mark.parametrize(
    "bad",
    [
        {"dedup_window": 0},
        {"success_window": 0},
        {"max_open_actions": 0},
        {"run_window": 0},
        {"action_timeout": timedelta(0)},
    ],
)
def test_config_is_validated(bad: dict) -> None:
    with pytest.raises(ValueError):
        ReducerConfig(**bad)


def test_simulated_workload_folds_deterministically_and_matches_its_ground_truth() -> None:
    events = list(generate(SimulationConfig(agents=6, runs=25, seed=3)))
    assert len(events) > 1000
    s1, d1 = fold(events)
    s2, d2 = fold(events)
    assert s1 == s2 and d1 == d2
    assert [encode_state(s1[k]) for k in sorted(s1)] == [encode_state(s2[k]) for k in sorted(s2)]

    starts = {
        (e.agentid, e.data.call_id): e
        for e in events
        if e.type == "agent.act.started.v1"  # type: ignore[union-attr]
    }
    completions = [e for e in events if e.type == "agent.act.completed.v2"]
    mismatches = sum(
        1
        for c in completions
        if (c.agentid, c.data.call_id) in starts  # type: ignore[union-attr]
        and is_mismatch(starts[(c.agentid, c.data.call_id)], c)  # type: ignore[union-attr]
    )
    orphans = sum(1 for c in completions if c.data.call_id.startswith("orphan-"))  # type: ignore[union-attr]
    errors = sum(1 for c in completions if c.data.status == "error")  # type: ignore[union-attr]
    cats = Counter(v.category for v in violations(d1))
    assert cats[ViolationCategory.WRONG_RESULT] == mismatches > 0
    assert cats[ViolationCategory.MISSING_START] == orphans > 0
    assert cats[ViolationCategory.TOOL_ERROR] == errors > 0
    assert cats[ViolationCategory.ABANDONED] > 0
    first_revisions = [e for e in episodes(d1) if e.revision == 0]
    assert len(first_revisions) == len(completions) - orphans
    assert len({v.violation_id for v in violations(d1)}) == len(violations(d1))
    # every agent ends stopped with nothing open (the simulator stops them all)
    assert all(s.stopped and not s.open_actions for s in s1.values())


# --- vocabulary, run status rule, upcasting -----------------------------------------------


def test_the_simulated_workload_counts_errors_mismatches_failed_as_the_raw_events_say() -> None:
    events = list(generate(SimulationConfig(agents=8, runs=30, seed=11)))
    states, _ = fold(events)
    starts = {(e.agentid, e.data.call_id): e for e in events if e.type == "agent.act.started.v1"}  # type: ignore[union-attr]
    want: dict[str, Counter[str]] = {}
    for c in events:
        if c.type != "agent.act.completed.v2":
            continue
        w = want.setdefault(c.agentid, Counter())
        w["actions"] += 1
        start = starts.get((c.agentid, c.data.call_id))  # type: ignore[union-attr]
        w["errors"] += c.data.status == "error"  # type: ignore[union-attr]
        w["mismatches"] += start is not None and is_mismatch(start, c)
    assert sum(w["mismatches"] for w in want.values()) > 0
    for agent, w in want.items():
        world = states[agent].world
        assert (world.actions, world.errors, world.mismatches) == (
            w["actions"],
            w["errors"],
            w["mismatches"],
        )
        assert world.failed == world.errors + world.mismatches
        tools = states[agent].tools.values()
        assert sum(t.actions for t in tools) == world.actions
        assert sum(t.failed for t in tools) == world.failed


@pytest.mark.parametrize(
    ("reports", "final"),
    [
        ([("succeeded", 0)], "succeeded"),
        ([("failed", 0), ("succeeded", 5)], "succeeded"),  # the latest by event time
        ([("succeeded", 5), ("failed", 0)], "succeeded"),  # ... whatever the log order
        ([("succeeded", 0), ("failed", 0)], "failed"),  # a tie: the more severe
        ([("failed", 0), ("cancelled", 0)], "failed"),
        ([("cancelled", 0), ("succeeded", 0)], "cancelled"),
    ],
)
def test_an_agents_run_status_is_its_latest_run_finished_ties_by_severity(
    reports: list[tuple[str, int]], final: str
) -> None:
    a = Agent()
    events = [a.run_started()]
    base = a.t + timedelta(seconds=10)
    for status, offset in reports:
        e = a.run_finished(status)
        events.append(msgspec.structs.replace(e, time=base + timedelta(seconds=offset)))
    for order in (events, [events[0], *reversed(events[1:])]):
        state, _ = run(order)
        assert state.runs["r1"].status == final
        assert state.status == (
            AgentStatus.FINISHED if final == "succeeded" else AgentStatus.FAILED
        )


def test_an_agent_that_did_not_report_the_run_finished_still_says_running() -> None:
    """A per-agent fold cannot see another agent's run_finished (docs/processing.md)."""
    lead, member = Agent("lead", seed=1), Agent("member", seed=2)
    events = [lead.run_started(goal="ship"), member.thought(), lead.run_finished("failed")]
    states, _ = fold(events)
    assert states["lead"].runs["r1"].status == "failed"
    assert states["member"].runs["r1"].status == "running"
    assert states["member"].runs["r1"].goal is None  # it never saw a run_started


def _v1(state: AgentState) -> bytes:
    """The state as version 1 wrote it (old field names)."""
    obj = msgspec.to_builtins(state)
    obj["schema_version"] = 1

    def outlook(o: dict) -> dict:
        o = dict(o)
        o["success_rate"] = o.pop("recent_success_rate")
        o["actions_ok"] = o["actions"] - o["failed"]
        o["actions_failed"] = o.pop("failed")
        for k in ("actions", "errors", "mismatches"):
            del o[k]
        return o

    obj["world"] = outlook(obj["world"])
    obj["runs"] = {k: dict(r, world=outlook(r["world"])) for k, r in obj["runs"].items()}
    if obj["run"] is not None:
        obj["run"] = obj["runs"][obj["run"]["run_id"]]
    obj["tools"] = {
        k: {
            "ok": t["actions"] - t["errors"],
            "error": t["errors"],
            "wrong_result": t["mismatches"],
            "duration_ms": t["duration_ms"],
        }
        for k, t in obj["tools"].items()
    }
    return msgspec.json.encode(obj)


def test_a_version_1_state_is_upcast_on_decode() -> None:
    a = Agent()
    events = [a.run_started(), a.start("c1"), a.done("c1", status="error", actual=None)]
    events += [a.start("c2"), a.done("c2", actual="other"), a.start("c3"), a.done("c3")]
    state, _ = run(events)
    assert (state.world.errors, state.world.mismatches) == (1, 1)
    old = decode_state(_v1(state))
    assert old.schema_version == 2
    assert old.tools == state.tools
    assert old.world == state.world  # agent-wide: exact (the sums over the tools)
    # a run's split was not kept by version 1: failed is kept, counted as errors
    rw = old.runs["r1"].world
    assert (rw.actions, rw.failed, rw.errors, rw.mismatches) == (3, 2, 2, 0)
    assert old.run == old.runs["r1"]
    with pytest.raises(msgspec.ValidationError):
        decode_state(b'{"schema_version": 2, "agent_id": "a", "bogus": 1}')
