"""The one admission rule for ``agent-events``, shared by every consumer of the log.

A record is admitted when its value decodes to a valid event *and* its Kafka key is the
event's ``agentid``. The processor dead-letters everything else (per-agent order cannot be
guaranteed for a record keyed otherwise), so every other consumer (the projections, the
archiver, the replay tools) must leave the same records out, or the read models would hold
what the dead-letter topic holds. Keeping the rule in one function is what makes them agree.

Also here, because every stage needs it the same way:

- :func:`processing_error`: the rejection for an *admitted* record that made a stage raise
  (reason ``processing_error``, the stage and the exception type in the dead letter);
- :func:`is_infrastructure_error`: whether an exception means "a broker or store is
  unavailable" (retry with backoff, never dead-letter) rather than "this record breaks
  the stage" (dead-letter it, move on). Pure: it looks at exception types, imports none.
"""

from __future__ import annotations

from collections.abc import Callable

from schemas.envelope import Event, EventBase
from schemas.errors import InvalidEvent, RejectReason

Decode = Callable[[bytes], object]

MAX_ERROR_DETAIL = 500


def check_key(key: bytes | None, event: EventBase) -> InvalidEvent | None:
    """The rejection for an event whose record key is not its agent id, else None."""
    if key is None or key != event.agentid.encode():
        return InvalidEvent(
            RejectReason.KEY_MISMATCH,
            f"record key {key!r} is not the event's agentid {event.agentid!r}; "
            "the key must be the agent id so that one agent's events stay in order",
            "$.agentid",
        )
    return None


def admit(key: bytes | None, value: bytes | None, decode: Decode) -> Event | InvalidEvent:
    """The event in a record of ``agent-events``, or why it is not admitted. Never raises.

    ``decode`` is the consumer's codec (``EventCodec.decode``). Any exception it raises is
    a rejection: a codec that lets something other than ``InvalidEvent`` escape must not
    stop a stage. When ``decode`` returns something that is not an event (a test decoder
    for another payload), only the codec's verdict applies.
    """
    if value is None:
        return InvalidEvent(RejectReason.EMPTY, "record has no value (a tombstone)")
    try:
        decoded = decode(value)
    except InvalidEvent as err:
        return err
    except Exception as err:  # the codec's bug must not become a crash loop
        return InvalidEvent(
            RejectReason.INVALID_VALUE,
            _clip(f"the decoder raised {type(err).__name__}: {err}"),
        )
    if isinstance(decoded, EventBase):
        rejected = check_key(key, decoded)
        if rejected is not None:
            return rejected
    return decoded  # type: ignore[return-value]


def processing_error(stage: str, err: BaseException) -> InvalidEvent:
    """The rejection of an admitted record on which ``stage`` raised ``err``."""
    return InvalidEvent(
        RejectReason.PROCESSING_ERROR,
        _clip(f"{stage} raised {type(err).__name__}: {err}"),
    )


# Exception class names (anywhere in the MRO) that mean a broker or a store is unavailable:
# aiokafka's KafkaError family, redis/FalkorDB connection, timeout and "loading" errors,
# httpx/Chroma transport errors, clickhouse-connect's OperationalError (connection); and
# our own stores' "...Unavailable" errors (e.g. GraphUnavailable).
_INFRA_NAMES = frozenset(
    {
        "KafkaError",
        "ConnectionError",
        "TimeoutError",
        "BusyLoadingError",
        "TransportError",
        "OperationalError",
        "ReadOnlyError",
        "MasterDownError",
    }
)


def is_infrastructure_error(err: BaseException) -> bool:
    """True when ``err`` (or an exception it was raised from) says a backend is unavailable.

    ``OSError`` covers sockets, refused connections and full disks; the rest is matched by
    class name so this layer imports no client library. Anything else is treated as caused
    by the data being applied.
    """
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError | TimeoutError):
            return True
        if any(
            c.__name__ in _INFRA_NAMES or c.__name__.endswith("Unavailable")
            for c in type(cur).__mro__
        ):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_DETAIL else text[: MAX_ERROR_DETAIL - 1] + "…"
