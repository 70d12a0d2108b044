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
from array import array
from itertools import accumulate

from schemas.errors import InvalidEvent, RejectReason

# A JSON string token (escapes included) or a bracket. Outside strings JSON has no quotes,
# so scanning from the start splits a valid document into its real tokens.
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_STRINGS = re.compile(_STRING)
_TOKENS = re.compile(rb"(" + _STRING + rb")(\s*:)?|([{}\[\],])")
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]+")
_SIGN = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as signed bytes: +1, +1, -1, -1


def depth_at_most(raw: bytes, limit: int) -> bool:
    """Whether objects/arrays in ``raw`` nest at most ``limit`` deep (root container = 1).

    Strings are blanked first (brackets inside them do not count); the depth is then the
    highest running sum of +1 per opening and -1 per closing bracket, summed in C
    (``itertools.accumulate`` over signed bytes): linear, ~1 MiB in tens of ms.
    """
    brackets = _NOT_BRACKETS.sub(b"", _STRINGS.sub(b"", raw))
    return max(accumulate(array("b", brackets.translate(_SIGN))), default=0) <= limit


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


_NUL = re.compile("\x00")
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")  # \u0000 not preceded by an odd \


def nul_path(raw: bytes) -> str | None:
    """The JSON path of the first string (or key) holding U+0000, or None.

    In valid JSON a NUL can only be spelled ``\\u0000``, so documents without that text are
    answered without parsing; otherwise the document is parsed and walked.
    """
    if _NUL_ESCAPE.search(raw) is None:
        return None
    return string_path(raw.decode("utf-8", "surrogateescape"), _NUL)


def string_path(text: str, pattern: re.Pattern[str]) -> str | None:
    """The JSON path of the first string or key (document order) that ``pattern`` finds
    something in, or None (also when ``text`` is not JSON)."""
    try:
        doc = json.loads(text, object_pairs_hook=list, strict=False)
    except (ValueError, RecursionError):
        return None
    todo: list[tuple[str, object]] = [("$", doc)]  # a stack: children pushed last-first
    while todo:
        path, node = todo.pop()
        if isinstance(node, str):
            if pattern.search(node):
                return path
        elif isinstance(node, list) and node and all(_is_pair(x) for x in node):
            children = []
            for key, value in node:
                where = f"{path}.{_printable(key)}"
                if pattern.search(key):
                    return where
                children.append((where, value))
            todo.extend(reversed(children))
        elif isinstance(node, list):
            todo.extend(reversed([(f"{path}[{i}]", x) for i, x in enumerate(node)]))
    return None


def _printable(key: str) -> str:
    """A key as it can be shown in a path: control characters and lone surrogates escaped."""
    return "".join(
        c if c.isprintable() and not "\ud800" <= c <= "\udfff" else f"\\u{ord(c):04x}" for c in key
    )


def _is_pair(x: object) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)


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
        kind = m.lastindex  # 1: a value string, 2: a key, 3: a bracket or a comma
        if kind == 1:
            continue
        if kind == 2:
            if stack and stack[-1][0] == b"{":
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
        tok = m.group(3)
        if tok == b"{" or tok == b"[":
            if len(stack) >= max_depth:
                return InvalidEvent(
                    RejectReason.TOO_DEEP,
                    f"objects/arrays nested deeper than {max_depth} levels",
                    _path(stack),
                )
            stack.append([tok, set(), None if tok == b"{" else 0])
        elif tok == b"}" or tok == b"]":
            if stack:
                stack.pop()
        elif stack and stack[-1][0] == b"[":  # a comma in an array
            stack[-1][2] = int(stack[-1][2]) + 1  # type: ignore[call-overload]
    return None
