"""What msgspec's JSON parser lets through that an event must not have: depth and duplicates.

msgspec keeps the last of two equal keys (``{"agentid": "a", "agentid": "b"}`` is agent
``b``) and nests as deep as the interpreter's recursion limit allows, which depends on the
caller's stack. These checks are exact but slower than msgspec, so the codec runs them only
when a cheap test on the raw bytes says they might find something (see ``schemas.codec``).

Every function takes bytes that may be anything (valid JSON or not) and never raises.
"""

from __future__ import annotations

import json
import re

from schemas.errors import InvalidEvent, RejectReason

# A JSON string token (escapes included) or a bracket. Outside strings JSON has no quotes,
# so scanning from the start splits a valid document into its real tokens.
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_STRINGS = re.compile(_STRING)
_TOKENS = re.compile(rb"(" + _STRING + rb")(\s*:)?|[{}\[\],]")
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]+")
_EMPTY_PAIR = re.compile(rb"\[\]|\{\}")


def depth_at_most(raw: bytes, limit: int) -> bool:
    """Whether objects/arrays in ``raw`` nest at most ``limit`` deep (root container = 1).

    Strings are blanked first (brackets inside them do not count), then each pass removes
    the empty ``[]``/``{}`` pairs, one nesting level (``re.sub`` does not rescan what it
    replaced): the brackets are gone after exactly as many passes as the document is deep.
    All C-speed, at most ``limit`` passes.
    """
    brackets = _NOT_BRACKETS.sub(b"", _STRINGS.sub(b"", raw))
    for _ in range(limit):
        if not brackets:
            return True
        shorter = _EMPTY_PAIR.sub(b"", brackets)
        if len(shorter) == len(brackets):  # unbalanced: not for this check to judge
            return True
        brackets = shorter
    return not brackets


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> None:
    seen = {k for k, _ in pairs}
    if len(seen) != len(pairs):
        raise _Duplicate


def has_duplicate_keys(raw: bytes) -> bool:
    """Whether any object in ``raw`` (valid UTF-8 JSON) names a key twice (escapes decoded)."""
    try:
        json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            strict=False,  # control characters in strings: msgspec judged those already
            parse_int=_ignore,  # no int() of huge literals: only the keys matter here
            parse_float=_ignore,
            parse_constant=_ignore,
        )
    except _Duplicate:
        return True
    except (ValueError, RecursionError):  # not for this check to judge
        return False
    return False


def _ignore(_text: str) -> None:
    return None


def _key(token: bytes) -> bytes:
    """A key token as comparable bytes: escapes decoded when there are any."""
    if b"\\" not in token:
        return token[1:-1]
    try:
        return json.loads(token.decode("utf-8", "surrogatepass")).encode("utf-8", "surrogatepass")
    except (ValueError, UnicodeError):
        return token[1:-1]


def _path(stack: list[list[object]]) -> str:
    parts = ["$"]
    for frame in stack:
        label = frame[2]
        if frame[0] == b"{":
            if label is not None:
                parts.append("." + bytes(label).decode("utf-8", "replace"))  # type: ignore[arg-type]
        else:
            parts.append(f"[{label}]")
    return "".join(parts)


def first_problem(raw: bytes, max_depth: int) -> InvalidEvent | None:
    """The first duplicate key or too-deep container in ``raw``, in document order, with its
    JSON path (msgspec's style: ``$.data.steps[1].id``); None when there is neither.

    A plain Python walk over the tokens: only called once a faster check found a problem.
    """
    # frame: [bracket, keys seen (objects), current key (objects) / index (arrays)]
    stack: list[list[object]] = []
    for m in _TOKENS.finditer(raw):
        tok = m.group(0)
        if m.group(1) is not None:
            if m.group(2) is not None and stack and stack[-1][0] == b"{":
                frame = stack[-1]
                key = _key(m.group(1))
                seen: set[bytes] = frame[1]  # type: ignore[assignment]
                frame[2] = key
                if key in seen:
                    return InvalidEvent(
                        RejectReason.DUPLICATE_KEY,
                        f"key {key.decode('utf-8', 'replace')!r} appears twice in one object "
                        "(JSON parsers disagree on which one wins)",
                        _path(stack),
                    )
                seen.add(key)
            continue
        if tok in (b"{", b"["):
            if len(stack) >= max_depth:
                return InvalidEvent(
                    RejectReason.TOO_DEEP,
                    f"objects/arrays nested deeper than {max_depth} levels",
                    _path(stack),
                )
            stack.append([tok, set(), None if tok == b"{" else 0])
        elif tok in (b"}", b"]"):
            if stack:
                stack.pop()
        elif stack and stack[-1][0] == b"[":  # a comma in an array
            stack[-1][2] = int(stack[-1][2]) + 1  # type: ignore[call-overload]
    return None
