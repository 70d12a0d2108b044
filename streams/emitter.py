"""Helpers so agent code emits think/act/learn events in one line each.

Two layers:

- :class:`EventFactory` is pure: it fills the envelope (UUIDv7 id, time, source, tenant,
  run/task ids, traceparent) and the ``causes`` of each event, and returns it. The id
  generator and the clock are injectable, which is how the simulator builds reproducible
  events with it.
- :class:`AgentEmitter` is a factory that also sends each event it builds: with a
  :class:`~streams.producer.SyncEventProducer` every helper blocks and returns the event;
  with an async :class:`~streams.producer.EventProducer` every helper returns an awaitable
  of the event (``t = await em.thought(...)``).

Default causes: the previous event built by the same factory; ``action_completed`` is
caused by the ``action_started`` it completes. ``causes=`` always overrides (pass ``()``
for none).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, Protocol, TypedDict, TypeVar, Unpack, overload

import msgspec

from schemas import payloads as p
from schemas.envelope import ActionStartedEvent, Event, new_event
from schemas.errors import InvalidEvent, RejectReason
from schemas.ids import Uuid7Generator
from streams.producer import EventProducer, SyncEventProducer

Causes = Iterable[str | Event] | None
"""Event ids or events; ``None`` means "use the default"."""


class RecalledRef(Protocol):
    """A recalled episode as ``projections.memory.recall`` returns it (only its id is used)."""

    @property
    def episode_id(self) -> str: ...


class Envelope(TypedDict, total=False):
    """Per-call envelope options every helper accepts."""

    causes: Causes  # default: the previous event (for action_completed: its start)
    subject: str | None
    time: datetime | None  # default: the emitter's clock
    task_id: str | None  # default: the emitter's task_id


_R = TypeVar("_R")


def _utc_now() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(at: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding)."""
    return (at - _EPOCH) // _MS


def _episode_ids(recalled: Iterable[str | RecalledRef]) -> list[str]:
    """The ids, checked here so agent code gets the error at the call, not a dead letter."""
    ids = [r if isinstance(r, str) else r.episode_id for r in recalled]
    try:
        return msgspec.convert(ids, p.RecalledEpisodes)
    except msgspec.ValidationError as err:
        raise InvalidEvent(
            RejectReason.INVALID_VALUE, f"recalled_episodes: {err}", "$.data.recalled_episodes"
        ) from None


def _ids(causes: Iterable[str | Event]) -> tuple[str, ...]:
    return tuple(c if isinstance(c, str) else c.id for c in causes)


class _Builder(ABC, Generic[_R]):
    """Envelope filling and the helpers; ``_emit`` decides what a helper returns."""

    def __init__(
        self,
        agent_id: str,
        *,
        run_id: str | None = None,
        task_id: str | None = None,
        tenant: str = "default",
        source: str | None = None,
        traceparent: str | None = None,
        ids: Uuid7Generator | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.agent_id = agent_id
        self.run_id = run_id
        self.task_id = task_id
        self.tenant = tenant
        self.source = source
        self.traceparent = traceparent
        self.ids = ids or Uuid7Generator()
        self.clock = clock
        self.last: Event | None = None

    @abstractmethod
    def _emit(self, data: p.Payload, **envelope: Unpack[Envelope]) -> _R:
        """Build and deliver (or just return) one event."""

    def build(
        self,
        data: p.Payload,
        *,
        causes: Causes = None,
        subject: str | None = None,
        time: datetime | None = None,
        task_id: str | None = None,
    ) -> Event:
        """Wrap any payload (pure apart from remembering it as ``last``)."""
        at = time or self.clock()
        if causes is None:
            chain: tuple[str, ...] = (self.last.id,) if self.last is not None else ()
        else:
            chain = _ids(causes)
        event = new_event(
            data,
            id=self.ids.new(epoch_ms(at)),
            time=at,
            agentid=self.agent_id,
            runid=self.run_id,
            taskid=task_id or self.task_id,
            tenant=self.tenant,
            causes=chain,
            traceparent=self.traceparent,
            subject=subject,
            source=self.source,
        )
        self.last = event
        return event

    # --- think -------------------------------------------------------------------------

    def thought(
        self,
        text: str,
        *,
        model: str,
        provider: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        latency_ms: float = 0.0,
        cost_usd: float = 0.0,
        **envelope: Unpack[Envelope],
    ) -> _R:
        data = p.Thought(
            text=text,
            model=model,
            provider=provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=latency_ms,
            cost_usd=cost_usd,
        )
        return self._emit(data, **envelope)

    def plan(
        self,
        goal: str,
        steps: Sequence[p.PlanStep | Mapping[str, Any]],
        **envelope: Unpack[Envelope],
    ) -> _R:
        """Steps as PlanStep or dicts ``{"id", "description", "depends_on"}``."""
        built = [s if isinstance(s, p.PlanStep) else p.PlanStep(**s) for s in steps]
        return self._emit(p.Plan(goal=goal, steps=built), **envelope)

    def decision(
        self,
        chosen: str,
        *,
        alternatives: Sequence[str] = (),
        confidence: float = 1.0,
        rationale: str | None = None,
        recalled_episodes: Iterable[str | RecalledRef] = (),
        **envelope: Unpack[Envelope],
    ) -> _R:
        """``recalled_episodes``: the episodes from episodic memory this choice used, as
        ids or as what ``recall`` returned (anything with an ``episode_id``)."""
        data = p.Decision(
            chosen=chosen,
            alternatives=list(alternatives),
            confidence=confidence,
            rationale=rationale,
            recalled_episodes=_episode_ids(recalled_episodes),
        )
        return self._emit(data, **envelope)

    # --- act ---------------------------------------------------------------------------

    def action_started(
        self,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        expected: str | None = None,
        call_id: str | None = None,
        **envelope: Unpack[Envelope],
    ) -> _R:
        """``call_id`` defaults to a fresh ``call-<uuid7>`` (what links the completion)."""
        at = envelope.pop("time", None) or self.clock()
        cid = call_id or f"call-{self.ids.new(epoch_ms(at))}"
        data = p.ActionStarted(
            call_id=cid, tool=tool, arguments=dict(arguments or {}), expected=expected
        )
        return self._emit(data, time=at, **envelope)

    def action_completed(
        self,
        started: Event | None,
        *,
        status: Literal["ok", "error"] = "ok",
        result: str = "",
        actual: str | None = None,
        error_type: str | None = None,
        duration_ms: float | None = None,
        call_id: str | None = None,
        tool: str | None = None,
        **envelope: Unpack[Envelope],
    ) -> _R:
        """Complete ``started``. Without a start event pass ``call_id`` and ``tool``.

        ``duration_ms`` defaults to the time since the start event; ``causes`` to the start.
        """
        at = envelope.pop("time", None) or self.clock()
        causes = envelope.pop("causes", None)
        if started is not None:
            if not isinstance(started, ActionStartedEvent):
                raise TypeError(f"expected an action_started event, got {started.type}")
            call_id = call_id or started.data.call_id
            tool = tool or started.data.tool
            if duration_ms is None:
                duration_ms = max(0.0, (at - started.time).total_seconds() * 1000)
            if causes is None:
                causes = (started.id,)
        if call_id is None or tool is None:
            raise ValueError("action_completed needs the started event, or call_id and tool")
        data = p.ActionCompleted(
            call_id=call_id,
            tool=tool,
            status=status,
            result=result,
            actual=actual,
            error_type=error_type,
            duration_ms=duration_ms or 0.0,
        )
        return self._emit(data, causes=causes, time=at, **envelope)

    def message(
        self,
        to: str,
        text: str,
        *,
        conversation_id: str | None = None,
        **envelope: Unpack[Envelope],
    ) -> _R:
        data = p.Message(to_agent=to, text=text, conversation_id=conversation_id)
        return self._emit(data, **envelope)

    # --- learn -------------------------------------------------------------------------

    def lesson(
        self,
        *,
        situation: str,
        action: str,
        outcome: str,
        insight: str,
        **envelope: Unpack[Envelope],
    ) -> _R:
        data = p.Lesson(situation=situation, action=action, outcome=outcome, insight=insight)
        return self._emit(data, **envelope)

    def feedback(
        self,
        score: float,
        *,
        source: Literal["human", "critic", "environment", "test", "self"] = "self",
        comment: str | None = None,
        **envelope: Unpack[Envelope],
    ) -> _R:
        return self._emit(p.Feedback(score=score, source=source, comment=comment), **envelope)

    # --- lifecycle ---------------------------------------------------------------------

    def agent_started(
        self,
        name: str | None = None,
        *,
        role: str | None = None,
        model: str | None = None,
        **envelope: Unpack[Envelope],
    ) -> _R:
        data = p.AgentStarted(name=name or self.agent_id, role=role, model=model)
        return self._emit(data, **envelope)

    def agent_stopped(self, reason: str = "done", **envelope: Unpack[Envelope]) -> _R:
        return self._emit(p.AgentStopped(reason=reason), **envelope)

    def run_started(
        self, goal: str, *, run_id: str | None = None, **envelope: Unpack[Envelope]
    ) -> _R:
        """Starts a run; ``run_id`` (if given) becomes this factory's run id from now on."""
        if run_id is not None:
            self.run_id = run_id
        return self._emit(p.RunStarted(goal=goal), **envelope)

    def run_finished(
        self,
        status: Literal["succeeded", "failed", "cancelled"],
        summary: str = "",
        **envelope: Unpack[Envelope],
    ) -> _R:
        return self._emit(p.RunFinished(status=status, summary=summary), **envelope)


class EventFactory(_Builder[Event]):
    """Builds one agent's events and returns them; remembers the last one for ``causes``."""

    def _emit(self, data: p.Payload, **envelope: Unpack[Envelope]) -> Event:
        return self.build(data, **envelope)


class AgentEmitter(_Builder[_R]):
    """Builds one agent's events like :class:`EventFactory` and sends each one.

    ``AgentEmitter(sync_producer, agent_id=...)``: helpers block and return the event.
    ``AgentEmitter(async_producer, agent_id=...)``: helpers return an awaitable of it.
    """

    @overload
    def __init__(
        self: AgentEmitter[Event], producer: SyncEventProducer, *, agent_id: str, **kwargs: Any
    ) -> None: ...

    @overload
    def __init__(
        self: AgentEmitter[Awaitable[Event]],
        producer: EventProducer,
        *,
        agent_id: str,
        **kwargs: Any,
    ) -> None: ...

    def __init__(
        self, producer: EventProducer | SyncEventProducer, *, agent_id: str, **kwargs: Any
    ) -> None:
        super().__init__(agent_id, **kwargs)
        self.producer = producer

    def _emit(self, data: p.Payload, **envelope: Unpack[Envelope]) -> _R:
        event = self.build(data, **envelope)
        if isinstance(self.producer, EventProducer):
            return self._send_async(event)  # type: ignore[return-value]
        self.producer.send(event)
        return event  # type: ignore[return-value]

    async def _send_async(self, event: Event) -> Event:
        assert isinstance(self.producer, EventProducer)
        await self.producer.send(event)
        return event
