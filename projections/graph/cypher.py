"""The Cypher the graph projection and queries run: one text for Neo4j and FalkorDB.

Kept to the subset both understand (LOCAL_STACK.md): UNWIND + MERGE/SET, OPTIONAL MATCH,
CASE, pattern comprehensions, bounded variable-length patterns. Every value arrives as a
parameter; the only thing ever formatted into a statement is a validated hop count
(variable-length bounds cannot be parameters in Cypher). Only the index/constraint DDL
differs per backend.

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
SET e.type = r.type, e.category = r.category, e.time = r.time, e.agent = r.agent,
    e.run = r.run, e.task = r.task, e.tenant = r.tenant, e.status = r.status,
    e.summary = r.summary, e.tool = r.tool, e.chain = r.chain, e.seq = r.seq
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

CHAIN_WINDOWS = """
UNWIND $chains AS c
MATCH (e:Event {chain: c.chain})
WITH c.chain AS chain, c.lo AS lo, c.hi AS hi, e.seq AS seq
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

# One round trip per (edge, neighbour) level: path search keeps parent pointers.
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

MAX_HOPS = 10_000


def _hops(hops: int) -> int:
    if not isinstance(hops, int) or isinstance(hops, bool) or not 1 <= hops <= MAX_HOPS:
        raise ValueError(f"hops must be an int in 1..{MAX_HOPS}, got {hops!r}")
    return hops


def ancestors_step(hops: int) -> str:
    """Events 1..hops CAUSED_BY-steps above any of $ids, with their shortest distance.

    Variable-length matching enumerates paths (on FalkorDB; Neo4j prunes), and a causal
    graph can be full of diamonds (an action caused by the previous step *and* by the
    decision), so the number of paths can grow exponentially with the bound. queries._walk
    therefore sends it once with the whole depth under a timeout, and if that expires walks
    a few hops per round trip from the exact frontier instead.
    """
    return f"""
UNWIND $ids AS i
MATCH p = (:Event {{id: i}})-[:CAUSED_BY*1..{_hops(hops)}]->(e)
WITH e, min(length(p)) AS hops
RETURN hops, {EVENT_FIELDS}, [(e)-[:CAUSED_BY]->(x) | x.id] AS causes
"""


def descendants_step(hops: int) -> str:
    """Events 1..hops CAUSED_BY-steps below any of $ids (the mirror of ancestors_step)."""
    return f"""
UNWIND $ids AS i
MATCH p = (:Event {{id: i}})<-[:CAUSED_BY*1..{_hops(hops)}]-(e)
WITH e, min(length(p)) AS hops
RETURN hops, {EVENT_FIELDS}, [(e)<-[:CAUSED_BY]-(x) | x.id] AS effects
"""
