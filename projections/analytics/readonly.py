"""The one guarded read path: what an analyst's statement may do, and how it runs.

Every read from the CLI, the Python API (:func:`projections.analytics.connect`), the
chDB owner's query service and the web UI's SQL workspace goes through
:func:`run_readonly`. It refuses, before anything runs:

1. (lexical, :func:`check_read_only`) more than one statement, a statement that does not
   start with a reading keyword, ``INTO OUTFILE``;
2. (ClickHouse's own parser: ``EXPLAIN AST``, :func:`check`) a statement kind that is not a
   read, in any nesting (``EXPLAIN INSERT …``); any table function not in
   :data:`TABLE_FUNCTIONS_ALLOWED` (``file``, ``url``, ``s3``, ``remote``, ``mysql``,
   ``executable``, chDB's ``python`` …) in every statement form, ``DESCRIBE`` and ``EXPLAIN``
   included; functions that reach outside the store anywhere in the statement (the scalar
   ``file()``, dictionaries); a ``FORMAT`` or ``INTO OUTFILE`` clause; ``SETTINGS`` other
   than :data:`SETTINGS_ALLOWED` (the limits may only be lowered).

It then runs the statement with the engine in ``readonly = 2`` (reads and harmless setting
changes only; ``readonly`` itself cannot be changed, so the engine refuses
``SETTINGS readonly = 0``) and with :class:`QueryLimits`, tagged so that it can be killed
when its client goes away.

Pure policy and AST reading here; the engines (chDB, a ClickHouse server) live in
``reader.py`` and implement :class:`Engine`.
"""

from __future__ import annotations

import collections
import re
import threading
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

READING_KEYWORDS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")
_WORD = re.compile(r"[A-Za-z_]+")
_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)

#: Table functions that only compute or read what the statement itself holds. Everything
#: else (files, URLs, object stores, other servers and databases, processes, chDB's
#: ``python``, ``input``, ``dictionary``, ``merge`` …) is refused.
TABLE_FUNCTIONS_ALLOWED = frozenset(
    {
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "generate_series",
        "generateSeries",
        "primes",
        "values",
        "null",
        "view",
        "format",
        "generateRandom",
    }
)

#: Table functions of ClickHouse/chDB 26.x that reach outside the store (or the process).
#: The engine's own ``system.table_functions`` is added at run time, so a table function
#: that a newer engine brings is refused too. Also refused as plain functions anywhere.
TABLE_FUNCTIONS_KNOWN = frozenset(
    {
        "arrowstream", "azureBlobStorage", "azureBlobStorageCluster", "bigquery", "cluster",
        "clusterAllReplicas", "cosn", "deltaLake", "deltaLakeAzure", "deltaLakeAzureCluster",
        "deltaLakeCluster", "deltaLakeLocal", "deltaLakeS3", "deltaLakeS3Cluster", "dictionary",
        "eval", "executable", "file", "fileCluster", "filesystem", "fuzzJSON", "fuzzQuery",
        "gcs", "hdfs", "hdfsCluster", "hudi", "hudiCluster", "iceberg", "icebergAzure",
        "icebergAzureCluster", "icebergCluster", "icebergHDFS", "icebergHDFSCluster",
        "icebergLocal", "icebergLocalCluster", "icebergS3", "icebergS3Cluster", "input", "jdbc",
        "loop", "merge", "mergeTreeAnalyzeIndexes", "mergeTreeAnalyzeIndexesUUID",
        "mergeTreeCodecBlockCounts", "mergeTreeIndex", "mergeTreeProjection",
        "mergeTreeTextIndex", "mongodb", "mysql", "odbc", "oss", "paimon", "paimonAzure",
        "paimonAzureCluster", "paimonCluster", "paimonHDFS", "paimonHDFSCluster", "paimonLocal",
        "paimonS3", "paimonS3Cluster", "postgresql", "prometheusQuery", "prometheusQueryRange",
        "python", "redis", "remote", "remoteSecure", "s3", "s3Cluster", "sqlite",
        "timeSeriesData", "timeSeriesMetricFamilies", "timeSeriesMetrics", "timeSeriesSamples",
        "timeSeriesSelector", "timeSeriesTags", "url", "urlCluster", "viewExplain",
        "viewIfPermitted", "ytsaurus", "SQLStandardValues",
    }
)  # fmt: skip

#: Plain functions that read outside the store or write somewhere (``file('/etc/passwd')``
#: reads a local file even in readonly mode). Every ``dict*`` function is refused too: a
#: dictionary's source may be a file, a URL or another server.
FUNCTIONS_REFUSED = frozenset({"file", "logTrace", "catboostEvaluate", "modelEvaluate"})

#: Query-level SETTINGS an analyst may use: they change how a result is computed or shown,
#: never what may be read, the read-only mode or the limits.
SETTINGS_ALLOWED = frozenset(
    {
        "join_use_nulls", "join_algorithm", "join_default_strictness",
        "any_join_distinct_right_table_keys", "max_threads", "max_block_size",
        "max_final_threads", "use_index_for_in_with_subqueries",
        "aggregate_functions_null_for_empty", "transform_null_in", "cast_keep_nullable",
        "union_default_mode", "intersect_default_mode", "except_default_mode",
        "prefer_column_name_to_alias", "joined_subquery_requires_alias",
        "count_distinct_implementation", "data_type_default_nullable", "session_timezone",
        "date_time_output_format", "date_time_input_format", "enable_analyzer",
        "allow_experimental_analyzer", "do_not_merge_across_partitions_select_final", "final",
        "group_by_use_nulls", "extremes", "totals_mode", "totals_auto_threshold",
        "optimize_read_in_order", "optimize_aggregation_in_order", "optimize_move_to_prewhere",
        "optimize_trivial_count_query", "optimize_use_projections", "use_skip_indexes",
        "force_primary_key", "force_index_by_date", "describe_include_subcolumns",
        "describe_compact_output", "describe_include_virtual_columns",
        "enable_positional_arguments", "limit", "offset", "use_query_cache",
    }
)  # fmt: skip

#: Limits a statement may lower (a positive value no larger than the configured one).
LIMIT_SETTINGS = ("max_execution_time", "max_result_rows", "max_result_bytes")

#: Options of ``EXPLAIN kind option = value … statement``.
EXPLAIN_OPTIONS_ALLOWED = frozenset(
    {
        "header", "description", "indexes", "actions", "json", "sorting", "projections",
        "distributed", "compact", "graph", "oneline", "optimize", "dump_tree", "dump_passes",
        "passes", "run_passes", "dump_ast", "query_tree_passes", "keep_logical_steps", "pretty",
    }
)  # fmt: skip

#: Root nodes of ``EXPLAIN AST`` that only read.
_READ_ROOTS = (
    "SelectWithUnionQuery",
    "SelectIntersectExceptQuery",
    "SelectQuery",
    "Explain",
    "DescribeQuery",
    "ShowTables",
    "ShowColumns",
    "ShowIndexes",
    "ShowProcesslistQuery",
    "ShowCreate",
    "ShowSettingQuery",
    "ShowFunctions",
    "ShowEngines",
    "ExistsTableQuery",
    "ExistsDatabaseQuery",
    "ExistsViewQuery",
    "ExistsDictionaryQuery",
)


class ReadOnlyError(ValueError):
    """The read path refused the statement before it ran."""


class QueryError(RuntimeError):
    """ClickHouse refused or failed the query; the message is ClickHouse's.

    ``kind``: ``query`` (the SQL is wrong), ``readonly`` (the engine's read-only mode
    refused it), ``limit`` (a limit of the read path stopped it: time, result rows or
    bytes, memory), ``cancelled`` (its client went away).
    """

    def __init__(self, message: str, kind: str = "query") -> None:
        super().__init__(message)
        self.kind = kind


def classify_error(message: str) -> str:
    """The :class:`QueryError` kind of an engine message."""
    if "(READONLY)" in message or "in readonly mode" in message:
        return "readonly"
    if "(QUERY_WAS_CANCELLED)" in message:
        return "cancelled"
    if any(
        code in message
        for code in ("(TIMEOUT_EXCEEDED)", "(TOO_MANY_ROWS_OR_BYTES)", "(MEMORY_LIMIT_EXCEEDED)")
    ):
        return "limit"
    return "query"


@dataclass(frozen=True)
class QueryLimits:
    """What one statement may cost (settings ``query_max_*`` of agentstream)."""

    max_execution_s: float = 60.0
    max_result_rows: int = 1_000_000
    max_result_bytes: int = 256 << 20

    def ceiling(self, setting: str) -> float:
        return {
            "max_execution_time": self.max_execution_s,
            "max_result_rows": self.max_result_rows,
            "max_result_bytes": self.max_result_bytes,
        }[setting]

    def engine_settings(self) -> dict[str, str]:
        """Applied to every statement (after ``readonly``; overflow throws, never truncates)."""
        return {
            "max_execution_time": f"{self.max_execution_s:g}",
            "timeout_overflow_mode": "throw",
            "max_result_rows": str(self.max_result_rows),
            "max_result_bytes": str(self.max_result_bytes),
            "result_overflow_mode": "throw",
        }


@dataclass(frozen=True)
class QueryStats:
    """The engine's own figures for one statement (``None``: the backend does not say)."""

    elapsed_s: float | None = None
    rows_read: int | None = None
    bytes_read: int | None = None
    result_rows: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "elapsed_s": self.elapsed_s,
            "rows_read": self.rows_read,
            "bytes_read": self.bytes_read,
            "result_rows": self.result_rows,
        }


@dataclass
class ReadResult:
    """A result as an Arrow IPC stream (what the service sends on unchanged) and its stats."""

    ipc: bytes
    stats: QueryStats = field(default_factory=QueryStats)

    def table(self) -> pa.Table:
        import pyarrow as pa

        return pa.ipc.open_stream(self.ipc).read_all()


class Engine(Protocol):
    """One connection that can parse, run and kill statements (see ``reader.py``)."""

    def explain_ast(self, sql: str, params: Mapping[str, Any]) -> list[str]:
        """The lines of ``EXPLAIN AST sql`` (parameters bound)."""

    def format_query(self, sql: str) -> str:
        """ClickHouse's own single-line rendering of the statement (``formatQuerySingleLine``)."""

    def table_functions(self) -> frozenset[str]:
        """The engine's table function names (``system.table_functions``)."""

    def execute(self, sql: str, params: Mapping[str, Any], tag: str) -> ReadResult:
        """Run a checked statement read-only, limited, tagged ``tag``; raise QueryError."""

    def kill(self, tag: str) -> None:
        """Stop the statement tagged ``tag`` (from another connection)."""


# --- lexical pre-check -------------------------------------------------------------------


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
    """Return the statement (without trailing semicolons) if it only reads; else raise.

    The cheap first gate (no engine needed): one statement, a reading keyword first, no
    ``INTO OUTFILE``. :func:`check` adds the parser-based rules.
    """
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


# --- reading ClickHouse's AST --------------------------------------------------------------


@dataclass
class AstNode:
    """One line of ``EXPLAIN AST``: ``Function file (children 1)`` -> kind Function, name file."""

    kind: str
    detail: str
    depth: int
    children: list[AstNode] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.detail.split(" ", 1)[0] if self.detail else ""

    def walk(self) -> Iterable[tuple[AstNode, AstNode | None]]:
        """Every node with its parent, depth first."""
        stack: list[tuple[AstNode, AstNode | None]] = [(self, None)]
        while stack:
            node, parent = stack.pop()
            yield node, parent
            stack.extend((c, node) for c in reversed(node.children))


_CHILDREN = re.compile(r"\s*\(children \d+\)\s*$")


def parse_ast(lines: Iterable[str]) -> list[AstNode]:
    """The tree(s) of an ``EXPLAIN AST`` dump (indentation is nesting, one space a level)."""
    roots: list[AstNode] = []
    stack: list[AstNode] = []
    for raw in lines:
        if not raw.strip():
            continue
        depth = len(raw) - len(raw.lstrip(" "))
        text = _CHILDREN.sub("", raw.strip())
        kind, _, detail = text.partition(" ")
        node = AstNode(kind, detail.strip(), depth)
        while stack and stack[-1].depth >= depth:
            stack.pop()
        if stack:
            stack[-1].children.append(node)
        else:
            roots.append(node)
        stack.append(node)
    return roots


def _is_read_root(kind: str) -> bool:
    return any(kind.startswith(r) for r in _READ_ROOTS)


_FUNCTIONS_REFUSED_LOWER = frozenset(f.lower() for f in FUNCTIONS_REFUSED)


def _refused_function(name: str, table_functions_lower: frozenset[str]) -> str | None:
    """Why a function of this name may not appear anywhere, or None (names: any case)."""
    if name in TABLE_FUNCTIONS_ALLOWED:
        return None
    lowered = name.lower()
    if lowered in table_functions_lower:
        return "it reads outside the analytics store"
    if lowered in _FUNCTIONS_REFUSED_LOWER:
        return "it reads or writes outside the analytics store"
    if lowered.startswith("dict"):
        return "a dictionary's source can be outside the analytics store"
    return None


@dataclass
class _Findings:
    sets: int = 0
    explain_options: int = 0


def _check_statement(node: AstNode) -> None:
    """The statement (and any statement it explains) only reads; no FORMAT, no OUTFILE."""
    if not _is_read_root(node.kind):
        raise ReadOnlyError(
            f"{node.kind.removesuffix('Query')} statements are refused: the analytics store is "
            "read-only here"
        )
    if not node.kind.startswith(("Select", "Explain", "Describe")):
        return
    for child in node.children:
        if child.kind == "Literal":
            raise ReadOnlyError("INTO OUTFILE is refused (it writes a file); use --output instead")
        if child.kind == "Identifier":
            raise ReadOnlyError(
                f"the FORMAT {child.name} clause is refused: the read path chooses the wire "
                "format (use --format csv|json|parquet)"
            )
        if node.kind == "Explain" and child.kind != "Set":
            if not _is_read_root(child.kind):
                raise ReadOnlyError(
                    f"EXPLAIN {child.kind.removesuffix('Query').upper()} is refused: only "
                    "reading statements may be explained"
                )
            _check_statement(child)


def check_tree(roots: list[AstNode], table_functions: frozenset[str]) -> _Findings:
    """Apply the statement rules to a parsed ``EXPLAIN AST``; raise ReadOnlyError."""
    if len(roots) != 1:
        raise ReadOnlyError("one statement at a time")
    _check_statement(roots[0])
    known = frozenset(t.lower() for t in table_functions | TABLE_FUNCTIONS_KNOWN)
    known -= {t.lower() for t in TABLE_FUNCTIONS_ALLOWED}
    found = _Findings()
    for node, parent in roots[0].walk():
        if node.kind == "Set":
            found.sets += 1
            if parent is not None and parent.kind == "Explain":
                found.explain_options += 1
        elif node.kind == "Function":
            name = node.name
            if parent is not None and parent.kind == "TableExpression":
                if name not in TABLE_FUNCTIONS_ALLOWED:
                    why = _refused_function(name, known) or "it is not on the allowlist"
                    raise ReadOnlyError(
                        f"table function {name}() is refused: {why} (allowed: "
                        f"{', '.join(sorted(TABLE_FUNCTIONS_ALLOWED))})"
                    )
                continue
            why = _refused_function(name, known)
            if why is not None:
                raise ReadOnlyError(f"function {name}() is refused: {why}")
    return found


# --- SETTINGS and EXPLAIN options, read from ClickHouse's own formatting -------------------

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_VALUE = r"(?:'_*'|-?[0-9][0-9A-Za-z_.+-]*|" + _IDENT + r")"
_PAIR = re.compile(r"\s*(" + _IDENT + r")\s*=\s*(" + _VALUE + r")")
_SETTINGS_WORD = re.compile(r"\bSETTINGS\b")
_COMMA = re.compile(r"\s*,")
_EXPLAIN_HEAD = re.compile(
    r"^\s*EXPLAIN(?:\s+(?:AST|SYNTAX|QUERY\s+TREE|PLAN|PIPELINE|ESTIMATE|TABLE\s+OVERRIDE))?",
)


def _pairs_at(formatted: str, bare: str, pos: int) -> list[tuple[str, str]]:
    """``name = value, …`` starting at ``pos`` of the skeleton (values from the original).

    Empty when there is no pair at ``pos``; a list that goes on after a comma with
    something that is not a pair (a map or array value …) is refused, so that no setting
    after it can go unread.
    """
    pairs: list[tuple[str, str]] = []
    while True:
        m = _PAIR.match(bare, pos)
        if m is None:
            if pairs:
                raise ReadOnlyError(
                    f"could not read the setting after {pairs[-1][0]} in the statement's "
                    "SETTINGS; write plain name = value pairs"
                )
            return pairs
        pairs.append((m.group(1), formatted[m.start(2) : m.end(2)]))
        pos = m.end()
        if bare[pos:].lstrip()[:1] in ("(", "[", "{", ".", ":"):
            raise ReadOnlyError(
                f"could not read the value of {m.group(1)} in the statement's SETTINGS; "
                "write a plain literal"
            )
        comma = _COMMA.match(bare, pos)
        if comma is None:
            return pairs
        pos = comma.end()


def settings_in(formatted: str) -> tuple[list[list[tuple[str, str]]], list[tuple[str, str]]]:
    """The SETTINGS clauses and the EXPLAIN options of a statement as ClickHouse formats it."""
    bare = skeleton(formatted)
    clauses = [
        pairs
        for m in _SETTINGS_WORD.finditer(bare)
        if (pairs := _pairs_at(formatted, bare, m.end()))
    ]
    options: list[tuple[str, str]] = []
    head = _EXPLAIN_HEAD.match(bare)
    if head is not None:
        options = _pairs_at(formatted, bare, head.end())
    return clauses, options


def _number(value: str) -> float | None:
    try:
        return float(value.strip("'"))
    except ValueError:
        return None


def check_settings(
    clauses: list[list[tuple[str, str]]], options: list[tuple[str, str]], limits: QueryLimits
) -> None:
    for name, _ in options:
        if name not in EXPLAIN_OPTIONS_ALLOWED:
            raise ReadOnlyError(f"EXPLAIN option {name} is refused")
    for pairs in clauses:
        for name, value in pairs:
            if name == "readonly":
                continue  # the engine's read-only mode refuses changing it (and says so)
            if name in LIMIT_SETTINGS:
                ceiling = limits.ceiling(name)
                number = _number(value)
                if number is None or not 0 < number <= ceiling:
                    raise ReadOnlyError(
                        f"SETTINGS {name} = {value} is refused: the read path's limit is "
                        f"{ceiling:g}; a statement may only lower it"
                    )
                continue
            if name not in SETTINGS_ALLOWED:
                raise ReadOnlyError(
                    f"SETTINGS {name} is refused on the read-only path (harmless ones such as "
                    "join_use_nulls, max_threads are allowed; see docs/analytics.md)"
                )


# --- the one entry point ---------------------------------------------------------------------


class VerdictCache:
    """Statements the check allowed, by everything the verdict depends on (bounded LRU).

    The verdict is a function of the exact text, the bound parameters (they are bound into
    ``EXPLAIN AST``), the limits (SETTINGS may only lower them) and the engine's table
    functions; ``EXPLAIN AST`` is a parse, it does not depend on the data or the tables.
    So a key holds all four, and a hit skips the parse round trips and the AST walk: the
    SQL workspace and the dashboards run the same statements again and again. Only allowed
    statements are kept: a refusal is checked again every time.
    """

    MAX_TEXT = 16 << 10  # longer statements are checked every time (bounds the memory)

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._items: collections.OrderedDict[Hashable, str] = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(
        sql: str, params: Mapping[str, Any], limits: QueryLimits, table_functions: frozenset[str]
    ) -> Hashable:
        # the type is part of a value: 1 and '1' bind differently
        bound = tuple(sorted((k, type(v).__name__, repr(v)) for k, v in params.items()))
        return (sql, bound, limits, table_functions)

    def get(self, key: Hashable) -> str | None:
        with self._lock:
            statement = self._items.get(key)
            if statement is not None:
                self._items.move_to_end(key)
            return statement

    def put(self, key: Hashable, statement: str) -> None:
        with self._lock:
            self._items[key] = statement
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: The process's verdicts (every engine of one process parses alike).
VERDICTS = VerdictCache()


def check(
    sql: str,
    engine: Engine,
    params: Mapping[str, Any] | None = None,
    limits: QueryLimits | None = None,
    verdicts: VerdictCache | None = VERDICTS,
) -> str:
    """The statement to run if the read path allows it; raise ReadOnlyError otherwise.

    Uses the engine's parser (``EXPLAIN AST``, and ``formatQuerySingleLine`` when the
    statement has SETTINGS); a statement the parser rejects raises :class:`QueryError`.
    ``verdicts``: where allowed statements are remembered (``None``: check every time).
    """
    params = dict(params or {})
    limits = limits or QueryLimits()
    table_functions = engine.table_functions()
    if verdicts is not None and len(sql) > VerdictCache.MAX_TEXT:
        verdicts = None
    key = VerdictCache.key(sql, params, limits, table_functions) if verdicts is not None else None
    if key is not None and verdicts is not None:
        cached = verdicts.get(key)
        if cached is not None:
            return cached
    statement = _check(sql, engine, params, limits, table_functions)
    if key is not None and verdicts is not None:
        verdicts.put(key, statement)
    return statement


def _check(
    sql: str,
    engine: Engine,
    params: dict[str, Any],
    limits: QueryLimits,
    table_functions: frozenset[str],
) -> str:
    statement = check_read_only(sql)
    for quoted in re.finditer(r"[`\"][^`\"]*[`\"]", skeleton(statement)):
        text = statement[quoted.start() : quoted.end()]
        if "\n" in text or "\r" in text:
            raise ReadOnlyError("quoted names with line breaks are refused")
    roots = parse_ast(engine.explain_ast(statement, params))
    found = check_tree(roots, table_functions)
    if found.sets:
        clauses, options = settings_in(engine.format_query(statement))
        if len(clauses) != found.sets - found.explain_options or bool(options) != bool(
            found.explain_options
        ):
            raise ReadOnlyError("could not read the statement's SETTINGS; remove them")
        check_settings(clauses, options, limits)
    return statement


def new_tag() -> str:
    """A per-statement tag (the ``log_comment``/query id the engine can kill it by)."""
    return f"agentstream-read-{uuid.uuid4().hex}"


def run_readonly(
    engine: Engine,
    sql: str,
    params: Mapping[str, Any] | None = None,
    *,
    limits: QueryLimits | None = None,
    client_gone: Callable[[], bool] | None = None,
    poll_s: float = 0.1,
) -> ReadResult:
    """Check, then run one statement read-only within the limits.

    ``client_gone``: polled every ``poll_s`` while the statement runs; when it returns True
    the statement is killed (so a client that disconnects stops burning CPU) and this
    raises ``QueryError(kind="cancelled")``.
    """
    params = dict(params or {})
    statement = check(sql, engine, params, limits)
    tag = new_tag()
    if client_gone is None:
        return engine.execute(statement, params, tag)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            if client_gone():
                engine.kill(tag)
                return

    watcher = threading.Thread(target=watch, name="read-watch", daemon=True)
    watcher.start()
    try:
        return engine.execute(statement, params, tag)
    finally:
        done.set()
