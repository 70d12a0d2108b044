// AgentStream's causal walk, run inside FalkorDB as a UDF library (GRAPH.UDF LOAD).
//
// Why a UDF: `why`/`impact` walk CAUSED_BY breadth-first, one level at a time. Done from
// the client that is one round trip per level (50 for `why --depth 50`); variable-length
// Cypher either enumerates paths (explodes on causal diamonds) or, on FalkorDB, returns
// only some of the ancestors under a depth bound (docs/graph.md). Here the same
// breadth-first walk runs next to the data: one round trip, every event once, at its
// shortest distance. It only reads; FalkorDB forbids UDFs to write.
//
// Loaded by projections/graph/falkordb_store.py, called by traversal.WALK; the library
// is named after a hash of this file, so an edited walk loads under a new name.

function eventIds(nodes) {
    return nodes.map((n) => n.attributes.id);
}

// starts: Event nodes; depth: hops to walk; direction: 'outgoing' walks to causes (why),
// 'incoming' to effects (impact). Returns one row per event reached (starts first, at
// hops 0): [hops, id, type, time, agent, run, task, status, summary, tool, along], where
// `along` are the event's neighbours in the walk's direction, listed for every row (the
// last level too, so a caller can tell where the walk was cut short).
//
// The rows travel as one JSON string, not as a nested array: the Python client turns
// every cell of an array reply into several objects, and the garbage collections that
// churn triggered every ~45 walks cost 15-25 ms each (bench/bench_graph.py, docs/graph.md).
function walk(starts, depth, direction) {
    const along = {direction: direction, types: ['CAUSED_BY'], returnType: 'nodes'};
    const seen = new Set();
    let frontier = [];
    for (const s of starts) {
        if (!seen.has(s.id)) {
            seen.add(s.id);
            frontier.push(s);
        }
    }
    const rows = [];
    let hops = 0;
    while (frontier.length > 0) {
        const next = graph.traverse(frontier, along);
        const reached = [];
        for (let i = 0; i < frontier.length; i++) {
            const a = frontier[i].attributes;
            rows.push([
                hops, a.id, a.type, a.time, a.agent, a.run, a.task, a.status, a.summary, a.tool,
                eventIds(next[i]),
            ]);
            if (hops < depth) {
                for (const m of next[i]) {
                    if (!seen.has(m.id)) {
                        seen.add(m.id);
                        reached.push(m);
                    }
                }
            }
        }
        frontier = reached;
        hops += 1;
    }
    return JSON.stringify(rows);
}

falkor.register('walk', walk);
