"""The causality graph: who did what, in which run, because of what (see docs/graph.md)."""
