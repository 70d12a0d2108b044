"""``agentstream why / impact / path``: root-cause and impact analysis on the causality graph.

    agentstream why EVENT_OR_VIOLATION_ID [--depth 50] [--json]
    agentstream impact EVENT_ID [--depth 100] [--limit 50] [--json]
    agentstream path A B [--max-hops 1000] [--json]

The graph is the one named by the settings (``graph_url``, ``graph_name``); ``--graph``
reads another one, e.g. a rebuild before it is swapped in.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentstream.console import console, fail

if TYPE_CHECKING:
    from rich.tree import Tree

    from projections.graph.queries import EventInfo, ImpactResult, WhyResult
    from projections.graph.store import GraphStore

AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a tree/table")]
GraphName = Annotated[
    str | None, typer.Option("--graph", help="graph name (default: the settings' graph_name)")
]


def _open(graph: str | None) -> GraphStore:
    from pydantic import ValidationError

    from agentstream.settings import load_settings
    from projections.graph.store import GraphStoreError, open_store

    try:
        settings = load_settings()
    except ValidationError as err:
        first = err.errors()[0]
        fail(f"settings: {first['msg']} — fix AGENTSTREAM_* or agentstream.toml")
    try:
        return open_store(
            settings.graph_url,
            graph or settings.graph_name,
            user=settings.neo4j_user,
            password=settings.neo4j_password,
        )
    except GraphStoreError as err:
        fail(str(err))


def _run(graph: str | None, fn: Any, *args: Any) -> Any:
    """Open the store, run one query, map the known errors to one-line messages."""
    from projections.graph.queries import NotInGraph
    from projections.graph.store import GraphStoreError

    store = _open(graph)
    try:
        return fn(store, *args)
    except NotInGraph as err:
        fail(
            f"{err.ident} is not in graph {store.graph!r} — check the id, or wait for the "
            "graph projection to catch up"
        )
    except GraphStoreError as err:
        fail(str(err))
    except ValueError as err:
        fail(f"{err} — pick a value in range")
    finally:
        store.close()


def _when(e: EventInfo) -> str:
    t = e.time
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if t else "?"


def _label(e: EventInfo, distance: int | None = None) -> str:
    from rich.markup import escape

    if e.placeholder:
        return f"[yellow]? not arrived yet[/] [dim]{e.id}[/]"
    status = ""
    if e.status:
        colour = "red" if e.failed else "green"
        status = f" [{colour}]{escape(e.status)}[/]"
    hop = f"[dim]-{distance}[/] " if distance else ""
    return (
        f"{hop}[cyan]{_when(e)}[/] [bold]{escape(e.agent or '?')}[/] "
        f"{escape(e.type or '')}{status} — {escape(e.summary or '')} [dim]{e.id}[/]"
    )


def why_tree(result: WhyResult) -> Tree:
    """Effect at the top, its causes indented below; a cause met twice is shown once."""
    from rich.markup import escape
    from rich.tree import Tree

    if result.violation:
        v = result.violation
        root = Tree(
            f"[red]violation {escape(v.category or '')}[/] {escape(v.detail or '')} [dim]{v.id}[/]"
        )
        starts = [(root, t) for t in result.targets]
    else:
        root = Tree(_label(result.nodes[result.targets[0]]))
        starts = [(root, c) for c in result.nodes[result.targets[0]].causes]
    shown: set[str] = set(result.targets) if not result.violation else set()
    stack = list(reversed(starts))
    while stack:
        parent, eid = stack.pop()
        node = result.nodes.get(eid)
        if node is None:
            parent.add(f"[dim]… deeper than --depth {result.depth}: {eid}[/]")
            continue
        if eid in shown:
            parent.add(f"[dim]↑ see above: {eid}[/]")
            continue
        shown.add(eid)
        branch = parent.add(_label(node, result.distance.get(eid)))
        stack.extend((branch, c) for c in reversed(node.causes))
    return root


def why(
    event_id: Annotated[str, typer.Argument(help="an event id, or a violation id")],
    depth: Annotated[int, typer.Option(help="follow causes at most this many hops back")] = 50,
    as_json: AsJson = False,
    graph: GraphName = None,
) -> None:
    """Why did this happen? The causal chain back to the root causes."""
    from projections.graph import queries

    result: WhyResult = _run(graph, queries.why, event_id, depth)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    console.print(why_tree(result))
    roots = result.roots()
    console.print(
        f"{len(result.ancestors())} causes, {len(roots)} root cause(s)"
        + (f"; more beyond --depth {depth}" if result.truncated else ""),
        highlight=False,
    )
    for v in result.violations:
        if not result.violation or v.id != result.violation.id:
            console.print(f"[red]violation[/] {v.category}: {v.detail} [dim]{v.id}[/]")


def _impact_table(result: ImpactResult, limit: int) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("hops", "time", "agent", "type", "status", "summary", "id"):
        table.add_column(col)
    for e in result.downstream()[:limit]:
        status = escape(e.status or "")
        table.add_row(
            str(result.distance[e.id]),
            _when(e),
            escape(e.agent or "?"),
            escape(e.type or "(not arrived)"),
            f"[red]{status}[/]" if e.failed else status,
            escape(e.summary or ""),
            f"[dim]{e.id}[/]",
        )
    return table


def impact(
    event_id: Annotated[str, typer.Argument(help="an event id (e.g. a decision)")],
    depth: Annotated[int, typer.Option(help="follow effects at most this many hops")] = 100,
    limit: Annotated[int, typer.Option(help="rows to print (JSON prints all)")] = 50,
    as_json: AsJson = False,
    graph: GraphName = None,
) -> None:
    """What did this lead to? Everything downstream, with the failures among it."""
    from projections.graph import queries

    result: ImpactResult = _run(graph, queries.impact, event_id, depth)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    down = result.downstream()
    console.print(_label(result.event))
    console.print(
        f"{len(down)} downstream events, [red]{len(result.failures())} failed[/], "
        f"{len(result.violations)} violation(s)"
        + (f"; more beyond --depth {depth}" if result.truncated else ""),
        highlight=False,
    )
    if down:
        console.print(
            "  " + ", ".join(f"{t} {n}" for t, n in result.by_type().items()), highlight=False
        )
        console.print(_impact_table(result, limit))
        if len(down) > limit:
            console.print(f"[dim]… {len(down) - limit} more (--limit, or --json)[/]")
    for v in result.violations:
        console.print(f"[red]violation[/] {v.category}: {v.detail} [dim]{v.id}[/]")


def path(
    source: Annotated[str, typer.Argument(help="an event id")],
    target: Annotated[str, typer.Argument(help="another event id")],
    max_hops: Annotated[int, typer.Option(help="give up beyond this many hops")] = 1000,
    as_json: AsJson = False,
    graph: GraphName = None,
) -> None:
    """The shortest causal chain between two events (either may be the cause)."""
    from projections.graph import queries

    result = _run(graph, queries.path, source, target, max_hops)
    if result is None:
        if as_json:
            print("null")
        fail(f"no causal path between {source} and {target} within {max_hops} hops")
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    arrow = "caused by" if result.relation == "caused_by" else "led to"
    for i, e in enumerate(result.events):
        prefix = "  " if i == 0 else f"  [dim]{arrow}[/] "
        console.print(prefix + _label(e))
    console.print(f"{result.hops} hop(s)", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("why")(why)
    app.command("impact")(impact)
    app.command("path")(path)
