"""Spans to events: the three GenAI tracing conventions mapped onto the AgentStream contract.

Pure: no I/O, no clock, no randomness. The only state is :class:`TraceMemory`, a bounded
record of recently seen spans that the caller owns and passes in, because OTLP exporters
send spans when they *end*: a tool span arrives before the agent span that contains it,
and the model call that chose the tool may have been exported in an earlier batch.

Which convention a span follows (first match wins):

1. OpenTelemetry GenAI: ``gen_ai.operation.name`` (chat, text_completion,
   generate_content -> model call; execute_tool -> tool; invoke_agent -> agent;
   create_agent -> agent definition);
2. OpenInference: ``openinference.span.kind`` (LLM, TOOL, AGENT, CHAIN);
3. OpenLLMetry: ``traceloop.span.kind`` (workflow, task, agent, tool), and model calls
   recognised by ``llm.request.type`` or ``gen_ai.prompt.*`` / ``gen_ai.completion.*``;
4. older GenAI spans with ``gen_ai.request.model`` / ``gen_ai.system`` but no operation
   name are model calls.

Anything else (HTTP, DB, ...) is not an event: it is skipped and counted by reason.

U+0000 in a text that reaches an event is replaced by U+FFFD (the contract refuses it) and
the span counted as altered (see ``_denul``).

Event ids are UUIDv7-shaped but derived, not random: the time bits are the event's time
and the "random" bits a hash of (trace id, span id, phase). A retried export therefore
produces the very same ids, and every consumer deduplicates by id.
"""

from __future__ import annotations

import hashlib
import re
import threading
from bisect import bisect_left, bisect_right
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import msgspec

from schemas import payloads as p
from schemas.envelope import CLASS_BY_PAYLOAD, MAX_TIME, SPECVERSION, Event, EventType

# --- attribute names (the conventions' own spellings) -------------------------------------

OPERATION = "gen_ai.operation.name"
OI_KIND = "openinference.span.kind"
TL_KIND = "traceloop.span.kind"
TL_REQUEST_TYPE = "llm.request.type"

LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
TOOL_OPERATIONS = frozenset({"execute_tool"})
AGENT_OPERATIONS = frozenset({"invoke_agent"})
CREATE_AGENT_OPERATIONS = frozenset({"create_agent"})

SUPPORTED_SEMCONV = ((1, 26), (1, 44))
"""OpenTelemetry semantic-conventions versions (from a scope's or resource's schema_url)
whose GenAI attributes this mapping reads; a span declaring another version is rejected
with the version in the reason rather than read by guesswork."""

_SCHEMA_RE = re.compile(r"opentelemetry\.io/schemas/(\d+)\.(\d+)(?:\.(\d+))?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_DURATION_MS = p.MAX_DURATION_MS
_MAX_NS = (MAX_TIME - _EPOCH) // timedelta(microseconds=1) * 1000
_json = msgspec.json.Decoder()


class Kind(Enum):
    """What a span is for AgentStream."""

    LLM = "llm"  # a model call -> thought
    TOOL = "tool"  # a tool call -> action started + action completed
    AGENT = "agent"  # an agent invocation -> agent started, run started, run finished
    WORKFLOW = "workflow"  # a workflow or root chain -> run started + run finished
    CREATE_AGENT = "create_agent"  # an agent definition -> agent started
    STRUCTURAL = "structural"  # a GenAI grouping span with no event (nested chain, task)
    OTHER = "other"  # not a GenAI span


EMITTING = frozenset({Kind.LLM, Kind.TOOL, Kind.AGENT, Kind.WORKFLOW, Kind.CREATE_AGENT})

# The members as module constants: in Python 3.11 each ``Kind.X`` is a descriptor call
# (~0.4 µs), and the mapping compares kinds a dozen times a span. ``_EMITTING`` is a tuple
# because ``in`` a frozenset hashes with Enum.__hash__, a Python function.
_LLM, _TOOL, _AGENT, _WORKFLOW = Kind.LLM, Kind.TOOL, Kind.AGENT, Kind.WORKFLOW
_CREATE_AGENT, _STRUCTURAL, _OTHER = Kind.CREATE_AGENT, Kind.STRUCTURAL, Kind.OTHER
_EMITTING = tuple(EMITTING)


@dataclass(slots=True)
class SpanNode:
    """What the memory keeps of one span: enough to link later spans to it."""

    kind: Kind
    parent: bytes
    start_ns: int
    end_ns: int
    agent: str | None = None
    run: str | None = None
    tool_call_ids: tuple[str, ...] = ()
    tools: list[p.ToolDefinition] | None = None  # tool definitions a model call was offered
    ref: str | None = None  # id of the event that stands for this span (see _ref)


_S = tuple[Any, "_Trace", bytes, bytes, bytes, int, int]
"""A span's protobuf (for the rest), its trace's memory, and its trace id, span id, parent
span id, start and end, read from the protobuf once (each read of a protobuf field builds
a new Python object). A plain tuple: the cheapest to build and unpack."""


class _Trace:
    """One trace's spans, and its model and tool calls in the order they were seen (a plain
    class: a dataclass's default factories cost a microsecond a trace)."""

    __slots__ = ("hex", "index", "llms", "spans", "tools", "version")

    def __init__(self) -> None:
        self.spans: dict[bytes, SpanNode] = {}
        self.llms: list[bytes] = []
        self.tools: list[bytes] = []
        self.hex: str | None = None  # the trace id as hex, computed once
        self.version = 0  # bumped by every change of ``spans`` (the index is rebuilt then)
        self.index: _Index | None = None


class TraceMemory:
    """The last ``max_traces`` traces, up to ``max_spans`` spans each (oldest evicted first).

    Losing it (a restart) only loses links to spans of earlier batches: ids stay the same.
    """

    def __init__(self, max_traces: int = 4096, max_spans: int = 1024) -> None:
        self.max_traces = max_traces
        self.max_spans = max_spans
        self._traces: OrderedDict[bytes, _Trace] = OrderedDict()

    def trace(self, trace_id: bytes) -> _Trace:
        t = self._traces.get(trace_id)
        if t is None:
            t = self._traces[trace_id] = _Trace()
            if len(self._traces) > self.max_traces:
                self._traces.popitem(last=False)
        else:
            self._traces.move_to_end(trace_id)
        return t

    def remember(
        self, trace_id: bytes, span_id: bytes, node: SpanNode, t: _Trace | None = None
    ) -> None:
        t = t or self.trace(trace_id)
        if span_id in t.spans:
            t.spans[span_id] = node
            t.version += 1
            return
        if len(t.spans) >= self.max_spans:
            return
        t.spans[span_id] = node
        t.version += 1
        if node.kind is _LLM:
            t.llms.append(span_id)
        elif node.kind is _TOOL:
            t.tools.append(span_id)

    def __len__(self) -> int:
        return len(self._traces)


@dataclass
class MappedBatch:
    """The outcome of one export request."""

    events: list[Event] = field(default_factory=list)
    spans: int = 0
    mapped: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    event_spans: list[int] = field(default_factory=list)  # events[i] came from span #n
    altered: int = 0  # mapped spans with a U+0000 replaced in their texts (see _denul)

    @property
    def rejected_count(self) -> int:
        return sum(self.rejected.values())

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())

    def message(self) -> str:
        """The partial-success text: what was rejected and what was skipped, and why."""
        parts = []
        if self.rejected:
            parts.append(
                f"rejected {self.rejected_count} spans: "
                + "; ".join(f"{r}: {n}" for r, n in self.rejected.most_common())
            )
        if self.skipped:
            parts.append(
                f"skipped {self.skipped_count} spans that are not agent steps: "
                + "; ".join(f"{r}: {n}" for r, n in self.skipped.most_common())
            )
        if self.altered:
            parts.append(
                f"replaced U+0000 (which the log's stores cannot hold) by U+FFFD in the "
                f"texts of {self.altered} spans"
            )
        return ". ".join(parts)


# --- ids and small helpers ---------------------------------------------------------------


def event_id(trace_id: bytes, span_id: bytes, phase: str, unix_ms: int) -> str:
    """A UUIDv7 whose time is ``unix_ms`` and whose other bits hash the span and phase.

    Layout (RFC 9562): 48 bits of milliseconds, version 7, 12 hash bits, variant 0b10,
    62 hash bits; built from hex strings because this runs for every event.
    """
    return _eid(trace_id + span_id + phase.encode(), unix_ms)


def _eid(key: bytes, unix_ms: int, _blake: Any = hashlib.blake2b) -> str:
    """:func:`event_id` of ``trace_id + span_id + phase`` (the hot path: ~1.2 µs)."""
    d = _blake(key, digest_size=10).hexdigest()
    t = "%012x" % (unix_ms & 0xFFFF_FFFF_FFFF)
    return f"{t[:8]}-{t[8:]}-7{d[:3]}-{_VARIANT[d[3]]}{d[4:7]}-{d[7:19]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


_BY_PAYLOAD: dict[type, tuple[type, str]] = {
    payload: (cls, EventType.parse(cls.__struct_config__.tag).dataschema)  # type: ignore[arg-type,union-attr]
    for payload, cls in CLASS_BY_PAYLOAD.items()
}


_Env = tuple[str, str, str, str, str]
"""The envelope fields every event of one span shares: agent id, run id, tenant,
traceparent, source (a plain tuple: building it is the cheapest)."""


def _build(data: p.Payload, eid: str, at: datetime, causes: list[str], env: _Env) -> Event:
    """What ``schemas.envelope.new_event`` does, with the per-type lookups precomputed
    (this runs for every event)."""
    cls, dataschema = _BY_PAYLOAD[type(data)]
    agentid, runid, tenant, traceparent, source = env
    return cls(  # type: ignore[no-any-return]
        specversion=SPECVERSION,
        id=eid,
        time=at,
        causes=tuple(causes),
        dataschema=dataschema,
        data=data,
        agentid=agentid,
        runid=runid,
        tenant=tenant,
        traceparent=traceparent,
        source=source,
    )


def _time(ns: int, _at: Any = datetime.fromtimestamp, _utc: Any = UTC) -> datetime:
    """Nanoseconds since the epoch as an aware datetime, truncated to the microsecond.

    The float seconds carry an error below 0.5 µs for every time before 2106 (the
    contract's limit), so rounding gives back the exact microsecond; fromtimestamp is the
    fastest way to build the datetime (this runs for every event)."""
    return _at((ns // 1000) / 1e6, _utc)  # type: ignore[no-any-return]


def _any(v: Any) -> Any:
    """An OTLP AnyValue as a Python value (U+0000 in a string or key replaced: _denul)."""
    which = v.WhichOneof("value")
    if which == "string_value":
        return _denul(v.string_value)
    if which == "int_value":
        return v.int_value
    if which == "double_value":
        return v.double_value
    if which == "bool_value":
        return v.bool_value
    if which == "array_value":
        return [_any(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {_denul(kv.key): _any(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return None


# --- U+0000 --------------------------------------------------------------------------------
# The contract refuses U+0000 in any string (the graph store holds C strings), so an event
# carrying one would be dead-lettered by every consumer. A span's texts are kept with each
# U+0000 replaced by U+FFFD (the replacement character) and the span is counted in the
# export's answer ("altered"): a stray NUL in a tool's output is no reason to lose the tool
# call. Literal NULs are caught where strings are read from the protobuf; JSON escapes
# (\u0000) where the mapping parses an attribute's JSON.

_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # \u0000 not preceded by an odd \


class _NulCount(threading.local):
    """Texts altered so far in this thread (map_request compares it around each span)."""

    n = 0


_nul = _NulCount()


def _denul(s: str) -> str:
    if "\x00" in s:
        _nul.n += 1
        return s.replace("\x00", "\ufffd")
    return s


SPAN_ATTRIBUTES = frozenset(
    {
        "agent.name",
        "error.type",
        "gen_ai.agent.description",
        "gen_ai.agent.name",
        "gen_ai.conversation.id",
        "gen_ai.operation.name",
        "gen_ai.output.messages",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.system",
        "gen_ai.system_instructions",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.id",
        "gen_ai.tool.call.result",
        "gen_ai.tool.definitions",
        "gen_ai.tool.name",
        "gen_ai.usage.completion_tokens",
        "gen_ai.usage.cost",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.prompt_tokens",
        "input.value",
        "llm.cost.total",
        "llm.model_name",
        "llm.provider",
        "llm.request.model_name",
        "llm.request.type",
        "llm.system",
        "llm.token_count.completion",
        "llm.token_count.prompt",
        "openinference.span.kind",
        "output.value",
        "session.id",
        "tool.id",
        "tool.name",
        "tool_call.id",
        "traceloop.entity.input",
        "traceloop.entity.name",
        "traceloop.entity.output",
        "traceloop.span.kind",
        "traceloop.workflow.name",
    }
)
"""Every span attribute the mapping reads (tests/test_otlp_golden.py checks the list against
this module's code); with SPAN_ATTRIBUTE_PREFIXES, the only ones whose values are read."""

SPAN_ATTRIBUTE_PREFIXES = (
    "gen_ai.prompt.",
    "gen_ai.completion.",
    "llm.output_messages.",
    "llm.tools.",
    "llm.request.functions.",
)


def span_attributes(
    kvs: Iterable[Any],
    read: frozenset[str] = SPAN_ATTRIBUTES,
    prefixes: tuple[str, ...] = SPAN_ATTRIBUTE_PREFIXES,
) -> dict[str, Any]:
    """The attributes the mapping reads (``read``, or starting with one of ``prefixes``), as
    a dict. Reading an attribute's value out of the protobuf builds two objects; prompts,
    HTTP details and the like, a third or more of a GenAI span's attributes, are never read,
    so their values are left in the protobuf (and a U+0000 in them alters nothing)."""
    out: dict[str, Any] = {}
    for kv in kvs:
        k = kv.key
        if k in read or k.startswith(prefixes):
            v = kv.value
            s = v.string_value
            # a non-empty string_value is the string case; only the rest needs WhichOneof
            if s:
                out[k] = _denul(s) if "\x00" in s else s
            else:
                out[k] = _any(v)
    return out


def attributes(kvs: Iterable[Any]) -> dict[str, Any]:
    """Span or resource attributes as a dict (strings, the common case, inline)."""
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        s = v.string_value
        # a non-empty string_value is the string case; only the rest needs WhichOneof
        if s:
            out[kv.key] = _denul(s) if "\x00" in s else s
        else:
            out[kv.key] = _any(v)
    return out


def _str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    return msgspec.json.encode(v).decode()


def _int(v: Any, cap: int = p.UINT32_MAX) -> int:
    """A count in the contract's range (tokens are UInt32 in every store)."""
    if type(v) is int:  # the usual case, without the try
        return min(cap, max(0, v))
    try:
        return min(cap, max(0, int(v)))
    except (TypeError, ValueError, OverflowError):
        return 0


def _float(v: Any, cap: float = p.MAX_COST_USD) -> float:
    if v is None:  # the usual case (no cost attribute): no exception to raise and catch
        return 0.0
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return min(cap, f) if f > 0 else 0.0  # NaN compares False: 0.0


def _sfirst(a: dict[str, Any], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that is set, as text (the common case: one dict lookup hit)."""
    for n in names:
        v = a.get(n)
        if v is not None and v != "":
            return v if isinstance(v, str) else _str(v)
    return None


def _vfirst(a: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The first of ``names`` that is set (any value)."""
    for n in names:
        v = a.get(n)
        if v is not None and v != "":
            return v
    return None


def _loads(v: Any) -> Any:
    if isinstance(v, str):
        if "\\u0000" in v:  # a JSON-escaped NUL: replaced before decoding (see _denul)
            fixed = _NUL_ESCAPE.sub(r"\1\\ufffd", v)
            if fixed != v:
                _nul.n += 1
                v = fixed
        try:
            return _json.decode(v)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return v
    return v


def _as_arguments(v: Any) -> dict[str, Any]:
    """Tool arguments as an object; anything the contract cannot hold exactly (nesting past
    32 levels, integers beyond int64, non-finite floats) is kept as its JSON text."""
    raw = v
    v = _loads(v)
    if v is None:
        return {}
    # the walk first: for the usual small arguments it is far cheaper than the text scan
    # (the regex costs ~50 ns a character); both are pure, so the order does not matter
    if not (_json_safe(v, 0) or _plainly_safe(raw)):
        return {"input": raw if isinstance(raw, str) else _str(raw)}
    if isinstance(v, dict):
        return v
    return {"input": v}


_LONG_NUMBER = re.compile(r"\d{19}")


def _plainly_safe(raw: Any) -> bool:
    """JSON text that cannot nest past 32 levels nor hold an integer past int64 (and JSON
    has no NaN): the usual case, decided without walking the decoded value."""
    return (
        isinstance(raw, str)
        and raw.count("{") + raw.count("[") <= 32
        and _LONG_NUMBER.search(raw) is None
    )


def _json_safe(v: Any, depth: int) -> bool:
    """Nesting within 32 levels, integers within int64, floats finite. Exact type checks:
    the values come from JSON or OTLP attributes (no subclasses), and strings, the usual
    leaves, are passed over without a call."""
    if depth > 32:
        return False
    t = type(v)
    if (t is dict or t is list) and depth == 32:
        return not v  # a child would be at depth 33, whatever it is
    if t is dict:
        for x in v.values():  # noqa: SIM110 (all() of a generator: the cost this avoids)
            if type(x) is not str and not _json_safe(x, depth + 1):
                return False
        return True
    if t is list:
        for x in v:  # noqa: SIM110
            if type(x) is not str and not _json_safe(x, depth + 1):
                return False
        return True
    if t is int:
        return -(2**63) <= v < 2**63  # type: ignore[no-any-return]
    if t is float:
        return v == v and abs(v) != float("inf")  # type: ignore[no-any-return]
    return True


def schema_version(url: str) -> tuple[int, int] | None:
    m = _SCHEMA_RE.search(url or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _unsupported_schema(url: str) -> str | None:
    v = schema_version(url)
    if v is None:
        return None
    lo, hi = SUPPORTED_SEMCONV
    if lo <= v <= hi:
        return None
    return (
        f"semantic conventions {v[0]}.{v[1]} (schema_url {url}) not supported: "
        f"this receiver reads {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}"
    )


# --- classification ----------------------------------------------------------------------


def classify(a: dict[str, Any]) -> tuple[Kind, str | None]:
    """(kind, skip reason). The reason says why a GenAI-looking span has no event type."""
    op = a.get(OPERATION)
    if isinstance(op, str) and op:
        if op in LLM_OPERATIONS:
            return _LLM, None
        if op in TOOL_OPERATIONS:
            return _TOOL, None
        if op in AGENT_OPERATIONS:
            return _AGENT, None
        if op in CREATE_AGENT_OPERATIONS:
            return _CREATE_AGENT, None
        return _OTHER, f"gen_ai.operation.name {op!r} (no event type)"
    oi = a.get(OI_KIND)
    if isinstance(oi, str) and oi:
        k = oi.upper()
        if k == "LLM":
            return _LLM, None
        if k == "TOOL":
            return _TOOL, None
        if k == "AGENT":
            return _AGENT, None
        if k == "CHAIN":
            return _STRUCTURAL, None  # a root chain becomes a run (see map_request)
        return _OTHER, f"openinference.span.kind {oi!r} (no event type)"
    tl = a.get(TL_KIND)
    if isinstance(tl, str) and tl:
        k = tl.lower()
        if k == "workflow":
            return _WORKFLOW, None
        if k == "agent":
            return _AGENT, None
        if k == "tool":
            return _TOOL, None
        if k == "task":
            return _STRUCTURAL, None
        return _OTHER, f"traceloop.span.kind {tl!r} (no event type)"
    rt = a.get(TL_REQUEST_TYPE)
    if isinstance(rt, str) and rt:
        if rt in ("chat", "completion"):
            return _LLM, None
        return _OTHER, f"llm.request.type {rt!r} (no event type)"
    for key in a:
        if key.startswith(("gen_ai.prompt.", "gen_ai.completion.")):
            return _LLM, None
    if "gen_ai.request.model" in a or "gen_ai.system" in a:
        return _LLM, None
    return _OTHER, None


_OTHER_REASONS = {
    k: f"not a GenAI span ({name})"
    for k, name in enumerate(
        ("unspecified", "internal", "server", "client", "producer", "consumer")
    )
}


def _other_reason(span: Any) -> str:
    return _OTHER_REASONS.get(span.kind, "not a GenAI span (unspecified)")


# --- what a span says (each convention's spelling) -------------------------------------------

_AGENT_NAMES = ("gen_ai.agent.name", "agent.name")
_RUN_KEYS = ("gen_ai.conversation.id", "session.id")


def _agent_of(a: dict[str, Any], kind: Kind) -> str | None:
    v = _sfirst(a, _AGENT_NAMES)
    if v is None and kind in (_AGENT, _WORKFLOW):
        v = _sfirst(a, ("traceloop.entity.name", "traceloop.workflow.name"))
    return v


def _indexed(a: dict[str, Any], prefix: str) -> dict[int, dict[str, Any]]:
    """``prefix.<i>.<rest>`` attributes grouped by i (OpenInference and OpenLLMetry lists)."""
    out: dict[int, dict[str, Any]] = {}
    plen = len(prefix)
    for key, value in a.items():
        if not key.startswith(prefix):
            continue
        idx, _, rest = key[plen:].partition(".")
        if idx.isdigit():
            out.setdefault(int(idx), {})[rest] = value
    return dict(sorted(out.items()))


_Call = tuple[str | None, str | None, Any]
"""A tool call a model call chose: (call id, tool name, arguments)."""

_LlmView = tuple[str, tuple[str, ...]]
"""What a model call said: its output text and the ids of the tool calls it chose. (The
prompt messages are not read: no event carries them, see docs/otel.md.)"""


def _genai_output(raw: Any, texts: list[str], calls: list[_Call]) -> None:
    """``gen_ai.output.messages``: each message's text parts, and its tool calls."""
    msgs = _loads(raw)
    if type(msgs) is not list:
        return
    for m in msgs:
        if type(m) is not dict:
            continue
        parts = m.get("parts")
        if type(parts) is not list:
            content = m.get("content")
            texts.append(content if isinstance(content, str) else "")
            continue
        # one pass over the parts: the text parts' content and the tool calls
        chunks: list[str] = []
        for pt in parts:
            if type(pt) is not dict:
                continue
            kind = pt.get("type")
            if kind == "text":
                chunks.append(str(pt.get("content", "")))
            elif kind == "tool_call":
                calls.append((_str(pt.get("id")), _str(pt.get("name")), pt.get("arguments")))
        texts.append(chunks[0] if len(chunks) == 1 else "".join(chunks))


def _llm_view(a: dict[str, Any]) -> _LlmView:
    """Output text and tool calls chosen, whichever convention carries them.

    One convention per span (the latest GenAI attributes, else OpenInference's, else
    OpenLLMetry's), so each span's attributes are scanned once.
    """
    calls: list[_Call] = []
    texts: list[str] = []
    raw_out = a.get("gen_ai.output.messages")
    if raw_out is not None:
        _genai_output(raw_out, texts, calls)
    elif OI_KIND in a:
        for m in _indexed(a, "llm.output_messages.").values():
            texts.append(_str(m.get("message.content")) or "")
            for tc in _indexed(m, "message.tool_calls.").values():
                calls.append(
                    (
                        _str(tc.get("tool_call.id")),
                        _str(tc.get("tool_call.function.name")),
                        _loads(tc.get("tool_call.function.arguments")),
                    )
                )
    else:
        for m in _indexed(a, "gen_ai.completion.").values():
            texts.append(_str(m.get("content")) or "")
            for tc in _indexed(m, "tool_calls.").values():
                calls.append(
                    (_str(tc.get("id")), _str(tc.get("name")), _loads(tc.get("arguments")))
                )
    text = texts[0] if len(texts) == 1 else "\n".join([x for x in texts if x])
    if not text and calls:
        text = "calls " + ", ".join([f"{c[1] or '?'}({_str(c[2]) or ''})" for c in calls])
    if not text:
        text = _sfirst(a, ("output.value", "traceloop.entity.output")) or ""
    return text, tuple([c[0] for c in calls if c[0]])


# --- the mapping ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Ctx:
    """Per-resource/scope context of the spans being mapped."""

    service: str
    tenant: str
    source: str
    resource_agent: str | None
    schema_problem: str | None
    altered: bool = False  # a U+0000 replaced in the resource's or scope's texts


_ZERO16, _ZERO8 = bytes(16), bytes(8)


def _valid_ids(tid: bytes, sid: bytes, psid: bytes, start: int, end: int) -> str | None:
    if len(tid) != 16 or tid == _ZERO16:
        return "missing or invalid trace id (need 16 non-zero bytes)"
    if len(sid) != 8 or sid == _ZERO8:
        return "missing or invalid span id (need 8 non-zero bytes)"
    if psid and len(psid) != 8:
        return "invalid parent span id (need 8 bytes)"
    if start == 0 or end == 0:
        return "missing start or end time"
    if end < start:
        return "span ends before it starts"
    if end >= _MAX_NS:
        return "time out of range (events must be before 2106-01-01)"
    return None


_GROUPING = "GenAI grouping span (nested chain or task): no event"
_EXCEPTION_KEYS = frozenset({"exception.type", "exception.message"})
_RESOURCE_KEYS = frozenset(
    {"service.name", "agentstream.tenant", "gen_ai.agent.name", "agent.name"}
)


def map_request(
    request: Any,
    memory: TraceMemory,
    *,
    tenant: str | None = None,
) -> MappedBatch:
    """Map an ``ExportTraceServiceRequest`` to events.

    ``tenant``: the tenant the caller authenticated as (a token's tenant); it wins over the
    ``agentstream.tenant`` resource attribute. Events come out in time order (a span's
    start before its end), so one agent's events are applied in the order they happened.
    """
    batch = MappedBatch()
    nul = _nul
    skipped, rejected = batch.skipped, batch.rejected
    remember = memory.remember
    last_tid = b""
    t = _Trace()
    n_spans = 0
    pending: list[tuple[_S, dict[str, Any], Kind, _Ctx, _LlmView | None, bool]] = []
    # pass 1: validate, classify and remember every span, so that spans of the same
    # batch can be linked whatever their order in the request
    for rs in request.resource_spans:
        n0 = nul.n
        ra = span_attributes(rs.resource.attributes, _RESOURCE_KEYS, ())
        service = _str(ra.get("service.name")) or "unknown_service"
        res_tenant = tenant or _str(ra.get("agentstream.tenant")) or "default"
        res_agent = _sfirst(ra, _AGENT_NAMES)
        res_problem = _unsupported_schema(rs.schema_url)
        res_altered = nul.n != n0
        for ss in rs.scope_spans:
            n0 = nul.n
            scope = _denul(ss.scope.name) or "unknown-scope"
            problem = _unsupported_schema(ss.schema_url) or res_problem
            ctx = _Ctx(
                service,
                res_tenant,
                f"/otlp/{service}/{scope}",
                res_agent,
                problem,
                res_altered or nul.n != n0,
            )
            for span in ss.spans:
                n_spans += 1
                tid, sid, psid = span.trace_id, span.span_id, span.parent_span_id
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                if not (  # the usual case in one expression; _valid_ids says what is wrong
                    len(tid) == 16
                    and len(sid) == 8
                    and (not psid or len(psid) == 8)
                    and 0 < start <= end < _MAX_NS
                    and tid != _ZERO16
                    and sid != _ZERO8
                ):
                    bad = _valid_ids(tid, sid, psid, start, end)
                    if bad is not None:
                        rejected[bad] += 1
                        continue
                if tid != last_tid:  # a request's spans come grouped by trace, mostly
                    t, last_tid = memory.trace(tid), tid
                n1 = nul.n
                a = span_attributes(span.attributes)
                kind, why = classify(a)
                if kind is _OTHER:
                    skipped[why or _other_reason(span)] += 1
                    remember(tid, sid, SpanNode(kind, psid, start, end), t)
                    continue
                if ctx.schema_problem is not None:
                    rejected[ctx.schema_problem] += 1
                    continue
                agent = _agent_of(a, kind)
                if kind is _STRUCTURAL:
                    parent = t.spans.get(psid) if psid else None
                    if not psid or (parent is not None and parent.kind is _OTHER):
                        kind = _WORKFLOW  # a root chain is the run
                        agent = _agent_of(a, kind)
                elif kind is _AGENT and agent is None:
                    kind = _WORKFLOW  # no agent named: a workflow (the Agents SDK's root)
                    agent = _agent_of(a, kind)
                node = SpanNode(kind, psid, start, end, agent, _sfirst(a, _RUN_KEYS))
                view = None
                if kind is _LLM:
                    view = _llm_view(a)
                    node.tool_call_ids = view[1]
                    node.tools = _tool_definitions(a) or None
                remember(tid, sid, node, t)
                if kind is _STRUCTURAL:
                    skipped[_GROUPING] += 1
                    continue
                pending.append(
                    ((span, t, tid, sid, psid, start, end), a, kind, ctx, view, nul.n != n1)
                )
    batch.spans = n_spans
    # pass 2: build the events, in time order; at the same instant what ends (a thought, a
    # completion) goes before what starts (the tool call it led to), and a span's own events
    # keep their order. The order key (time, ends first, span, rank) is unique, packed in
    # one int: sorting ints is far cheaper than sorting tuples.
    keys: list[int] = []
    built: list[Event] = []
    spans_of: list[int] = []
    altered = 0
    for n, (sv, a, kind, ctx, view, alt) in enumerate(pending):
        start, end = sv[5], sv[6]
        n1 = nul.n
        events = _events(sv, a, kind, ctx, view)
        if alt or ctx.altered or nul.n != n1:
            altered += 1
        for rank, (is_start, event) in enumerate(events):
            if is_start:
                keys.append((((start << 1) | 1) << 34 | n) << 2 | rank)
            else:
                keys.append((((end << 1) | (start == end)) << 34 | n) << 2 | rank)
            built.append(event)
            spans_of.append(n)
    batch.mapped = len(pending)
    batch.altered = altered
    order = sorted(range(len(keys)), key=keys.__getitem__)
    batch.events = [built[i] for i in order]
    batch.event_spans = [spans_of[i] for i in order]
    return batch


def _identity(
    t: _Trace, node: SpanNode, ctx: _Ctx, trace_hex: str
) -> tuple[str, str, bytes | None]:
    """(agent id, run id, span id of the nearest known emitting ancestor, if any), walking
    parent, grandparent, ... as far as known (at most 64 steps).

    An ancestor not seen yet (it ends later, so it is usually exported later) gives no link:
    its event id needs its start time. Links are missing then, never wrong.
    """
    agent = node.agent
    run = node.run
    cause: bytes | None = None
    spans = t.spans
    parent = node.parent
    seen = 0
    while parent and seen < 64:
        anc = spans.get(parent)
        if anc is None:
            break
        if cause is None and anc.kind in _EMITTING:
            cause = parent
        agent = agent or anc.agent
        run = run or anc.run
        if agent and run and cause:
            break
        parent = anc.parent
        seen += 1
    agent = agent or ctx.resource_agent or ctx.service
    return agent[:256], run or trace_hex, cause


_SCAN_LIMIT = 48
"""Up to this many model and tool calls in a trace, a scan of them is cheaper than building
an index; past it the scans would make a long trace quadratic (each call scans them all)."""


class _Index:
    """A trace's model and tool calls sorted by (end time, order seen), and its model calls
    by the tool call ids they chose: what _chooser and _inputs_of_llm look for, in
    logarithmic time. Built from the trace as it is (``version``), so a span id reused by a
    later span is seen exactly as the scans see it."""

    __slots__ = ("by_call", "llm_ends", "llm_rows", "tool_ends", "tool_rows", "version")

    def __init__(self, t: _Trace) -> None:
        spans = t.spans
        self.version = t.version
        self.llm_rows = sorted([(spans[sid].end_ns, i, sid) for i, sid in enumerate(t.llms)])
        self.llm_ends = [r[0] for r in self.llm_rows]
        self.tool_rows = sorted([(spans[sid].end_ns, i, sid) for i, sid in enumerate(t.tools)])
        self.tool_ends = [r[0] for r in self.tool_rows]
        self.by_call: dict[str, list[bytes]] = {}
        for sid in t.llms:  # in the order seen
            for call in spans[sid].tool_call_ids:
                self.by_call.setdefault(call, []).append(sid)

    def latest(self, before_ns: int, exclude: bytes | None) -> tuple[int, int, bytes] | None:
        """The model call that ended last at or before ``before_ns`` (the first seen among
        those ending at the same time), other than ``exclude``."""
        ends, rows = self.llm_ends, self.llm_rows
        i = bisect_right(ends, before_ns)
        while i > 0:
            j = bisect_left(ends, ends[i - 1], 0, i)
            for k in range(j, i):
                if rows[k][2] != exclude:
                    return rows[k]
            i = j
        return None


def _index(t: _Trace) -> _Index | None:
    if len(t.llms) + len(t.tools) <= _SCAN_LIMIT:
        return None
    ix = t.index
    if ix is None or ix.version != t.version:
        ix = t.index = _Index(t)
    return ix


def _chooser(t: _Trace, start_ns: int, call_id: str | None) -> bytes | None:
    """The model call that chose a tool: the one whose output names its call id, else the
    latest model call of the trace that ended before the tool started."""
    ix = _index(t)
    if ix is None:
        return _chooser_scan(t, start_ns, call_id)
    return _chooser_indexed(t, ix, start_ns, call_id)


def _chooser_indexed(t: _Trace, ix: _Index, start_ns: int, call_id: str | None) -> bytes | None:
    if call_id:
        for sid in ix.by_call.get(call_id, ()):
            if t.spans[sid].end_ns <= start_ns:
                return sid
    row = ix.latest(start_ns, None)
    return row[2] if row is not None else None


def _chooser_scan(t: _Trace, start_ns: int, call_id: str | None) -> bytes | None:
    best: tuple[int, bytes] | None = None
    for sid in t.llms:
        n = t.spans[sid]
        if n.end_ns > start_ns:
            continue
        if call_id and call_id in n.tool_call_ids:
            return sid
        if best is None or n.end_ns > best[0]:
            best = (n.end_ns, sid)
    return best[1] if best else None


def _inputs_of_llm(t: _Trace, span_id: bytes, start_ns: int) -> list[bytes]:
    """What a model call read: tool results that ended since the previous model call, or
    else that previous model call."""
    ix = _index(t)
    if ix is None:
        return _inputs_of_llm_scan(t, span_id, start_ns)
    return _inputs_of_llm_indexed(t, ix, span_id, start_ns)


def _inputs_of_llm_indexed(t: _Trace, ix: _Index, span_id: bytes, start_ns: int) -> list[bytes]:
    row = ix.latest(start_ns, span_id)
    prev_end, prev = (row[0], row[2]) if row is not None else (-1, None)
    spans = t.spans
    lo = bisect_left(ix.tool_ends, prev_end)
    hi = bisect_right(ix.tool_ends, start_ns)
    found = [r for r in ix.tool_rows[lo:hi] if spans[r[2]].start_ns >= prev_end]
    if found:
        found.sort(key=_seen)  # in the order seen, as the scan gives them
        return [r[2] for r in found]
    return [prev] if prev is not None else []


def _seen(row: tuple[int, int, bytes]) -> int:
    return row[1]


def _inputs_of_llm_scan(t: _Trace, span_id: bytes, start_ns: int) -> list[bytes]:
    prev_end = -1
    prev: bytes | None = None
    for sid in t.llms:
        if sid == span_id:
            continue
        n = t.spans[sid]
        if n.end_ns <= start_ns and n.end_ns > prev_end:
            prev_end, prev = n.end_ns, sid
    tools = [
        sid
        for sid in t.tools
        if prev_end <= t.spans[sid].end_ns <= start_ns and t.spans[sid].start_ns >= prev_end
    ]
    if tools:
        return tools
    return [prev] if prev is not None else []


def _status(span: Any, a: dict[str, Any]) -> tuple[bool, str | None, str]:
    """(failed, error type, message) from the span status, ``error.type`` and exceptions."""
    status = span.status  # each read of a protobuf field builds an object: read it once
    failed = status.code == 2  # STATUS_CODE_ERROR
    err_type = _str(a.get("error.type"))
    message = status.message
    if message and "\x00" in message:
        message = _denul(message)
    for ev in span.events:
        if ev.name == "exception":
            ea = span_attributes(ev.attributes, _EXCEPTION_KEYS, ())
            err_type = err_type or _str(ea.get("exception.type"))
            message = message or _str(ea.get("exception.message")) or ""
    return failed or err_type is not None, err_type, message


# the event class and dataschema of each payload, looked up once
_THOUGHT = _BY_PAYLOAD[p.Thought]
_ACT_STARTED = _BY_PAYLOAD[p.ActionStarted]
_ACT_COMPLETED = _BY_PAYLOAD[p.ActionCompleted]
_RUN_STARTED = _BY_PAYLOAD[p.RunStarted]
_RUN_FINISHED = _BY_PAYLOAD[p.RunFinished]
_MODEL_KEYS = (
    "gen_ai.response.model",
    "gen_ai.request.model",
    "llm.model_name",
    "llm.request.model_name",
)
_PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
_INPUT_TOKEN_KEYS = (
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.token_count.prompt",
)
_OUTPUT_TOKEN_KEYS = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
)
_COST_KEYS = ("llm.cost.total", "gen_ai.usage.cost")
_CALL_ID_KEYS = ("gen_ai.tool.call.id", "tool_call.id", "tool.id")
_TOOL_KEYS = ("gen_ai.tool.name", "tool.name", "traceloop.entity.name")
_ARGUMENT_KEYS = ("gen_ai.tool.call.arguments", "input.value", "traceloop.entity.input")
_RESULT_KEYS = ("gen_ai.tool.call.result", "output.value", "traceloop.entity.output")
_GOAL_KEYS = ("input.value", "traceloop.entity.input", "gen_ai.agent.description")
_SUMMARY_KEYS = ("output.value", "traceloop.entity.output")
_FLAGS_HEX = [f"{f:02x}" for f in range(256)]  # the traceparent's flags (a format is slower)


def _events(
    sv: _S,
    a: dict[str, Any],
    kind: Kind,
    ctx: _Ctx,
    view: _LlmView | None = None,
) -> list[tuple[bool, Event]]:
    """The events of one span: (at its start?, event)."""
    span, t, trace_id, span_id, psid, start_ns, end_ns = sv
    node = t.spans.get(span_id)
    trace_hex = t.hex
    if trace_hex is None:
        trace_hex = t.hex = trace_id.hex()
    # ``own``: this span's memory node, whose ``ref`` (see _ref) is one of the ids below;
    # share it both ways rather than hash twice (same inputs, so the same id)
    own = node
    if node is None:  # the trace outgrew the memory: map without links
        node = SpanNode(kind, psid, start_ns, end_ns, _agent_of(a, kind), _sfirst(a, _RUN_KEYS))
    elif node.kind is not kind or node.start_ns != start_ns or node.end_ns != end_ns:
        own = None  # a later span reused the span id
    agent, run, parent = _identity(t, node, ctx, trace_hex)
    duration_ms = (end_ns - start_ns) / 1e6
    if duration_ms > _MAX_DURATION_MS:
        duration_ms = _MAX_DURATION_MS
    tenant, source = ctx.tenant, ctx.source
    traceparent = f"00-{trace_hex}-{span_id.hex()}-{_FLAGS_HEX[span.flags & 0xFF]}"
    key = trace_id + span_id

    if kind is _LLM:
        if view is None:
            view = _llm_view(a)
        inputs = _inputs_of_llm(t, span_id, start_ns)
        if inputs:
            causes = tuple([_ref(t, trace_id, s) for s in inputs])
        else:
            causes = (_ref(t, trace_id, parent),) if parent else ()
        end_ms = end_ns // 1_000_000
        if own is not None and own.ref is not None:
            eid = own.ref
        else:
            eid = _eid(key + b"open", end_ms)
            if own is not None:
                own.ref = eid
        cls, dataschema = _THOUGHT
        return [
            (
                False,
                cls(
                    specversion=SPECVERSION,
                    id=eid,
                    time=_time(end_ns),
                    causes=causes,
                    dataschema=dataschema,
                    data=p.Thought(
                        text=view[0],
                        model=_sfirst(a, _MODEL_KEYS) or "unknown",
                        provider=_sfirst(a, _PROVIDER_KEYS),
                        input_tokens=_int(_vfirst(a, _INPUT_TOKEN_KEYS)),
                        output_tokens=_int(_vfirst(a, _OUTPUT_TOKEN_KEYS)),
                        latency_ms=duration_ms,
                        cost_usd=_float(_vfirst(a, _COST_KEYS)),
                    ),
                    agentid=agent,
                    runid=run,
                    tenant=tenant,
                    traceparent=traceparent,
                    source=source,
                ),
            )
        ]

    if kind is _TOOL:
        call_id = _sfirst(a, _CALL_ID_KEYS) or f"span-{span_id.hex()}"
        tool = _sfirst(a, _TOOL_KEYS) or _denul(span.name) or "tool"
        chooser = _chooser(t, start_ns, call_id)
        if chooser is not None:
            causes = (_ref(t, trace_id, chooser),)
        else:
            causes = (_ref(t, trace_id, parent),) if parent else ()
        started_id = _eid(key + b"open", start_ns // 1_000_000)
        cls, dataschema = _ACT_STARTED
        started = cls(
            specversion=SPECVERSION,
            id=started_id,
            time=_time(start_ns),
            causes=causes,
            dataschema=dataschema,
            data=p.ActionStarted(
                call_id=call_id, tool=tool, arguments=_as_arguments(_vfirst(a, _ARGUMENT_KEYS))
            ),
            agentid=agent,
            runid=run,
            tenant=tenant,
            traceparent=traceparent,
            source=source,
        )
        failed, err_type, message = _status(span, a)
        result = _sfirst(a, _RESULT_KEYS) or ""
        if own is not None and own.ref is not None:
            eid = own.ref
        else:
            eid = _eid(key + b"close", end_ns // 1_000_000)
            if own is not None:
                own.ref = eid
        cls, dataschema = _ACT_COMPLETED
        completed = cls(
            specversion=SPECVERSION,
            id=eid,
            time=_time(end_ns),
            causes=(started_id,),
            dataschema=dataschema,
            data=p.ActionCompleted(
                call_id=call_id,
                tool=tool,
                status="error" if failed else "ok",
                result=result or (message if failed else ""),
                error_type=err_type or ("error" if failed else None),
                duration_ms=duration_ms,
            ),
            agentid=agent,
            runid=run,
            tenant=tenant,
            traceparent=traceparent,
            source=source,
        )
        return [(True, started), (False, completed)]

    common = (agent, run, tenant, traceparent, source)
    parent_cause = [_ref(t, trace_id, parent)] if parent else []
    start_ms = start_ns // 1_000_000
    if own is not None and own.ref is not None:
        ref = own.ref
    else:
        ref = _eid(key + b"open", start_ms)
        if own is not None:
            own.ref = ref

    if kind is _CREATE_AGENT:
        return [(True, _agent_started(a, agent, ref, start_ns, parent_cause, common, t, span_id))]

    # an agent invocation, a workflow or a root chain: the run
    out: list[tuple[bool, Event]] = []
    run_causes = parent_cause
    if kind is _AGENT:
        lifecycle = _agent_started(
            a, agent, _eid(key + b"agent", start_ms), start_ns, parent_cause, common, t, span_id
        )
        out.append((True, lifecycle))
        run_causes = [lifecycle.id]
    goal = _sfirst(a, _GOAL_KEYS)
    if goal is None:
        name = span.name
        goal = _denul(name) if name else f"agent {agent}"
    started = _build(p.RunStarted(goal=goal), ref, _time(start_ns), run_causes, common)
    failed, err_type, message = _status(span, a)
    summary = _sfirst(a, _SUMMARY_KEYS) or message or ""
    finished = _build(
        p.RunFinished(status="failed" if failed else "succeeded", summary=summary),
        _eid(key + b"close", end_ns // 1_000_000),
        _time(end_ns),
        [started.id],
        common,
    )
    out += [(True, started), (False, finished)]
    return out


def _agent_started(
    a: dict[str, Any],
    agent: str,
    eid: str,
    start_ns: int,
    causes: list[str],
    common: _Env,
    t: _Trace,
    span_id: bytes,
) -> Event:
    """The agent's definition: name, description, model, instructions and tools (the tools
    from the span itself, else from the first of its model calls that was offered some)."""
    tools = _tool_definitions(a)
    if not tools:
        for sid in t.llms:
            n = t.spans[sid]
            if n.parent == span_id and n.tools:
                tools = n.tools
                break
    data = p.AgentStarted(
        name=_sfirst(a, _AGENT_NAMES) or agent,
        role=_str(a.get("gen_ai.agent.description")),
        model=_sfirst(a, ("gen_ai.request.model", "llm.model_name")),
        instructions=_instructions(a),
        tools=tools,
    )
    return _build(data, eid, _time(start_ns), causes, common)


def _instructions(a: dict[str, Any]) -> str | None:
    """``gen_ai.system_instructions``: a JSON list of parts (or plain text)."""
    v = a.get("gen_ai.system_instructions")
    if v is None:
        return None
    parsed = _loads(v)
    if isinstance(parsed, list):
        text = "\n".join(str(pt.get("content", "")) for pt in parsed if isinstance(pt, dict))
        return text or None
    return _str(parsed)


def _tool_definitions(a: dict[str, Any]) -> list[p.ToolDefinition]:
    """Tool definitions in each convention's spelling: GenAI ``gen_ai.tool.definitions``,
    OpenInference ``llm.tools.<i>.tool.json_schema``, OpenLLMetry
    ``llm.request.functions.<i>.*``. Malformed entries are left out."""
    raw: list[Any] = []
    v = _loads(a.get("gen_ai.tool.definitions"))
    if isinstance(v, list):
        raw = v
    elif "llm.tools.0.tool.json_schema" in a:
        raw = [_loads(x.get("tool.json_schema")) for x in _indexed(a, "llm.tools.").values()]
    elif "llm.request.functions.0.name" in a:
        raw = [
            {"name": x.get("name"), "description": x.get("description"),
             "parameters": _loads(x.get("parameters"))}
            for x in _indexed(a, "llm.request.functions.").values()
        ]  # fmt: skip
    out: list[p.ToolDefinition] = []
    for d in raw:
        if not isinstance(d, dict):
            continue
        fn = d.get("function") if isinstance(d.get("function"), dict) else d
        name = _str(fn.get("name"))
        if not name:
            continue
        params = fn.get("parameters")
        out.append(
            p.ToolDefinition(
                name=name,
                type=_str(d.get("type")) or "function",
                description=_str(fn.get("description")),
                parameters=params if isinstance(params, dict) and _json_safe(params, 0) else None,
            )
        )
    return out


def _ref(t: _Trace, trace_id: bytes, sid: bytes) -> str:
    """The id of the event that stands for a known span when another event follows from it:
    a model call's thought, a tool's completion, an agent's run start."""
    n = t.spans[sid]
    if n.ref is None:
        if n.kind is _LLM:
            n.ref = _eid(trace_id + sid + b"open", n.end_ns // 1_000_000)
        elif n.kind is _TOOL:
            n.ref = _eid(trace_id + sid + b"close", n.end_ns // 1_000_000)
        else:
            n.ref = _eid(trace_id + sid + b"open", n.start_ns // 1_000_000)
    return n.ref
