"""Links into the UI for other parts of the shell (``agentstream demo``, ``status``): one
builder per page, from the settings' host and port. Only the UI's own page routes."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    from agentstream.settings import Settings


def base_url(settings: Settings) -> str:
    host = settings.ui_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.ui_port}"


def run_url(settings: Settings, run_id: str, event_id: str | None = None) -> str:
    """The run page, with ``event_id`` selected in the inspector if given."""
    query = f"?{urlencode({'event': event_id})}" if event_id else ""
    return f"{base_url(settings)}/runs/{quote(run_id, safe='')}{query}"


def debug_url(settings: Settings, run_id: str, event_id: str | None = None) -> str:
    """The step-through of a run, opened at ``event_id`` if given."""
    query = f"?{urlencode({'event': event_id})}" if event_id else ""
    return f"{base_url(settings)}/runs/{quote(run_id, safe='')}/debug{query}"


def why_url(settings: Settings, event_id: str) -> str:
    return f"{base_url(settings)}/events/{quote(event_id, safe='')}?mode=why"
