"""The embedded stack supervisor against real processes: Tansu, FalkorDB, and plain children.

Each test gets its own data directory and free loopback ports, passed the way users pass
them (AGENTSTREAM_* environment for the CLI, Settings for the Python API).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from agentstream.processes import StackError, free_port, pid_alive, port_open
from agentstream.settings import Settings, load_settings
from agentstream.stack import (
    Service,
    Stack,
    broker_internal_port,
    cmdline_matches,
    default_services,
    format_uptime,
    python_service,
    settings_env,
    start_ticks,
)
from schemas.topics import TOPICS

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
PARTITIONS = 3  # neither the default 6 nor Tansu's auto-create 4: proves the setting is used
# the Python parts are switched off here (tests/test_supervisor.py runs them): these tests
# are about the servers, the state file and the CLI
LIGHT = ("worker_enabled", "projections_enabled", "ui_enabled", "otlp_enabled")
OFF = {"worker": "disabled", "projections": "disabled", "ui": "disabled", "otlp": "disabled"}


def wait_until(pred: Callable[[], bool], deadline_s: float = 10.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


@dataclass
class Env:
    data_dir: Path
    kafka_port: int
    graph_port: int

    @property
    def vars(self) -> dict[str, str]:
        return {
            "AGENTSTREAM_DATA_DIR": str(self.data_dir),
            "AGENTSTREAM_KAFKA_URL": f"kafka://{HOST}:{self.kafka_port}",
            "AGENTSTREAM_GRAPH_URL": f"falkordb://{HOST}:{self.graph_port}",
            "AGENTSTREAM_PARTITIONS": str(PARTITIONS),
            "AGENTSTREAM_CONFIG": str(self.data_dir.parent / "no-such-config.toml"),
            "AGENTSTREAM_METRICS_PORT_BASE": "0",
            **{f"AGENTSTREAM_{k.upper()}": "false" for k in LIGHT},
        }

    def settings(self, **overrides: object) -> Settings:
        base: dict[str, object] = {
            "data_dir": self.data_dir,
            "kafka_url": f"kafka://{HOST}:{self.kafka_port}",
            "graph_url": f"falkordb://{HOST}:{self.graph_port}",
            "partitions": PARTITIONS,
            "metrics_port_base": 0,
            **dict.fromkeys(LIGHT, False),
        }
        return load_settings(**{**base, **overrides})

    @property
    def state_path(self) -> Path:
        return self.data_dir / "run" / "stack.json"

    def recorded_pids(self) -> dict[str, int]:
        if not self.state_path.exists():
            return {}
        parts = json.loads(self.state_path.read_text())["parts"]
        return {name: rec["pid"] for name, rec in parts.items() if rec.get("pid") is not None}


def two_ports() -> tuple[int, int]:
    a = free_port(HOST)
    while (b := free_port(HOST)) == a:
        pass
    return a, b


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    kafka_port, graph_port = two_ports()
    e = Env(tmp_path / "data", kafka_port, graph_port)
    # the Python API reads AGENTSTREAM_CONFIG too: keep a stray agentstream.toml out
    monkeypatch.setenv("AGENTSTREAM_CONFIG", e.vars["AGENTSTREAM_CONFIG"])
    pids: set[int] = set()
    yield e
    pids.update(e.recorded_pids().values())
    Stack(e.settings()).down()  # stops only what is recorded, and only if it is ours
    for pid in pids:
        assert wait_until(lambda p=pid: not pid_alive(p)), f"pid {pid} left running"


def cli(env: Env, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentstream.cli", *args],
        env={**os.environ, **env.vars, "COLUMNS": "200", **extra},
        capture_output=True,
        text=True,
        timeout=120,
    )


def topic_counts(bootstrap: str) -> dict[str, int]:
    async def go() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
        finally:
            await admin.close()

    return asyncio.run(go())


def listening_socket(port: int) -> socket.socket:
    s = socket.socket()
    s.bind((HOST, port))
    s.listen()
    return s


# --------------------------------------------------------------------------------------
# CLI: the whole life cycle, with exit codes
# --------------------------------------------------------------------------------------
def test_up_status_up_again_down_via_cli(env: Env):
    first = cli(env, "up", "--json")
    assert first.returncode == 0, first.stderr
    started = {r["part"]: r for r in json.loads(first.stdout)}
    assert {p: r["action"] for p, r in started.items()} == {
        "broker": "started",
        "gate": "started",
        "graph": "started",
        "archiver": "started",
        **OFF,
    }
    # clients reach the broker only through the gate, on the configured port
    assert started["gate"]["port"] == env.kafka_port
    assert started["broker"]["port"] != env.kafka_port
    assert started["graph"]["port"] == env.graph_port
    pids = {p: r["pid"] for p, r in started.items() if r["pid"]}
    assert all(pid_alive(pid) for pid in pids.values())
    assert (env.data_dir / "logs" / "broker.log").exists()
    assert (env.data_dir / "falkordb").is_dir()

    status = cli(env, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    parts = {p["part"]: p for p in json.loads(status.stdout)}
    assert {p: s["state"] for p, s in parts.items()} == {
        "supervisor": "running",
        "broker": "running",
        "gate": "running",
        "graph": "running",
        "archiver": "running",
        **OFF,
    }
    assert all(parts[p]["restarts"] == 0 for p in pids)
    assert parts["broker"]["pid"] == pids["broker"]
    assert "in memory" in parts["broker"]["note"]
    assert parts["graph"]["detail"].startswith("FalkorDB ")
    counts = topic_counts(f"{HOST}:{env.kafka_port}")
    assert {t.name: counts.get(t.name) for t in TOPICS} == {t.name: PARTITIONS for t in TOPICS}

    table = cli(env, "status")  # the human form says the same
    assert table.returncode == 0
    assert "running" in table.stdout and "in memory" in table.stdout

    again = cli(env, "up", "--json")
    assert again.returncode == 0, again.stderr
    second = {r["part"]: r for r in json.loads(again.stdout)}
    assert {p: r["action"] for p, r in second.items()} == {
        "broker": "already running",
        "gate": "already running",
        "graph": "already running",
        "archiver": "already running",
        **OFF,
    }
    assert {p: r["pid"] for p, r in second.items() if r["pid"]} == pids

    down = cli(env, "down", "--json")
    assert down.returncode == 0, down.stderr
    stopped = {r["part"]: r for r in json.loads(down.stdout)}
    assert {p: (r["action"], r["pid"]) for p, r in stopped.items()} == {
        p: ("stopped", pid) for p, pid in pids.items()
    }
    # the gate first (outside producers cut off), then dependents first
    assert [r["part"] for r in json.loads(down.stdout)] == ["gate", "archiver", "graph", "broker"]
    assert not any(pid_alive(pid) for pid in pids.values())
    assert not env.state_path.exists()
    assert not port_open(HOST, env.kafka_port) and not port_open(HOST, env.graph_port)

    after = cli(env, "status", "--json")
    assert after.returncode == 1
    assert {p["state"] for p in json.loads(after.stdout)} == {"stopped", "disabled"}

    nothing = cli(env, "down")
    assert nothing.returncode == 0 and "nothing recorded" in nothing.stdout


def test_broker_port_taken_fails_cleanly_and_leaves_nothing(env: Env):
    blocker = listening_socket(env.kafka_port)
    try:
        res = cli(env, "up")
        assert res.returncode == 1
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, res.stderr
        # the clients' port is the gate's
        assert f"gate: port {env.kafka_port} is in use by another process" in lines[0]
        assert "AGENTSTREAM_KAFKA_URL=kafka://127.0.0.1:PORT" in lines[0]
        # the graph was not started (or was stopped again): nothing orphaned
        assert not port_open(HOST, env.graph_port)
        assert not env.state_path.exists()
        status = cli(env, "status", "--json")
        assert status.returncode == 1
        gate = next(p for p in json.loads(status.stdout) if p["part"] == "gate")
        assert "in use by another process" in gate["detail"]
    finally:
        blocker.close()


def test_graph_port_taken_leaves_no_broker_running(env: Env):
    blocker = listening_socket(env.graph_port)
    try:
        res = cli(env, "up")
        assert res.returncode == 1
        assert f"graph: port {env.graph_port} is in use" in res.stderr
        assert "AGENTSTREAM_GRAPH_URL=falkordb://127.0.0.1:PORT" in res.stderr
        assert not port_open(HOST, env.kafka_port)
        assert not env.state_path.exists()
    finally:
        blocker.close()


def test_killed_broker_is_restarted_with_its_topics_and_readers_after_it(env: Env):
    assert cli(env, "up").returncode == 0
    pids = env.recorded_pids()
    os.kill(pids["broker"], signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pids["broker"]))

    def settled() -> dict[str, dict]:
        res = cli(env, "status", "--json")
        parts = {p["part"]: p for p in json.loads(res.stdout)}
        if res.returncode == 0 and parts["broker"]["pid"] not in (None, pids["broker"]):
            return parts
        return {}

    assert wait_until(lambda: bool(settled()), 60.0)
    parts = settled()
    assert parts["broker"]["state"] == "running" and parts["broker"]["restarts"] == 1
    assert parts["broker"]["last_exit"] == -signal.SIGKILL
    assert parts["broker"]["last_error"] == "killed by SIGKILL"
    # the archiver reads the log: it was held while the broker restarted, then started again
    assert parts["archiver"]["state"] == "running"
    assert parts["archiver"]["pid"] != pids["archiver"] and parts["archiver"]["restarts"] == 0
    assert parts["graph"]["pid"] == pids["graph"]  # the graph does not read the log
    counts = topic_counts(f"{HOST}:{env.kafka_port}")
    assert {t.name: counts.get(t.name) for t in TOPICS} == {t.name: PARTITIONS for t in TOPICS}
    log = (env.data_dir / "logs" / "supervisor.log").read_text()
    assert log.index("archiver: stopping while broker restarts") < log.rindex("broker: running")
    assert log.rindex("broker: running") < log.rindex("archiver: running")

    table = cli(env, "status")
    assert table.returncode == 0 and "killed by SIGKILL" in table.stdout


def test_bad_settings_are_one_line_errors(env: Env):
    res = cli(env, "up", AGENTSTREAM_PARTITIONS="many")
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "settings: partitions:" in lines[0]
    assert "fix AGENTSTREAM_PARTITIONS" in lines[0]
    assert not env.data_dir.exists()  # nothing was started or written


# --------------------------------------------------------------------------------------
# a stale state file must never kill an unrelated process
# --------------------------------------------------------------------------------------
def _stale_record(pid: int, argv: list[str], ticks: int, port: int) -> dict[str, object]:
    return {
        "pid": pid,
        "argv": argv,
        "host": HOST,
        "port": port,
        "started_at": "2020-01-01T00:00:00+00:00",
        "started_unix": 1577836800.0,
        "start_ticks": ticks,
        "log": "/dev/null",
    }


def test_stale_state_with_unrelated_pid_is_left_alone(env: Env):
    # own session, like ours: only the recorded command line tells them apart
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    other = subprocess.Popen(["sleep", "61"], start_new_session=True)
    try:
        ticks = start_ticks(sleeper.pid)
        assert ticks is not None
        tansu = default_services()[0].argv(env.settings())
        env.state_path.parent.mkdir(parents=True, exist_ok=True)
        env.state_path.write_text(
            json.dumps(
                {
                    "version": 1,
                    "parts": {
                        # right pid and start time, but not the recorded command line
                        "broker": _stale_record(sleeper.pid, tansu, ticks, env.kafka_port),
                        # right command line, but another start time: a reused pid
                        "graph": _stale_record(
                            other.pid, ["sleep", "61"], ticks - 1, env.graph_port
                        ),
                    },
                }
            )
        )
        stack = Stack(env.settings())
        status = {p.part: p for p in stack.status()}
        assert status["broker"].state == "stopped"
        assert "belongs to another process" in status["broker"].detail

        res = cli(env, "down", "--json")
        assert res.returncode == 0, res.stderr
        actions = {r["part"]: r["action"] for r in json.loads(res.stdout)}
        assert actions == {"broker": "left alone", "graph": "left alone"}
        assert sleeper.poll() is None and other.poll() is None
        assert not env.state_path.exists()
    finally:
        for p in (sleeper, other):
            p.kill()
            p.wait()


def test_up_over_stale_state_starts_fresh_without_killing_the_stranger(env: Env):
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        tansu = default_services()[0].argv(env.settings())
        env.state_path.parent.mkdir(parents=True, exist_ok=True)
        record = _stale_record(sleeper.pid, tansu, 1, env.kafka_port)
        env.state_path.write_text(json.dumps({"version": 1, "parts": {"broker": record}}))
        results = {r.part: r for r in Stack(env.settings()).up()}
        assert results["broker"].action == "started"
        assert results["broker"].pid != sleeper.pid
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


# --------------------------------------------------------------------------------------
# Python API: rollback, missing binaries, settings drift, extra services
# --------------------------------------------------------------------------------------
def _crashing_service(name: str, code: int) -> Service:
    return Service(
        name=name,
        argv=lambda s: [sys.executable, "-c", f"import sys; sys.exit({code})"],
        depends_on=("broker", "graph"),
        settle_s=3.0,
    )


def test_part_failing_to_start_rolls_back_parts_started_in_the_same_call(env: Env):
    stack = Stack(env.settings(), services=[*default_services(), _crashing_service("boom", 3)])
    with pytest.raises(StackError) as exc:
        stack.up()
    assert exc.value.part == "boom"
    assert "exited with code 3 while starting" in str(exc.value)
    assert str(env.data_dir / "logs" / "boom.log") in str(exc.value)
    assert not port_open(HOST, env.kafka_port) and not port_open(HOST, env.graph_port)
    assert not env.state_path.exists()


def test_rollback_keeps_parts_that_were_already_running(env: Env):
    before = {r.part: r.pid for r in Stack(env.settings()).up() if r.pid}
    stack = Stack(env.settings(), services=[*default_services(), _crashing_service("boom", 4)])
    with pytest.raises(StackError, match="boom"):
        stack.up()
    assert all(pid_alive(pid) for pid in before.values())
    assert env.recorded_pids() == before


def test_missing_binary_is_reported_before_anything_starts(env: Env):
    missing = Service(name="ghost", argv=lambda s: ["/nonexistent/agentstream-ghost"])
    stack = Stack(env.settings(), services=[*default_services(), missing])
    with pytest.raises(StackError) as exc:
        stack.up()
    assert str(exc.value).startswith("ghost: binary /nonexistent/agentstream-ghost is missing")
    assert not port_open(HOST, env.kafka_port) and not port_open(HOST, env.graph_port)


def test_partition_mismatch_on_running_broker_is_a_clear_error(env: Env):
    Stack(env.settings(), services=default_services()[:1]).up()
    with pytest.raises(StackError) as exc:
        Stack(env.settings(partitions=5), services=default_services()[:1]).up()
    assert exc.value.part == "broker"
    assert exc.value.problem == (
        "topics have another partition count than 5: "
        + ", ".join(f"{t.name} has {PARTITIONS}" for t in TOPICS)
    )
    assert "AGENTSTREAM_PARTITIONS" in exc.value.fix


def test_changed_port_while_running_asks_for_down_first(env: Env):
    first = Stack(env.settings(), services=default_services()[:2]).up()  # broker + gate
    moved = env.settings(kafka_url=f"kafka://{HOST}:{free_port(HOST)}")
    with pytest.raises(StackError, match=r"already running .* with other settings"):
        Stack(moved, services=default_services()[:2]).up()
    assert pid_alive(first[0].pid)


async def test_python_api_works_inside_an_event_loop(env: Env):
    """`agentstream demo` is async: up/status must not need a loop of their own."""
    stack = Stack(env.settings(), services=default_services()[:1])
    results = stack.up()
    assert results[0].action == "started"
    assert [p.state for p in stack.status()] == ["running"]
    # the event loop is still usable after the nested run
    await asyncio.sleep(0)


def test_python_child_gets_the_supervisors_settings(env: Env, tmp_path: Path):
    out = tmp_path / "child-env.json"
    script = (
        "import json, time; from agentstream.settings import load_settings; s = load_settings();"
        f" open({str(out)!r}, 'w').write(json.dumps([str(s.data_dir), s.kafka_url, s.partitions]));"
        " time.sleep(600)"
    )
    child = Service(
        name="child",
        argv=lambda s: [sys.executable, "-c", script],
        depends_on=("broker",),
        settle_s=0.3,
    )
    stack = Stack(env.settings(), services=[default_services()[0], child])
    results = {r.part: r for r in stack.up()}
    assert results["child"].action == "started" and results["child"].port is None
    assert wait_until(lambda: out.exists() and out.read_text() != "")
    assert json.loads(out.read_text()) == [
        str(env.data_dir.resolve()),
        # a part of the stack reaches the broker on its own port: the gate is for outside
        # clients, so that `down` can close it before the parts drain the log
        f"kafka://{HOST}:{broker_internal_port(env.settings())}",
        PARTITIONS,
    ]
    status = {p.part: p for p in stack.status()}
    assert status["child"].state == "running" and status["child"].detail == "alive"
    down = [(r.part, r.action) for r in stack.down()]
    assert down == [("child", "stopped"), ("broker", "stopped")]
    assert not pid_alive(results["child"].pid)


def test_python_service_that_exits_early_is_a_failed_start(env: Env):
    quitter = python_service("quitter", ["--help"], depends_on=(), settle_s=10.0)
    with pytest.raises(StackError) as exc:
        Stack(env.settings(), services=[quitter]).up()
    assert str(exc.value).startswith("quitter: exited with code 0 while starting")


def test_external_parts_are_not_started_and_are_probed(env: Env):
    settings = env.settings(kafka_embedded=False, graph_url=f"bolt://{HOST}:{env.graph_port}")
    stack = Stack(settings)
    assert [(r.part, r.action) for r in stack.up()] == [
        ("broker", "external"),
        ("gate", "disabled"),  # real Kafka: clients talk to it directly
        ("graph", "external"),
        ("archiver", "disabled"),  # next to real Kafka the archiver is its own service
        *OFF.items(),
    ]
    assert not env.state_path.exists()
    parts = {p.part: p for p in stack.status()}
    assert parts["broker"].state == "unreachable" and not parts["broker"].ok
    blocker = listening_socket(env.kafka_port)
    try:
        assert {p.part: p.state for p in stack.status()}["broker"] == "external"
    finally:
        blocker.close()


# --------------------------------------------------------------------------------------
# pure units
# --------------------------------------------------------------------------------------
def test_cmdline_match_accepts_a_rewritten_title_only_for_the_same_binary():
    argv = ["/opt/bin/redis-server", "--port", "1"]
    assert cmdline_matches(argv, argv)
    assert cmdline_matches(["/opt/bin/redis-server 127.0.0.1:1", "", ""], argv)
    assert not cmdline_matches(["/usr/bin/sleep", "60"], argv)
    assert not cmdline_matches(["/usr/bin/sleep 127.0.0.1:1"], argv)
    assert not cmdline_matches(["/opt/bin/redis-server", "--port", "2"], argv)


def test_python_service_argv_uses_this_interpreter_and_the_cli():
    svc = python_service("worker", ["worker", "--concurrency", "2"])
    assert svc.argv(Settings()) == [
        sys.executable,
        "-m",
        "agentstream.cli",
        "worker",
        "--concurrency",
        "2",
    ]
    assert svc.depends_on == ("broker",) and svc.endpoint is None


def test_dependency_order_and_registry_errors(tmp_path: Path):
    def svc(name: str, *deps: str) -> Service:
        return Service(name=name, argv=lambda s: ["true"], depends_on=deps)

    settings = Settings(data_dir=tmp_path)
    stack = Stack(settings, services=[svc("worker", "broker"), svc("broker")])
    assert [s.name for s in stack._services] == ["broker", "worker"]
    with pytest.raises(StackError, match="unknown part 'nope'"):
        Stack(settings, services=[svc("a", "nope")])
    with pytest.raises(StackError, match="depends on itself"):
        Stack(settings, services=[svc("a", "b"), svc("b", "a")])


def test_settings_env_round_trips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    original = Settings(
        data_dir=tmp_path,
        kafka_url="kafka://127.0.0.1:1234",
        kafka_embedded=False,
        partitions=9,
        producer_idempotence=True,
        graph_url="bolt://db:7687",
    )
    for key in list(os.environ):
        if key.startswith("AGENTSTREAM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AGENTSTREAM_CONFIG", str(tmp_path / "none.toml"))
    for key, value in settings_env(original).items():
        monkeypatch.setenv(key, value)
    assert load_settings() == original


def test_format_uptime():
    assert [format_uptime(s) for s in (5, 65, 3725, 90000)] == ["5s", "1m05s", "1h02m", "1d01h"]


def test_an_internal_port_given_in_settings_is_recorded_for_commands_run_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`up` with AGENTSTREAM_KAFKA_INTERNAL_PORT, then `status` in a shell without it: both
    must talk to the same broker port (status once picked a new one and saw 'unhealthy')."""
    monkeypatch.setenv("AGENTSTREAM_CONFIG", str(tmp_path / "no-such-config.toml"))
    port = free_port(HOST)
    given = load_settings(data_dir=tmp_path / "data", kafka_internal_port=port)
    assert broker_internal_port(given) == port
    later = load_settings(data_dir=tmp_path / "data")
    assert broker_internal_port(later) == port
