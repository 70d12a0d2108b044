"""Refusing statements that write, before they reach ClickHouse.

The analyst's path is read-only twice over: this check names the problem clearly, and the
query then runs with the ``readonly`` setting, so anything the check misses is refused by
the engine itself.
"""

from __future__ import annotations

import re

READING_KEYWORDS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")
_WORD = re.compile(r"[A-Za-z_]+")
_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)


class ReadOnlyError(ValueError):
    """A statement that would write (or is not one statement) was refused."""


def skeleton(sql: str) -> str:
    """The statement with comments and literals/quoted names blanked out, same length.

    Strings ('…' with \\ and '' escapes), quoted identifiers ("…", `…`), ``--`` and ``#``
    line comments and (nested) ``/* */`` comments are handled like ClickHouse's lexer.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            if j >= n:
                raise ReadOnlyError(f"unterminated {ch}…{ch} in the statement")
            out.append(ch + "_" * (j - i - 1) + ch)
            i = j + 1
        elif sql.startswith("--", i) or ch == "#":
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif sql.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                raise ReadOnlyError("unterminated /* comment in the statement")
            out.append(" " * (j - i))
            i = j
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def check_read_only(sql: str) -> str:
    """Return the statement (without trailing semicolons) if it only reads; else raise."""
    bare = skeleton(sql)
    stripped = bare.strip().rstrip("; \t\r\n")
    if not stripped:
        raise ReadOnlyError("empty statement")
    if ";" in stripped:
        raise ReadOnlyError("one statement at a time: remove the ';' between statements")
    first = _WORD.match(stripped.lstrip("( \t\r\n"))
    keyword = first.group(0).upper() if first else stripped.split()[0]
    if keyword not in READING_KEYWORDS:
        raise ReadOnlyError(
            f"{keyword} statements are refused: the analytics store is read-only here "
            f"(allowed: {', '.join(READING_KEYWORDS)})"
        )
    if _OUTFILE.search(stripped):
        raise ReadOnlyError("INTO OUTFILE is refused (it writes a file); use --output instead")
    # the caller's text (literals intact), cut after the last meaningful character: drops
    # trailing semicolons and comments (positions match: the skeleton keeps the length)
    end = len(bare.rstrip("; \t\r\n"))
    return sql[:end].strip()
