"""The agent-state reducer: ``reduce(state, event, config) -> (state, derived)``.

Pure (ARCHITECTURE.md, contract 2): no I/O, no clock, no randomness. Time is the event's
own ``time``; derived ids come from :func:`schemas.derived.derived_id` over event ids, so
a replay of the same log re-derives byte-identical states and the very same violation and
episode ids.

Two entry points share one implementation:

- :func:`reduce` never mutates its input (copy-on-write of the top-level containers);
  ``replay debug`` steps through history with it and keeps every intermediate state.
- :func:`advance` mutates a state it owns in place; :func:`fold` and the processor use it,
  which keeps per-event work to a few microseconds.

Ordering guarantee: per agent (the Kafka key), events are applied in log order. The
reducer does not reorder by event time; see docs/processing.md for what out-of-order input
does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from schemas import envelope as ev
from schemas import payloads as p
from schemas.derived import Episode, Violation, ViolationCategory, derived_id, episode_id_for
from schemas.state import (
    AgentState,
    AgentStatus,
    Context,
    LastDecision,
    OpenAction,
    Outlook,
    RunState,
    ToolStats,
)

Derived = Violation | Episode

_replace = msgspec.structs.replace
_args_encoder = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True, slots=True)
class ReducerConfig:
    """Knobs of the reducer. Part of what makes a replay reproducible: keep them stable."""

    action_timeout: timedelta = timedelta(minutes=5)
    """An open action older than this (by event time) is stuck: one ``timeout`` violation."""
    dedup_window: int = 256
    """Per agent, the ids of the last N applied events are remembered; a repeat is ignored."""
    success_window: int = 20
    """Outcomes in the rolling success rate (per agent and per run)."""
    context_window: int = 16
    """Recent think events (of all runs) kept as candidate episode situations."""
    episode_window: int = 8
    """Recent episodes kept so that a later lesson can be attached to them."""
    max_text_chars: int = 1000
    """Situation, action and result texts are clipped to this many characters."""
    max_open_actions: int = 128
    """Beyond this many open actions the oldest is closed as ``abandoned`` (bounds state)."""
    run_window: int = 8
    """Runs kept per agent (open ones first; the oldest finished run is forgotten first)."""

    def __post_init__(self) -> None:
        for name in (
            "dedup_window",
            "success_window",
            "context_window",
            "episode_window",
            "max_open_actions",
            "run_window",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"ReducerConfig.{name} must be >= 1")
        if self.action_timeout <= timedelta(0):
            raise ValueError("ReducerConfig.action_timeout must be positive")


DEFAULT_CONFIG = ReducerConfig()

_TAG: dict[type, str] = {cls: cls.__struct_config__.tag for cls in ev.EVENT_CLASSES}  # type: ignore[misc]


# --- public API --------------------------------------------------------------------------


def initial_state(event: ev.Event) -> AgentState:
    """The empty state of the agent that emitted ``event``."""
    return AgentState(agent_id=event.agentid, tenant=event.tenant)


def copy_state(state: AgentState) -> AgentState:
    """A copy that :func:`advance` may mutate without touching ``state``.

    Nested records are frozen and shared; only the mutable containers are copied.
    """
    return _replace(
        state,
        open_actions=dict(state.open_actions),
        counts=dict(state.counts),
        tools=dict(state.tools),
        context=list(state.context),
        runs=dict(state.runs),
        episodes=dict(state.episodes),
        seen=dict(state.seen),
    )


def reduce(
    state: AgentState | None, event: ev.Event, config: ReducerConfig = DEFAULT_CONFIG
) -> tuple[AgentState, list[Derived]]:
    """Apply one event to one agent's state. Never mutates ``state``.

    A duplicate (an id inside the dedup window) returns ``state`` itself and no derived
    records.
    """
    if state is None:
        state = initial_state(event)
    elif event.id in state.seen:
        return state, []
    else:
        state = copy_state(state)
    out: list[Derived] = []
    advance(state, event, config, out)
    return state, out


def fold(
    events: Iterable[ev.Event],
    config: ReducerConfig = DEFAULT_CONFIG,
    states: dict[str, AgentState] | None = None,
) -> tuple[dict[str, AgentState], list[Derived]]:
    """Fold events (in log order per agent) into states by agent id, plus everything derived.

    ``states`` (optional) is the starting point and is advanced in place.
    """
    states = {} if states is None else states
    derived: list[Derived] = []
    for event in events:
        state = states.get(event.agentid)
        if state is None:
            state = states[event.agentid] = initial_state(event)
        advance(state, event, config, derived)
    return states, derived


def advance(state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]) -> bool:
    """Apply ``event`` to ``state`` in place, appending derived records to ``out``.

    Returns False (and changes nothing) for a duplicate. The hot path of the processor.
    """
    eid = event.id
    seen = state.seen
    if eid in seen:
        return False
    if event.agentid != state.agent_id:
        raise ValueError(f"event {eid} is for agent {event.agentid!r}, state is {state.agent_id!r}")
    n = state.events_total + 1
    state.events_total = n
    seen[eid] = n
    if len(seen) > config.dedup_window:
        del seen[next(iter(seen))]
    cls = type(event)
    tag = _TAG[cls]
    counts = state.counts
    counts[tag] = counts.get(tag, 0) + 1
    t = event.time
    first = state.first_event_time
    if first is None or t < first:
        state.first_event_time = t
    last = state.last_event_time
    if last is None or t > last:
        state.last_event_time = t
    state.last_event_id = eid
    if event.taskid is not None:
        state.task_id = event.taskid
    runid = event.runid
    if runid is not None and runid != state.run_id and cls is not ev.RunStartedEvent:
        _enter_run(state, runid, None, t, config)
    _HANDLERS[cls](state, event, config, out)
    if state.open_actions:
        _check_timeouts(state, event, config, out)
    return True


# --- runs and the world model ------------------------------------------------------------


def _enter_run(
    state: AgentState, run_id: str, goal: str | None, at: datetime, config: ReducerConfig
) -> None:
    """Make ``run_id`` the current run; a run not seen yet starts with a fresh world model."""
    runs = state.runs
    run = runs.get(run_id)
    if run is None:
        run = runs[run_id] = RunState(run_id=run_id, goal=goal, started_at=at)
        state.stopped = False
        if len(runs) > config.run_window:
            finished = [r for r in runs.values() if r.status != "running" and r is not run]
            del runs[(finished[0] if finished else next(iter(runs.values()))).run_id]
    elif goal is not None and run.goal is None:
        run = runs[run_id] = _replace(run, goal=goal)
    state.run_id = run_id
    state.run = run


def _set_run(state: AgentState, run: RunState) -> None:
    state.runs[run.run_id] = run
    if state.run_id == run.run_id:
        state.run = run


def _record_outcome(o: Outlook, error: bool, mismatch: bool, window: int) -> Outlook:
    failed = error or mismatch
    outcomes = (o.outcomes + ("F" if failed else "S"))[-window:]
    return _replace(
        o,
        outcomes=outcomes,
        recent_success_rate=outcomes.count("S") / len(outcomes),
        failures_in_a_row=o.failures_in_a_row + 1 if failed else 0,
        actions=o.actions + 1,
        errors=o.errors + error,
        mismatches=o.mismatches + mismatch,
        failed=o.failed + failed,
    )


def _outcome(
    state: AgentState, run_id: str | None, error: bool, mismatch: bool, window: int
) -> None:
    state.world = _record_outcome(state.world, error, mismatch, window)
    run = state.runs.get(run_id) if run_id is not None else None
    if run is not None:
        _set_run(state, _replace(run, world=_record_outcome(run.world, error, mismatch, window)))


def _refresh_stuck(state: AgentState) -> None:
    stuck = tuple(a.call_id for a in state.open_actions.values() if a.timed_out)
    if stuck != state.world.stuck:
        state.world = _replace(state.world, stuck=stuck)
    for run in list(state.runs.values()):
        in_run = tuple(
            a.call_id for a in state.open_actions.values() if a.timed_out and a.run_id == run.run_id
        )
        if in_run != run.world.stuck:
            _set_run(state, _replace(run, world=_replace(run.world, stuck=in_run)))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _violation(
    state: AgentState,
    event: ev.Event,
    category: ViolationCategory,
    key: str,
    event_ids: tuple[str, ...],
    action: OpenAction | None = None,
    tool: str | None = None,
    call_id: str | None = None,
    actual: str | None = None,
    detail: str = "",
) -> Violation:
    return Violation(
        violation_id=derived_id("violation", category.value, key),
        category=category,
        agent_id=state.agent_id,
        run_id=action.run_id if action is not None else event.runid,
        task_id=action.task_id if action is not None else event.taskid,
        tenant=state.tenant,
        time=event.time,
        detected_by=event.id,
        event_ids=event_ids,
        tool=action.tool if action is not None else tool,
        call_id=action.call_id if action is not None else call_id,
        expected=action.expected if action is not None else None,
        actual=actual,
        detail=detail,
    )


def _check_timeouts(
    state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]
) -> None:
    t = event.time
    limit = config.action_timeout
    changed = False
    actions = state.open_actions
    for call_id, action in actions.items():
        if not action.timed_out and t - action.started_at > limit:
            out.append(_timeout(state, event, action, t))
            actions[call_id] = _replace(action, timed_out=True)
            changed = True
    if changed:
        _refresh_stuck(state)


def _timeout(state: AgentState, event: ev.Event, action: OpenAction, t: datetime) -> Violation:
    return _violation(
        state,
        event,
        ViolationCategory.TIMEOUT,
        action.started_event_id,
        (action.started_event_id, event.id),
        action,
        detail=f"open for {(t - action.started_at).total_seconds():g}s",
    )


def _abandon(state: AgentState, event: ev.Event, run_id: str | None, out: list[Derived]) -> None:
    """Close the open actions of ``run_id`` (all of them when None) as abandoned."""
    actions = state.open_actions
    closing = [a for a in actions.values() if run_id is None or a.run_id == run_id]
    if not closing:
        return
    for action in closing:
        del actions[action.call_id]
        out.append(
            _violation(
                state,
                event,
                ViolationCategory.ABANDONED,
                action.started_event_id,
                (action.started_event_id, event.id),
                action,
                detail=f"still open at {_TAG[type(event)]}",
            )
        )
    _refresh_stuck(state)


def _busy_or(state: AgentState, status: AgentStatus) -> None:
    state.status = AgentStatus.ACTING if state.open_actions else status


# --- handlers, one per event type --------------------------------------------------------

Handler = Callable[[AgentState, ev.Event, ReducerConfig, list[Derived]], None]


def _remember(state: AgentState, event: ev.Event, context: Context, config: ReducerConfig) -> None:
    ctx = state.context
    ctx.append(context)
    if len(ctx) > config.context_window:
        del ctx[0]
    _busy_or(state, AgentStatus.THINKING)


def _thought(state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]) -> None:
    data = event.data
    assert isinstance(data, p.Thought)
    world = state.world
    state.world = _replace(
        world,
        input_tokens=world.input_tokens + data.input_tokens,
        output_tokens=world.output_tokens + data.output_tokens,
        cost_usd=world.cost_usd + data.cost_usd,
    )
    run = state.runs.get(event.runid) if event.runid is not None else None
    if run is not None:
        rw = run.world
        world = _replace(
            rw,
            input_tokens=rw.input_tokens + data.input_tokens,
            output_tokens=rw.output_tokens + data.output_tokens,
            cost_usd=rw.cost_usd + data.cost_usd,
        )
        _set_run(state, _replace(run, world=world))
    if state.model is None:
        state.model = data.model
    text = _clip(data.text, config.max_text_chars)
    ctx = Context(event_id=event.id, kind="thought", text=text, run_id=event.runid)
    _remember(state, event, ctx, config)


def _plan(state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]) -> None:
    data = event.data
    assert isinstance(data, p.Plan)
    steps = "; ".join(s.description for s in data.steps)
    text = _clip(f"plan: {data.goal}" + (f" — {steps}" if steps else ""), config.max_text_chars)
    ctx = Context(event_id=event.id, kind="plan", text=text, run_id=event.runid)
    _remember(state, event, ctx, config)


def _decision(
    state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]
) -> None:
    data = event.data
    assert isinstance(data, p.Decision)
    state.last_decision = LastDecision(
        event_id=event.id,
        time=event.time,
        chosen=data.chosen,
        confidence=data.confidence,
        rationale=data.rationale,
    )
    text = f"decided {data.chosen}" + (f": {data.rationale}" if data.rationale else "")
    ctx = Context(
        event_id=event.id,
        kind="decision",
        text=_clip(text, config.max_text_chars),
        run_id=event.runid,
    )
    _remember(state, event, ctx, config)


def _situation(state: AgentState, causes: tuple[str, ...], run_id: str | None) -> Context | None:
    """The think event that led to an action: a cause if one is known, else the latest of
    the action's run."""
    ctx = state.context
    if causes:
        for c in reversed(ctx):
            if c.event_id in causes:
                return c
    for c in reversed(ctx):
        if c.run_id == run_id:
            return c
    return None


def _started(state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]) -> None:
    data = event.data
    assert isinstance(data, p.ActionStarted)
    situation = _situation(state, event.causes, event.runid)
    # a second start with the same call id (a retry of the call) replaces the first
    state.open_actions.pop(data.call_id, None)
    state.open_actions[data.call_id] = OpenAction(
        call_id=data.call_id,
        tool=data.tool,
        arguments=data.arguments,
        expected=data.expected,
        started_event_id=event.id,
        started_at=event.time,
        run_id=event.runid,
        task_id=event.taskid,
        situation=situation.text if situation is not None else "",
        situation_event_id=situation.event_id if situation is not None else None,
    )
    if len(state.open_actions) > config.max_open_actions:
        oldest = next(iter(state.open_actions.values()))
        del state.open_actions[oldest.call_id]
        out.append(
            _violation(
                state,
                event,
                ViolationCategory.ABANDONED,
                oldest.started_event_id,
                (oldest.started_event_id, event.id),
                oldest,
                detail=f"evicted: more than {config.max_open_actions} open actions",
            )
        )
        if oldest.timed_out:
            _refresh_stuck(state)
    state.status = AgentStatus.ACTING


def _completed(
    state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]
) -> None:
    data = event.data
    assert isinstance(data, p.ActionCompleted)
    action = state.open_actions.pop(data.call_id, None)
    ok = data.status == "ok"
    wrong = (
        ok
        and action is not None
        and action.expected is not None
        and data.actual is not None
        and data.actual != action.expected
    )
    success = ok and not wrong
    tool = action.tool if action is not None else data.tool
    stats = state.tools.get(tool) or ToolStats()
    state.tools[tool] = ToolStats(
        actions=stats.actions + 1,
        errors=stats.errors + (not ok),
        mismatches=stats.mismatches + wrong,
        failed=stats.failed + (not success),
        duration_ms=stats.duration_ms + data.duration_ms,
    )
    run_id = action.run_id if action is not None else event.runid
    _outcome(state, run_id, not ok, wrong, config.success_window)

    eid = event.id
    if action is None:
        out.append(
            _violation(
                state,
                event,
                ViolationCategory.MISSING_START,
                eid,
                (eid,),
                tool=data.tool,
                call_id=data.call_id,
                actual=data.actual,
                detail=f"no open action with call id {data.call_id!r}",
            )
        )
    else:
        ids = (action.started_event_id, eid)
        if not action.timed_out and event.time - action.started_at > config.action_timeout:
            out.append(_timeout(state, event, action, event.time))
        if wrong:
            out.append(
                _violation(
                    state,
                    event,
                    ViolationCategory.WRONG_RESULT,
                    eid,
                    ids,
                    action,
                    actual=data.actual,
                    detail="actual outcome differs from the expected one",
                )
            )
        _emit_episode(state, event, data, action, success, config, out)
        if action.timed_out:
            _refresh_stuck(state)
    if not ok:
        out.append(
            _violation(
                state,
                event,
                ViolationCategory.TOOL_ERROR,
                eid,
                (action.started_event_id, eid) if action is not None else (eid,),
                action,
                tool=data.tool,
                call_id=data.call_id,
                actual=data.actual,
                detail=data.error_type or data.result[:200],
            )
        )
    _busy_or(state, AgentStatus.THINKING)


def _emit_episode(
    state: AgentState,
    event: ev.Event,
    data: p.ActionCompleted,
    action: OpenAction,
    success: bool,
    config: ReducerConfig,
    out: list[Derived],
) -> None:
    limit = config.max_text_chars
    args = _args_encoder.encode(action.arguments).decode() if action.arguments else "{}"
    ids = (action.started_event_id, event.id)
    if action.situation_event_id is not None:
        ids = (action.situation_event_id, *ids)
    episode = Episode(
        episode_id=episode_id_for(event.id),
        revision=0,
        agent_id=state.agent_id,
        run_id=action.run_id,
        task_id=action.task_id,
        tenant=state.tenant,
        time=event.time,
        situation=action.situation,
        action=_clip(f"{action.tool} {args}", limit),
        tool=action.tool,
        outcome="success" if success else "failure",
        result=_clip(data.result, limit),
        expected=action.expected,
        actual=data.actual,
        event_ids=ids,
    )
    episodes = state.episodes
    episodes[episode.episode_id] = episode
    if len(episodes) > config.episode_window:
        del episodes[next(iter(episodes))]
    out.append(episode)


def _message(state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]) -> None:
    """Counted only; talking does not change the lifecycle status."""


def _lesson(state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]) -> None:
    data = event.data
    assert isinstance(data, p.Lesson)
    state.lessons += 1
    episodes = state.episodes
    targets: list[Episode] = []
    if event.causes:
        causes = set(event.causes)
        targets = [e for e in episodes.values() if not causes.isdisjoint(e.event_ids)]
    if not targets:
        # no cause names a known episode: the latest episode of the same run without a lesson
        for e in reversed(episodes.values()):
            if e.run_id == event.runid and e.lesson is None:
                targets = [e]
                break
    insight = _clip(data.insight, config.max_text_chars)
    for e in targets:
        revised = _replace(
            e, revision=e.revision + 1, lesson=insight, event_ids=(*e.event_ids, event.id)
        )
        episodes[e.episode_id] = revised
        out.append(revised)
    _busy_or(state, AgentStatus.LEARNING)


def _feedback(
    state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]
) -> None:
    data = event.data
    assert isinstance(data, p.Feedback)
    state.last_feedback_score = data.score
    _busy_or(state, AgentStatus.LEARNING)


def _agent_started(
    state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]
) -> None:
    data = event.data
    assert isinstance(data, p.AgentStarted)
    state.name = data.name
    state.role = data.role
    if data.model is not None:
        state.model = data.model
    state.stopped = False
    _busy_or(state, AgentStatus.IDLE)


def _agent_stopped(
    state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]
) -> None:
    _abandon(state, event, None, out)
    state.stopped = True
    if state.status not in (AgentStatus.FINISHED, AgentStatus.FAILED):
        state.status = AgentStatus.IDLE


def _run_started(
    state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]
) -> None:
    data = event.data
    assert isinstance(data, p.RunStarted)
    run_id = event.runid if event.runid is not None else event.id
    _enter_run(state, run_id, data.goal, event.time, config)
    _busy_or(state, AgentStatus.THINKING)


STATUS_RANK = {"succeeded": 1, "cancelled": 2, "failed": 3}
"""On equal event times the more severe ``run_finished`` status wins (the analytics
``runs`` view applies the same rule across agents)."""


def _decides(run: RunState, status: str, at: datetime) -> bool:
    """Whether a ``run_finished`` (status, time) replaces what the run says: the latest by
    event time wins, ties go to the more severe status. Order-free, like a maximum."""
    if run.finished_at is None or at > run.finished_at:
        return True
    return at == run.finished_at and STATUS_RANK[status] > STATUS_RANK.get(run.status, 0)


def _run_finished(
    state: AgentState, event: ev.Event, config: ReducerConfig, out: list[Derived]
) -> None:
    data = event.data
    assert isinstance(data, p.RunFinished)
    _abandon(state, event, event.runid, out)
    run = state.run
    if run is not None and (event.runid is None or event.runid == run.run_id):
        if _decides(run, data.status, event.time):
            run = _replace(run, status=data.status, finished_at=event.time)
            _set_run(state, run)
        state.status = AgentStatus.FINISHED if run.status == "succeeded" else AgentStatus.FAILED


_HANDLERS: dict[type, Handler] = {
    ev.ThoughtEvent: _thought,
    ev.PlanEvent: _plan,
    ev.DecisionEvent: _decision,
    ev.ActionStartedEvent: _started,
    ev.ActionCompletedEvent: _completed,
    ev.MessageEvent: _message,
    ev.LessonEvent: _lesson,
    ev.FeedbackEvent: _feedback,
    ev.AgentStartedEvent: _agent_started,
    ev.AgentStoppedEvent: _agent_stopped,
    ev.RunStartedEvent: _run_started,
    ev.RunFinishedEvent: _run_finished,
}
assert set(_HANDLERS) == set(ev.EVENT_CLASSES), "every event type needs a handler"
