"""The web UI (``agentstream ui``): a read-only FastAPI server for debugging runs.

Layout (one job per module):

- ``backends``: where reads go (analytics through the process that owns chDB, the graph
  store, the log), opened lazily and shared by every request;
- ``runs``, ``steps``, ``causality``, ``agents``, ``deadletters``: page data as plain
  dicts, built with the same functions the CLI uses;
- ``api``: the ``/api/v1`` JSON routes; ``pages``: the HTML shell of every page;
- ``security``: token, login cookie and the security headers (CSP without inline script);
- ``app``: ``create_app``; ``server``: the checks before binding and uvicorn.

Part 2 (live view, dashboards, SQL workspace, memory search) adds a data module, its API
routes and a page component next to these; the shell, router and backends stay as they are.
"""
