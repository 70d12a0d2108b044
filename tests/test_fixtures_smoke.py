"""The fixtures themselves: a broker with the right topics, a graph server that answers."""

from __future__ import annotations

import asyncio

from falkordb import FalkorDB

from schemas.topics import TOPICS
from streams.admin import ensure_topics


def test_broker_has_topics_with_configured_partitions(kafka):
    counts = asyncio.run(ensure_topics(kafka.bootstrap, 6))
    assert counts == {t.name: 6 for t in TOPICS}


def test_falkordb_answers_cypher(falkordb):
    db = FalkorDB(host=falkordb.host, port=falkordb.port)
    g = db.select_graph("smoke")
    res = g.query("CREATE (n:N {id: $id}) RETURN n.id", {"id": "x"})
    assert res.result_set == [["x"]]
