"""Token and binding rules, without a stack: the app in-process and the real command."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from agentstream.settings import load_settings
from agentstream.ui.app import create_app
from agentstream.ui.security import UnsafeBinding, check_binding, is_loopback

TOKEN = "t0ken-for-the-ui-tests-123456"


def test_loopback_needs_no_token_and_anything_else_does() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    check_binding("127.0.0.1", None)
    check_binding("0.0.0.0", TOKEN)
    with pytest.raises(UnsafeBinding, match="AGENTSTREAM_UI_TOKEN"):
        check_binding("0.0.0.0", None)
    with pytest.raises(UnsafeBinding, match="shorter than 16"):
        check_binding("0.0.0.0", "short")


def test_the_command_refuses_to_start_off_loopback_without_a_token(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "AGENTSTREAM_DATA_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "agentstream.cli", "ui", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "refusing to serve the UI on 0.0.0.0" in out.stderr
    assert "AGENTSTREAM_UI_TOKEN" in out.stderr


def test_token_by_bearer_or_login_cookie(tmp_path) -> None:
    app = create_app(load_settings(data_dir=tmp_path), token=TOKEN)
    c = TestClient(app)
    assert c.get("/healthz").status_code == 200
    assert c.get("/api/v1/runs").status_code == 401
    assert c.get("/api/v1/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    page = c.get("/runs", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    authed = c.get("/api/v1/runs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert authed.status_code == 503  # past the token; no analytics in this empty data dir
    bad = c.post("/login", data={"token": "nope", "next": "/runs"}, follow_redirects=False)
    assert bad.status_code == 401
    ok = c.post("/login", data={"token": TOKEN, "next": "//evil.example"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/runs"
    assert "httponly" in ok.headers["set-cookie"].lower()
    assert c.get("/runs", headers={"Accept": "text/html"}).status_code == 200


def test_links_for_other_commands(tmp_path) -> None:
    from agentstream.ui.urls import debug_url, run_url, why_url

    s = load_settings(data_dir=tmp_path, ui_host="0.0.0.0", ui_port=8123)
    assert run_url(s, "run 1/x", "e1") == "http://127.0.0.1:8123/runs/run%201%2Fx?event=e1"
    assert debug_url(s, "r") == "http://127.0.0.1:8123/runs/r/debug"
    assert why_url(s, "e") == "http://127.0.0.1:8123/events/e?mode=why"


def test_login_leads_back_to_the_page_asked_for(tmp_path) -> None:
    app = create_app(load_settings(data_dir=tmp_path), token=TOKEN)
    c = TestClient(app)
    page = c.get(
        "/runs/run-1?event=e&view=list", headers={"Accept": "text/html"}, follow_redirects=False
    )
    assert page.headers["location"] == "/login?next=/runs/run-1%3Fevent%3De%26view%3Dlist"
    form = c.get(page.headers["location"])
    assert 'value="/runs/run-1?event=e&amp;view=list"' in form.text
    ok = c.post(
        "/login", data={"token": TOKEN, "next": "/runs/run-1?event=e"}, follow_redirects=False
    )
    assert ok.headers["location"] == "/runs/run-1?event=e"


def test_the_run_page_shell_preloads_its_data(tmp_path) -> None:
    """The browser fetches a run's timeline, summary and selected event while it loads the
    scripts; the URLs are app.js's own (encodeURIComponent), so the answers are reused."""
    c = TestClient(create_app(load_settings(data_dir=tmp_path)))
    event = "019cb0fe-947c-7081-a5dd-b2c0b798775f"

    def preloaded(path: str) -> list[str]:
        links = [x for x in c.get(path).text.splitlines() if 'rel="preload"' in x]
        assert all('as="fetch" crossorigin="anonymous"' in x for x in links)
        return [x.split('href="')[1].split('"')[0] for x in links]

    assert preloaded(f"/runs/run%201(b)?event={event}") == [
        "/api/v1/runs/run%201(b)/timeline",
        "/api/v1/runs/run%201(b)",
        f"/api/v1/events/{event}",
    ]
    assert preloaded("/runs/run-1?event=not-a-uuid") == [
        "/api/v1/runs/run-1/timeline",
        "/api/v1/runs/run-1",
    ]
    assert preloaded("/runs") == preloaded("/runs/run-1/debug") == []


def test_static_files_are_cached_for_good_under_their_hash(tmp_path) -> None:
    from agentstream.ui.pages import static_url

    c = TestClient(create_app(load_settings(data_dir=tmp_path)))
    hashed = c.get(static_url("", "app.js"))
    assert hashed.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "immutable" not in c.get("/static/app.js").headers.get("cache-control", "")
    assert static_url("", "app.js") in c.get("/runs").text
