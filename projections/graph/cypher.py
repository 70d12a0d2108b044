"""The Cypher the graph projection and queries run: one text for Neo4j and FalkorDB.

Kept to the subset both understand (LOCAL_STACK.md): UNWIND + MERGE/SET, OPTIONAL MATCH,
CASE, pattern comprehensions, bounded variable-length patterns. Every value arrives as a
parameter; the only thing ever formatted into a statement is a validated hop count
(variable-length bounds cannot be parameters in Cypher). What differs per backend: the
index/constraint DDL, and the walk behind why/impact: on FalkorDB it runs inside the
server as a UDF (``traversal.py``); Neo4j walks with ``ancestors_bfs``/``descendants_bfs``,
which run on both and are the reference the UDF is tested against.

Patterns start at the node bound by id and leave the far end unlabelled: FalkorDB's
planner otherwise label-scans every Event for each row (measured: a reversed
``(e)<-[:CAUSED_BY]-(x:Event)`` comprehension, or an ``(a:Event)-[:NEXT]->(b {id})``
match, turns an index lookup into a full scan). The far end is always an Event anyway.

Edge directions: effect -[:CAUSED_BY]-> cause, earlier -[:NEXT]-> later,
(Agent)-[:EMITTED]->(Event), (Event)-[:IN_RUN]->(Run), (Event)-[:ABOUT]->(Task),
(Event)-[:USED]->(Tool), (Violation)-[:INVOLVES]->(Event), sender -[:MESSAGED]-> recipient.
"""

from __future__ import annotations

# --- DDL -----------------------------------------------------------------------------------

FALKORDB_DDL: tuple[str, ...] = (
    # FalkorDB runs the write queries of one graph one at a time, so MERGE cannot race and
    # exact-match indexes suffice; its unique constraints are a separate command.
    "CREATE INDEX FOR (n:Event) ON (n.id)",
    "CREATE INDEX FOR (n:Event) ON (n.chain)",
    "CREATE INDEX FOR (n:Agent) ON (n.id)",
    "CREATE INDEX FOR (n:Run) ON (n.id)",
    "CREATE INDEX FOR (n:Task) ON (n.id)",
    "CREATE INDEX FOR (n:Tool) ON (n.name)",
    "CREATE INDEX FOR (n:Violation) ON (n.id)",
)

NEO4J_DDL: tuple[str, ...] = (
    # Neo4j runs transactions concurrently: uniqueness constraints make concurrent MERGEs of
    # a shared node (a tool, a placeholder cause) safe, and each brings its own index.
    "CREATE CONSTRAINT agentstream_event_id IF NOT EXISTS FOR (n:Event) REQUIRE n.id IS UNIQUE",
    "CREATE CONSTRAINT agentstream_agent_id IF NOT EXISTS FOR (n:Agent) REQUIRE n.id IS UNIQUE",
    "CREATE CONSTRAINT agentstream_run_id IF NOT EXISTS FOR (n:Run) REQUIRE n.id IS UNIQUE",
    "CREATE CONSTRAINT agentstream_task_id IF NOT EXISTS FOR (n:Task) REQUIRE n.id IS UNIQUE",
    "CREATE CONSTRAINT agentstream_tool_name IF NOT EXISTS FOR (n:Tool) REQUIRE n.name IS UNIQUE",
    "CREATE CONSTRAINT agentstream_violation_id IF NOT EXISTS "
    "FOR (n:Violation) REQUIRE n.id IS UNIQUE",
    "CREATE INDEX agentstream_event_chain IF NOT EXISTS FOR (n:Event) ON (n.chain)",
)

# --- projection writes ($rows: lists of dicts from model.build_batch) -----------------------

UPSERT_EVENTS = """
UNWIND $rows AS r
MERGE (e:Event {id: r.id})
SET e.type = r.type, e.time = r.time, e.agent = r.agent, e.run = r.run, e.task = r.task,
    e.tenant = r.tenant, e.status = r.status, e.summary = r.summary, e.tool = r.tool,
    e.chain = r.chain
MERGE (a:Agent {id: r.agent})
SET a.tenant = r.tenant
MERGE (a)-[:EMITTED]->(e)
"""

LINK_RUNS = """
UNWIND $rows AS r
MATCH (e:Event {id: r.event})
MERGE (x:Run {id: r.run})
MERGE (e)-[:IN_RUN]->(x)
"""

LINK_TASKS = """
UNWIND $rows AS r
MATCH (e:Event {id: r.event})
MERGE (x:Task {id: r.task})
MERGE (e)-[:ABOUT]->(x)
"""

LINK_TOOLS = """
UNWIND $rows AS r
MATCH (e:Event {id: r.event})
MERGE (x:Tool {name: r.tool})
MERGE (e)-[:USED]->(x)
"""

# A cause that has not arrived yet becomes a placeholder Event (id only); its own
# UPSERT_EVENTS fills it in later, through the same MERGE on id.
LINK_CAUSES = """
UNWIND $rows AS r
MATCH (e:Event {id: r.effect})
MERGE (c:Event {id: r.cause})
MERGE (e)-[:CAUSED_BY]->(c)
"""

LINK_MESSAGES = """
UNWIND $rows AS r
MERGE (a:Agent {id: r.sender})
MERGE (b:Agent {id: r.recipient})
MERGE (a)-[:MESSAGED]->(b)
"""

UPSERT_VIOLATIONS = """
UNWIND $rows AS r
MERGE (v:Violation {id: r.id})
SET v.category = r.category, v.agent = r.agent, v.run = r.run, v.task = r.task,
    v.tenant = r.tenant, v.time = r.time, v.detected_by = r.detected_by, v.tool = r.tool,
    v.call_id = r.call_id, v.expected = r.expected, v.actual = r.actual, v.detail = r.detail
"""

LINK_VIOLATIONS = """
UNWIND $rows AS r
MATCH (v:Violation {id: r.violation})
MERGE (e:Event {id: r.event})
MERGE (v)-[:INVOLVES]->(e)
"""

# --- NEXT: read each touched chain's window and the links around it, write the difference ---

# The order key is model.seq_key, built here from time and id (zero-padded epoch µs plus an
# offset, then the id; parameters from model.seq_params) rather than stored on every event:
# one long property less per event to write, and to decode at every restart of the graph.
CHAIN_WINDOWS = """
UNWIND $chains AS c
MATCH (e:Event {chain: c.chain})
WITH c.chain AS chain, c.lo AS lo, c.hi AS hi,
     right($seq_zeros + toString(e.time + $seq_offset), $seq_width) + e.id AS seq
RETURN chain,
       max(CASE WHEN seq < lo THEN seq END) AS before,
       collect(CASE WHEN seq >= lo AND seq <= hi THEN seq END) AS inside,
       min(CASE WHEN seq > hi THEN seq END) AS after
"""

# Two directed reads, not one RETURN with two pattern comprehensions: measured ~3x faster
# on FalkorDB. Rows are edges (a, b) for a -[:NEXT]-> b.
NEXT_FROM = """
UNWIND $ids AS i
MATCH (a:Event {id: i})-[:NEXT]->(b)
RETURN a.id, b.id
"""

NEXT_INTO = """
UNWIND $ids AS i
MATCH (b:Event {id: i})<-[:NEXT]-(a)
RETURN a.id, b.id
"""

# Order matters for crash safety: unlink first, then link. A crash in between leaves
# missing links, never wrong ones, and re-applying the batch recomputes the same window.
UNLINK_NEXT = """
UNWIND $pairs AS l
MATCH (a:Event {id: l.a})-[r:NEXT]->(b)
WHERE b.id = l.b
DELETE r
"""

LINK_NEXT = """
UNWIND $pairs AS l
MATCH (a:Event {id: l.a}), (b:Event {id: l.b})
MERGE (a)-[:NEXT]->(b)
"""

# --- reads ----------------------------------------------------------------------------------

EVENT_FIELDS = "e.id, e.type, e.time, e.agent, e.run, e.task, e.status, e.summary, e.tool"
"""The columns queries.EventInfo is built from, in order (then the neighbour ids)."""

EVENTS_BY_ID = f"""
UNWIND $ids AS i
MATCH (e:Event {{id: i}})
RETURN {EVENT_FIELDS}, [(e)-[:CAUSED_BY]->(x) | x.id] AS causes
"""

EVENTS_WITH_EFFECTS_BY_ID = f"""
UNWIND $ids AS i
MATCH (e:Event {{id: i}})
RETURN {EVENT_FIELDS},
       [(e)-[:CAUSED_BY]->(x) | x.id] AS causes,
       [(e)<-[:CAUSED_BY]-(y) | y.id] AS effects
"""

VIOLATION_FIELDS = (
    "v.id, v.category, v.agent, v.run, v.task, v.time, v.detected_by, v.tool, "
    "v.expected, v.actual, v.detail"
)

VIOLATION_BY_ID = f"""
MATCH (v:Violation {{id: $id}})
RETURN {VIOLATION_FIELDS}, [(v)-[:INVOLVES]->(e) | e.id] AS events
"""

VIOLATIONS_INVOLVING = f"""
UNWIND $ids AS i
MATCH (:Event {{id: i}})<-[:INVOLVES]-(v:Violation)
WITH DISTINCT v
RETURN {VIOLATION_FIELDS}, [(v)-[:INVOLVES]->(e) | e.id] AS events
"""

# One level per round trip: the distinct next ids (why/impact on FalkorDB, queries._walk).
CAUSES_STEP = """
UNWIND $ids AS i
MATCH (:Event {id: i})-[:CAUSED_BY]->(c)
RETURN DISTINCT c.id
"""

EFFECTS_STEP = """
UNWIND $ids AS i
MATCH (:Event {id: i})<-[:CAUSED_BY]-(c)
RETURN DISTINCT c.id
"""

# One level per round trip with the edges: path search keeps parent pointers.
CAUSES_OF = """
UNWIND $ids AS i
MATCH (e:Event {id: i})-[:CAUSED_BY]->(c)
RETURN e.id, c.id
"""

EFFECTS_OF = """
UNWIND $ids AS i
MATCH (e:Event {id: i})<-[:CAUSED_BY]-(c)
RETURN e.id, c.id
"""

COUNT_NODES = "MATCH (n) RETURN labels(n)[0] AS label, count(n) AS n"
COUNT_RELATIONSHIPS = "MATCH ()-[r]->() RETURN type(r) AS type, count(r) AS n"

MAX_LEVELS = 200  # BFS levels per statement: keeps the statement text a few tens of KB

_STEP_UP = "(:Event {id: i})-[:CAUSED_BY]->(y)"
_STEP_DOWN = "(:Event {id: i})<-[:CAUSED_BY]-(y)"

_LEVEL = """
UNWIND CASE WHEN size(f) = 0 THEN [null] ELSE f END AS i
OPTIONAL MATCH {step}
WITH seen, levels, collect(DISTINCT y.id) AS f
WITH [x IN f WHERE NOT x IN seen] AS f, seen, levels
WITH f, seen + f AS seen, levels + [f] AS levels
"""


def _levels(levels: int) -> int:
    if not isinstance(levels, int) or isinstance(levels, bool) or not 1 <= levels <= MAX_LEVELS:
        raise ValueError(f"levels must be an int in 1..{MAX_LEVELS}, got {levels!r}")
    return levels


def _bfs(levels: int, step: str, neighbours: str) -> str:
    return (
        "WITH $frontier AS f, $seen AS seen, [] AS levels\n"
        + _LEVEL.format(step=step) * _levels(levels)
        + f"""UNWIND range(0, size(levels) - 1) AS level
UNWIND levels[level] AS i
MATCH (e:Event {{id: i}})
RETURN level + 1 AS hops, {EVENT_FIELDS}, {neighbours}
"""
    )


def ancestors_bfs(levels: int) -> str:
    """Breadth-first from $frontier along CAUSED_BY, ``levels`` levels in one statement.

    One unrolled block per level: the next level is the distinct causes of this one minus
    everything in $seen or found so far, so every event appears once, at its shortest
    distance, and the work grows with the events reached, not with the paths to them.
    Rows: (hops from the frontier, EVENT_FIELDS..., ids of the event's causes).

    Why not ``-[:CAUSED_BY*1..n]->``: variable-length matching enumerates paths, which
    explodes on diamond-heavy causal graphs (measured: >3 s for a 45-event ladder), and on
    FalkorDB 4.16 ``RETURN DISTINCT`` over it under-reports (54 of 200 ancestors, measured).
    Why not ``shortestPath``: allShortestPaths ran for minutes on FalkorDB on the same
    ladder. Only the level count is formatted into the text, never a value.
    """
    return _bfs(levels, _STEP_UP, "[(e)-[:CAUSED_BY]->(x) | x.id] AS causes")


def descendants_bfs(levels: int) -> str:
    """The mirror of :func:`ancestors_bfs`: effects instead of causes."""
    return _bfs(levels, _STEP_DOWN, "[(e)<-[:CAUSED_BY]-(x) | x.id] AS effects")
