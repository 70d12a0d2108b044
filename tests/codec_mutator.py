"""A seeded mutator of event bytes, for the codec's fuzz test and bench/bench_fuzz.py.

Seeds are the committed corpus ``tests/data/codec_seeds.jsonl`` (one valid event per line:
every type, the old ``agent.act.completed.v1``, simulator events, values at every bound).
Each input is one seed with 1-3 mutations, chosen by a ``random.Random(seed)``, so a run is
reproducible and input ``i`` of seed ``s`` is always the same bytes:

- JSON-aware: a value replaced by a number, string or time at or past a bound (2^32, 2^63,
  1e308, year 1, ...), a key deleted, an unknown key, a key written twice (also spelled
  with an escape), ``type`` changed (other types; versions in Arabic-Indic digits,
  ``v01``, ``v99``), payloads swapped between types, containers nested 60-70 or thousands deep;
- byte-level, on the serialised text: bytes flipped, inserted, deleted, repeated,
  truncated, invalid UTF-8 spliced in, JSON tokens (``\\ud800``, ``1e999``, ``NaN``) spliced in.

Serialisation varies (compact or spaced, ``ensure_ascii`` or raw UTF-8) and numbers that
Python would not print (``1e-400``, ``-0``, ``1E+2``) are written verbatim.

``python tests/codec_mutator.py --write-seeds`` regenerates the corpus from the code.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SEEDS_PATH = Path(__file__).parent / "data" / "codec_seeds.jsonl"


class Raw:
    """A JSON token written verbatim (a number Python would print differently, or junk)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class Pairs:
    """An object as a list of (key, value): may name a key twice."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[Any, Any]]) -> None:
        self.items = items


NUMBERS: list[Any] = [
    0, 1, -1, 0.5, -0.0, 3.0, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 5_000_000_000, 2**53 + 1,
    2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**20, 10**30,
    1e9, 1e9 + 1, 1e12, 1.0000001e12, 1e15, 1e300, 1e308, 1.7976931348623157e308, -1e308,
    -1e9, -1e9 - 1, 5e-324, 1e-9, 0.1, 1.5e-5,
    Raw("1e999"), Raw("-1e999"), Raw("1e-400"), Raw("-0"), Raw("1E+2"), Raw("0.0e0"),
    Raw("1" + "0" * 400), Raw("1" + "0" * 5000), Raw("NaN"), Raw("Infinity"), Raw("01"),
    Raw("1."), Raw(".5"), Raw("+1"), Raw("0x10"), Raw("1e"), Raw("--1"),
]  # fmt: skip

TIMES = [
    "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999999Z", "1969-12-31T23:00:00-01:00",
    "1970-01-01T00:59:59+01:00", "2105-12-31T23:59:59.999999Z", "2106-01-01T00:00:00Z",
    "2106-01-01T00:30:00+01:00", "2105-12-31T23:30:00-01:00", "2106-02-07T06:28:15Z",
    "2299-12-31T23:59:59Z", "1900-01-01T00:00:00Z", "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-01:00",
    "0000-01-01T00:00:00Z", "2026-01-01T00:00:00", "2026-02-30T00:00:00Z",
    "2026-06-30T23:59:60Z", "2026-01-01T00:00:00+14:00", "2026-01-01T00:00:00-23:59",
    "2026-01-01T00:00:00.1234567Z", "2026-01-01T00:00:00.9999999Z", "2026-01-01t00:00:00z",
    "2026-01-01 00:00:00Z", "2026-01-01T00:00:00+0100", "2026-01-01", "", "now",
]  # fmt: skip

STRINGS = [
    "", " ", "\n", "\x00", "\x7f", "é", "ü✓", "😀", "\u2028", "\ufeff", "\\", '"', "'",
    "default", "application/json", "x" * 257, "y" * 5000, "v\u0661", "\u0661", "ok", "error",
    "succeeded", "human", "019c1c38-a400-7067-8cce-093f61790134",
    "019c1c38-a400-7067-8cce-093f61790134\n", "019C1C38-A400-7067-8CCE-093F61790134",
    "0b7e7a5c-2c53-4c1e-8f0c-6c8e1e1d2a3b",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
    "1.0", "0.3", "urn:agentstream:schema:agent.think.thought.v1",
    Raw('"\\ud800"'), Raw('"\\udc00\\ud800"'), Raw('"\\ud83d\\ude00"'), Raw('"\\u0000"'),
    Raw('"\\x41"'), Raw('"\\u12"'), Raw('"tab\tinside"'), Raw('"unterminated'),
]  # fmt: skip

TYPE_SUFFIXES = ["v1", "v2", "v0", "v01", "v9", "v99999999999", "v\u0661", "v+1", "v-1", "V1",
                 "v1 ", "v", "", "v\uff11"]  # fmt: skip

BYTES_INVALID_UTF8 = [b"\xff", b"\xfe", b"\xc3", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80",
                      b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"]  # fmt: skip
TOKENS = [b"{", b"}", b"[", b"]", b'"', b"\\", b",", b":", b"null", b"true", b"1e999",
          b"NaN", b'\\ud800', b"\x00", b" ", b"\n", b'"":', b",,", b"{}", b"[]"]  # fmt: skip


def load_seeds(path: Path = SEEDS_PATH) -> list[bytes]:
    return [line.encode() for line in path.read_text().splitlines() if line.strip()]


class _Special(Exception):
    pass


def _special(_value: Any) -> Any:
    raise _Special


def dumps(value: Any, ascii_: bool, spaced: bool) -> str:
    """JSON text of ``value``; :class:`Pairs` may repeat keys, :class:`Raw` is verbatim."""
    colon, comma = (": ", ", ") if spaced else (":", ",")
    try:  # the C encoder, unless the document holds a Raw or Pairs
        return json.dumps(value, ensure_ascii=ascii_, separators=(comma, colon), default=_special)
    except _Special:
        pass
    parts: list[str] = []

    def put(v: Any) -> None:
        if isinstance(v, Raw):
            parts.append(v.text)
        elif isinstance(v, str):
            parts.append(json.dumps(v, ensure_ascii=ascii_))
        elif isinstance(v, Pairs | dict):
            items = v.items if isinstance(v, Pairs) else v.items()
            parts.append("{")
            for i, (k, x) in enumerate(items):
                if i:
                    parts.append(comma)
                put(k)
                parts.append(colon)
                put(x)
            parts.append("}")
        elif isinstance(v, list):
            parts.append("[")
            for i, x in enumerate(v):
                if i:
                    parts.append(comma)
                put(x)
            parts.append("]")
        else:
            parts.append(json.dumps(v))

    put(value)
    return "".join(parts)


def _containers(doc: Any) -> list[tuple[tuple[Any, ...], Any]]:
    """(path, node) for every node, root first (iterative: documents may be deep)."""
    out: list[tuple[tuple[Any, ...], Any]] = []
    todo: list[tuple[tuple[Any, ...], Any]] = [((), doc)]
    while todo:
        path, node = todo.pop()
        out.append((path, node))
        if isinstance(node, dict):
            todo.extend(((*path, k), v) for k, v in node.items())
        elif isinstance(node, list):
            todo.extend(((*path, i), v) for i, v in enumerate(node))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return doc


def _nested(depth: int, rng: random.Random) -> Any:
    """``depth`` levels of arrays/objects; as verbatim text when deep (no Python recursion)."""
    if depth > 100:
        return Raw("[" * depth + "1" + "]" * depth)
    inner: Any = rng.choice([1, "x", None, [], {}])
    for _ in range(depth):
        inner = [inner] if rng.random() < 0.5 else {"k": inner}
    return inner


class Mutator:
    """Deterministic stream of mutated inputs from the seeds."""

    def __init__(self, seeds: list[bytes], seed: int = 0) -> None:
        self.seeds = seeds
        self.docs = [json.loads(s) for s in seeds]
        self.rng = random.Random(seed)
        self.types = sorted({d["type"] for d in self.docs if isinstance(d, dict)})
        self.datas = [d["data"] for d in self.docs if isinstance(d, dict) and "data" in d]

    def __iter__(self) -> Iterator[bytes]:
        while True:
            yield self.next()

    def next(self) -> bytes:
        rng = self.rng
        i = rng.randrange(len(self.seeds))
        if rng.random() < 0.03:
            return self.seeds[i]  # unmutated: the accepted side is exercised too
        doc = json.loads(self.seeds[i])
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
            doc = self._mutate_json(doc)
        text = dumps(doc, ascii_=rng.random() < 0.3, spaced=rng.random() < 0.3)
        raw = text.encode("utf-8", "surrogatepass")
        if rng.random() < 0.3:
            raw = self._mutate_bytes(raw)
        return raw

    def _value(self, old: Any) -> Any:
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            return rng.choice(NUMBERS)
        if r < 0.55:
            return rng.choice(TIMES)
        if r < 0.8:
            return rng.choice(STRINGS)
        if r < 0.85:
            return rng.choice([None, True, False, [], {}, [1, "a"], {"a": 1}])
        if r < 0.9 and isinstance(old, str) and old:
            j = rng.randrange(len(old))  # a near miss: one character changed
            return old[:j] + rng.choice("0aZ-.:\n \u0661é") + old[j + 1 :]
        if r < 0.95 and isinstance(old, int | float) and not isinstance(old, bool):
            return rng.choice([old + 1, old - 1, -old, old * 2**32, old * 1e300, str(old)])
        return _nested(rng.choice((2, 10, 63, 64, 65, 70, 200)), rng)

    def _mutate_json(self, doc: Any) -> Any:
        rng = self.rng
        nodes = _containers(doc)
        objects = [(p, n) for p, n in nodes if isinstance(n, dict)]
        op = rng.random()
        if op < 0.4:  # replace a value
            path, old = rng.choice(nodes[1:] or nodes)
            return _set(doc, path, self._value(old))
        if op < 0.5 and objects:  # delete a key
            _path, obj = rng.choice(objects)
            if obj:
                del obj[rng.choice(list(obj))]
            return doc
        if op < 0.57 and objects:  # an unknown key
            _path, obj = rng.choice(objects)
            obj[rng.choice(["colour", "Type", "agentId", "data ", "", "\u0000", "é"])] = 1
            return doc
        if op < 0.7 and objects:  # a key twice
            path, obj = rng.choice(objects)
            if obj:
                key = rng.choice(list(obj))
                other = self._value(obj[key]) if rng.random() < 0.7 else obj[key]
                if rng.random() < 0.2 and key:  # the second spelled with an escape
                    c = key[0]
                    escaped = Raw(f'"\\u{ord(c):04x}' + json.dumps(key)[2:])
                    pairs = Pairs([*obj.items(), (escaped, other)])
                else:
                    pairs = Pairs([*obj.items(), (key, other)])
                if rng.random() < 0.5:
                    pairs.items.reverse()
                return _set(doc, path, pairs)
            return doc
        if op < 0.8 and isinstance(doc, dict):  # the type
            r = rng.random()
            if r < 0.4:
                doc["type"] = rng.choice(self.types)
            else:
                base = rng.choice(self.types).rsplit(".", 1)[0]
                doc["type"] = base + "." + rng.choice(TYPE_SUFFIXES)
            return doc
        if op < 0.85 and isinstance(doc, dict):  # another type's payload
            doc["data"] = json.loads(json.dumps(rng.choice(self.datas)))
            return doc
        if op < 0.93:  # deep nesting somewhere
            path, _old = rng.choice(nodes)
            depth = rng.choice((60, 63, 64, 65, 66, 70, 1000, 5000))
            return _set(doc, path, _nested(depth, rng)) if path else doc
        # the root replaced
        return (
            rng.choice([[doc], "event", 42, None, Pairs([("type", doc.get("type"))])])
            if (isinstance(doc, dict))
            else doc
        )

    def _mutate_bytes(self, raw: bytes) -> bytes:
        rng = self.rng
        n = len(raw)
        if n == 0:
            return rng.choice(BYTES_INVALID_UTF8)
        j = rng.randrange(n)
        op = rng.random()
        if op < 0.2:  # flip a byte
            return raw[:j] + bytes([raw[j] ^ (1 << rng.randrange(8))]) + raw[j + 1 :]
        if op < 0.4:  # invalid UTF-8, preferably inside a string
            quote = raw.find(b'"', j)
            at = quote + 1 if quote >= 0 else j
            return raw[:at] + rng.choice(BYTES_INVALID_UTF8) + raw[at:]
        if op < 0.55:  # a JSON token
            return raw[:j] + rng.choice(TOKENS) + raw[j:]
        if op < 0.7:  # delete a span
            return raw[:j] + raw[j + rng.randint(1, 16) :]
        if op < 0.8:  # repeat a span
            k = min(n, j + rng.randint(1, 64))
            return raw[:k] + raw[j:k] + raw[k:]
        if op < 0.9:  # truncate
            return raw[:j]
        return rng.choice([b"", b" ", b"\n\t ", b"\xef\xbb\xbf" + raw, raw + b"\x00", raw + b" x"])


def _write_seeds(path: Path = SEEDS_PATH) -> int:
    """The corpus: every type with every field, v1 completions, simulator events, bounds."""
    from datetime import UTC, datetime, timedelta

    from schemas import payloads as p
    from schemas.codec import encode_event
    from schemas.envelope import MAX_TIME, MIN_TIME, new_event
    from schemas.ids import Uuid7Generator
    from streams.simulator import SimulationConfig, generate

    ids = Uuid7Generator(seed=11)
    t0 = datetime(2026, 2, 3, 4, 5, 6, 789_123, tzinfo=UTC)
    full = dict(
        runid="run-1", taskid="task-1", tenant="acme", traceparent=(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ), subject="scenario/x",
    )  # fmt: skip
    payloads: list[p.Payload] = [
        p.Thought(text="reasoning ü ✓ \"q\" \\ \n", model="gpt-4o", provider="openai",
                  input_tokens=12, output_tokens=34, latency_ms=56.5, cost_usd=0.0012),
        p.Plan(goal="g", steps=[p.PlanStep(id="a", description="first"),
                                p.PlanStep(id="b", description="second", depends_on=["a"])]),
        p.Decision(chosen="x", alternatives=["y", "z"], confidence=0.25, rationale="why"),
        p.ActionStarted(call_id="c1", tool="git", expected="ok",
                        arguments={"a": 1, "big": 2**70, "f": 1.5, "nested": {"b": [1, None]}}),
        p.ActionCompleted(call_id="c1", tool="git", status="error", result="boom",
                          actual="conflict", error_type="GitConflict", duration_ms=12.5),
        p.Message(to_agent="coder-1", text="hi", conversation_id="conv"),
        p.Lesson(situation="s", action="a", outcome="o", insight="i"),
        p.Feedback(score=-0.5, source="human", comment="meh"),
        p.AgentStarted(name="n", role="coder", model="m"),
        p.AgentStarted(
            name="n", instructions="be brief", tools=[
                p.ToolDefinition(name="git", description="run git", parameters={
                    "type": "object", "properties": {"args": {"type": "array"}},
                }),
                p.ToolDefinition(name="noop"),
            ],
        ),
        p.AgentStopped(reason="bye"),
        p.RunStarted(goal="g"),
        p.RunFinished(status="cancelled", summary="stopped"),
        # at the bounds
        p.Thought(text="", model="m", input_tokens=p.UINT32_MAX, output_tokens=p.UINT32_MAX,
                  latency_ms=p.MAX_DURATION_MS, cost_usd=p.MAX_COST_USD),
        p.Feedback(score=p.MAX_ABS_SCORE, source="test"),
        p.Feedback(score=-p.MAX_ABS_SCORE, source="self"),
        p.Decision(chosen="x", confidence=0.0),
        p.ActionCompleted(call_id="c", tool="t", status="ok", duration_ms=p.MAX_DURATION_MS),
    ]  # fmt: skip
    events = [
        new_event(d, id=ids.new(1_770_000_000_000 + i), time=t0, agentid=f"agent-{i % 3}",
                  causes=(ids.new(1_770_000_000_000),), **full)  # type: ignore[arg-type]
        for i, d in enumerate(payloads)
    ]  # fmt: skip
    for t in (MIN_TIME, MAX_TIME - timedelta(microseconds=1)):
        events.append(new_event(p.RunStarted(goal="edge"), id=ids.new(2), time=t, agentid="a"))
    deep: Any = 1
    for _ in range(60):  # envelope, data, arguments + 61 = 64 levels: the limit
        deep = [deep]
    events.append(new_event(p.ActionStarted(call_id="c", tool="t", arguments={"d": deep}),
                            id=ids.new(3), time=t0, agentid="deep"))  # fmt: skip
    sim = generate(SimulationConfig(agents=6, runs=None, seed=7, max_events=400))
    events.extend(e for i, e in enumerate(sim) if i % 10 == 0)
    lines = [encode_event(e).decode() for e in events]
    v1 = json.loads(lines[4])
    v1["type"] = "agent.act.completed.v1"
    v1["dataschema"] = "urn:agentstream:schema:agent.act.completed.v1"
    v1["data"] = {"gen_ai.tool.call.id": "c1", "gen_ai.tool.name": "git", "ok": False,
                  "result": "boom", "duration_ms": 3.5}  # fmt: skip
    lines.append(json.dumps(v1, separators=(",", ":")))
    v1["data"]["ok"] = True
    lines.append(json.dumps(v1))  # spaced, ASCII escapes: another producer's style
    old_agent = json.loads(lines[8])  # agent_started as v1 wrote it
    old_agent["type"] = "agent.lifecycle.agent_started.v1"
    old_agent["dataschema"] = "urn:agentstream:schema:agent.lifecycle.agent_started.v1"
    lines.append(json.dumps(old_agent, separators=(",", ":")))
    spelled = json.loads(lines[0])
    spelled.update(tenant="default", datacontenttype="application/json")  # defaults written
    lines.append(json.dumps(spelled, ensure_ascii=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if "--write-seeds" in sys.argv:
        print(f"wrote {_write_seeds()} seeds to {SEEDS_PATH}")
