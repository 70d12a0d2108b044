"""The supervisor daemon behind ``agentstream up`` (hidden command ``agentstream supervise``).

Why a daemon: only a parent learns how its child ended (exit code), and only a process that
outlives ``up`` can restart a part that dies. It runs in its own session, starts the parts
in dependency order, and records everything in ``DATA_DIR/run/stack.json`` (atomic
rewrites), which is what ``up`` waits on and ``status`` reads.

Talking to it (no sockets; the data directory is the channel):

- ``up`` writes ``run/plan.json`` (the parts, their argv and ports, a round id) and starts
  the daemon, or sends it SIGHUP when it already runs. The daemon starts what is missing
  and reports the round ``ok``, or ``failed`` with the part's error after stopping the
  parts that round started (parts that were already running stay).
- ``down`` sends SIGTERM: parts are stopped in reverse dependency order (``before_stop``
  hook, SIGTERM, wait ``stop_timeout_s`` so the archiver can flush, then SIGKILL), the
  results go to ``run/down.json``, the state file is removed, and the daemon exits.

Restart policy: a part that exits (any code) is started again after a backoff that doubles
from :data:`BACKOFF_BASE_S` up to :data:`BACKOFF_MAX_S`, reset once the part has run
:data:`STABLE_S`. :data:`CRASH_LOOP_RESTARTS` restarts within :data:`CRASH_LOOP_WINDOW_S`
make its state ``crash-loop`` (shown by ``status``, exit code 1); it is still restarted,
with the longer backoff. When the broker dies, the parts that read the log are stopped
first, the broker is started fresh, its topics created and the log restored from the
archive, and only then are they started again. Parts left by a daemon that was killed are
adopted (watched by pid; their exit code is then unknown) rather than restarted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentstream.processes import ManagedProcess, StackError, port_open, stop_pid
from agentstream.settings import Settings
from agentstream.stack import (
    Record,
    Report,
    Service,
    StackState,
    call_wait_ready,
    internal_settings,
    owned,
    read_state,
    registry_service,
    settings_env,
    start_ticks,
    supervisor_argv,
    write_json_atomic,
    write_state,
)

BROKER_SIDE = ("broker", "gate")  # run with the clients' settings (see _part_settings)
log = logging.getLogger("agentstream.supervisor")

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
CRASH_LOOP_RESTARTS = 4
CRASH_LOOP_WINDOW_S = 60.0
STABLE_S = 60.0
POLL_S = 0.1
ERROR_MARKERS = ("error", "exception", "traceback", "fatal", "critical", "killed", "panic")


HOLD_STOP_S = 10.0  # how long a log reader may take to stop when the broker died


class Stopping(Exception):
    """``down`` arrived while a part was starting: abandon the start."""


def last_error_line(path: Path, since: int = 0, limit: int = 65536) -> str:
    """The last line of a part's log (written since ``since``) that reads like an error;
    empty if none does: what ``status`` shows next to a restart."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(max(since, size - limit))
            lines = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    for ln in reversed(lines):
        if any(m in ln.lower() for m in ERROR_MARKERS):
            return ln[:300]
    return ""


def exit_text(code: int | None) -> str:
    if code is None:
        return "exited (exit code unknown: adopted from an earlier supervisor)"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass
class Part:
    """One supervised part: what to run and how it has been doing."""

    name: str
    argv: list[str]
    host: str | None
    port: int | None
    depends_on: list[str]
    settle_s: float
    stop_timeout_s: float
    cascade: bool
    not_installed: str | None
    svc: Service | None  # hooks, when the registry knows this part
    state: str = "waiting"
    proc: ManagedProcess | None = None
    record: Record | None = None
    adopted: bool = False
    restarts: int = 0
    crashes: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    consecutive: int = 0
    last_exit: int | None = None
    last_error: str = ""
    next_start: float | None = None
    detail: str = ""
    progress: dict[str, Any] | None = None
    log_offset: int = 0
    running_since: float | None = None
    held: bool = False  # stopped on purpose (its dependency restarts): not a crash
    spawned_at: float = 0.0

    @classmethod
    def from_plan(cls, entry: dict[str, Any]) -> Part:
        return cls(
            name=entry["name"],
            argv=list(entry["argv"]),
            host=entry.get("host"),
            port=entry.get("port"),
            depends_on=list(entry.get("depends_on", [])),
            settle_s=float(entry.get("settle_s", 1.0)),
            stop_timeout_s=float(entry.get("stop_timeout_s", 10.0)),
            cascade=bool(entry.get("cascade", False)),
            not_installed=entry.get("not_installed"),
            svc=registry_service(entry["name"]),
        )

    @property
    def pid(self) -> int | None:
        return None if self.record is None else self.record.pid

    def alive(self) -> bool:
        if self.record is None:
            return False
        if self.proc is not None and self.proc.proc is not None:
            return self.proc.proc.poll() is None
        return owned(self.record)

    def exit_code(self) -> int | None:
        if self.proc is not None and self.proc.proc is not None:
            return self.proc.proc.returncode
        return None

    def as_entry(self) -> dict[str, Any]:
        rec: dict[str, Any] = {}
        if self.record is not None:
            r = self.record
            rec = {
                "pid": r.pid,
                "argv": r.argv,
                "host": r.host,
                "port": r.port,
                "started_at": r.started_at,
                "started_unix": r.started_unix,
                "start_ticks": r.start_ticks,
                "log": r.log,
            }
        return {
            "pid": None,
            "argv": self.argv,
            "host": self.host,
            "port": self.port,
            **rec,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_error": self.last_error,
            "detail": self.detail,
            "progress": self.progress,
            "next_start_unix": None
            if self.next_start is None
            else time.time() + max(0.0, self.next_start - time.monotonic()),
            "adopted": self.adopted,
        }


class Supervisor:
    """Starts, watches, restarts and stops the parts of one data directory's stack."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_dir = settings.data_dir / "run"
        self.state_path = self.run_dir / "stack.json"
        self.plan_path = self.run_dir / "plan.json"
        self.down_path = self.run_dir / "down.json"
        self.parts: dict[str, Part] = {}
        self.order: list[str] = []
        self.round: dict[str, Any] | None = None
        self.deadline_s = 30.0
        self._stop = False
        self._reload = False
        self._metrics: Any = None  # agentstream.telemetry.MetricsEndpoint, when available
        self._dirty = True
        self._last_write = 0.0
        self._record = Record(
            pid=os.getpid(),
            argv=supervisor_argv(),
            host=None,
            port=None,
            started_at=_now_iso(),
            started_unix=time.time(),
            start_ticks=start_ticks(os.getpid()) or 0,
            log=str(settings.data_dir / "logs" / "supervisor.log"),
        )

    # --- signals and the state file ----------------------------------------------------
    def _on_term(self, signum: int, frame: Any) -> None:
        self._stop = True

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reload = True

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and not self._dirty and now - self._last_write < 1.0:
            return
        sup = {
            "pid": self._record.pid,
            "argv": self._record.argv,
            "host": None,
            "port": None,
            "started_at": self._record.started_at,
            "started_unix": self._record.started_unix,
            "start_ticks": self._record.start_ticks,
            "log": self._record.log,
            "heartbeat_unix": time.time(),
        }
        parts = {n: self.parts[n].as_entry() for n in self.order if n in self.parts}
        write_state(self.state_path, StackState(sup, parts, self.round))
        self._dirty, self._last_write = False, now

    def _set(self, part: Part, state: str, detail: str | None = None) -> None:
        if part.state != state or (detail is not None and detail != part.detail):
            log.info("%s: %s%s", part.name, state, f" ({detail})" if detail else "")
        part.state = state
        if detail is not None:
            part.detail = detail
        if state != "starting" and state != "restoring":
            part.progress = None
        self._dirty = True

    def _pump(self) -> None:
        """Called inside long waits: keep the state file fresh, notice ``down``."""
        self.write()
        if self._stop:
            raise Stopping

    # --- the plan ---------------------------------------------------------------------------
    def _load_plan(self) -> None:
        plan = json.loads(self.plan_path.read_text())
        self.deadline_s = float(plan.get("deadline_s", 30.0))
        self.round = {"id": plan["round"], "result": "running", "started": []}
        for entry in plan["parts"]:
            name = entry["name"]
            part = self.parts.get(name)
            if part is None or part.argv != entry["argv"] or part.state == "not installed":
                fresh = Part.from_plan(entry)
                if part is not None:
                    fresh.restarts, fresh.crashes = part.restarts, part.crashes
                    fresh.record, fresh.proc, fresh.adopted = part.record, part.proc, part.adopted
                self.parts[name] = fresh
            if name not in self.order:
                self.order.append(name)
        self._dirty = True

    def _adopt(self) -> None:
        """Parts a killed daemon left running are watched, not restarted (the broker's log
        lives in its memory)."""
        old = read_state(self.state_path)
        for name, part in self.parts.items():
            rec = old.record(name)
            if rec is not None and owned(rec) and rec.argv == part.argv:
                part.record, part.adopted = rec, True
                part.running_since = time.monotonic()
                entry = old.parts.get(name, {})
                part.restarts = int(entry.get("restarts", 0))
                self._set(part, "running", "adopted from a previous supervisor")

    # --- starting -----------------------------------------------------------------------
    def _deps_ready(self, part: Part) -> bool:
        return all(
            self.parts[d].state in ("running", "not installed")
            for d in part.depends_on
            if d in self.parts
        )

    def _report(self, part: Part) -> Report:
        def report(text: str, done: float | None, total: float | None) -> None:
            part.progress = {"text": text, "done": done, "total": total}
            part.detail = text
            self._dirty = True
            self._pump()

        return report

    def _start(self, part: Part) -> None:
        """Start one part and wait until it is ready; raise StackError if it is not."""
        self._spawn(part)
        self._ready(part)

    def _part_settings(self, part: Part) -> Settings:
        """The settings a part runs with. The stack's own parts reach the embedded broker on
        its own port: the gate is for outside clients only, so ``down`` can close it first
        (no producer can add to the log any more) and the archiver still drains the log."""
        if self.settings.kafka_embedded and part.name not in BROKER_SIDE:
            return internal_settings(self.settings)
        return self.settings

    def _spawn(self, part: Part) -> None:
        """Start the process (not yet ready: see :meth:`_ready`)."""
        svc = part.svc
        if svc is not None and svc.prepare is not None:
            svc.prepare(self.settings)
        log_path = self.settings.data_dir / "logs" / f"{part.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            part.log_offset = log_path.stat().st_size
        proc = ManagedProcess(part.name, part.argv, log_path)
        self._set(part, "starting", "starting")
        try:
            pid = proc.start(env=settings_env(self._part_settings(part)))
        except OSError as err:
            raise StackError(
                part.name, f"cannot start {part.argv[0]}: {err}", f"see {log_path}"
            ) from None
        part.proc, part.adopted = proc, False
        now = time.time()
        part.record = Record(
            pid=pid,
            argv=part.argv,
            host=part.host,
            port=part.port,
            started_at=_now_iso(now),
            started_unix=now,
            start_ticks=start_ticks(pid) or 0,
            log=str(log_path),
        )
        part.spawned_at = time.monotonic()
        self._dirty = True

    def _ready(self, part: Part) -> None:
        """Wait until a spawned part is ready, run its hooks; stop it if it fails."""
        svc, proc = part.svc, part.proc
        assert proc is not None and part.record is not None
        pid = part.record.pid
        try:
            self._wait_started(part, proc)
            detail = ""
            if svc is not None and svc.wait_ready is not None:
                call_wait_ready(svc, self.settings, self.deadline_s, self._report(part), pid)
            if svc is not None and svc.provision is not None:
                detail = svc.provision(self.settings)
            if svc is not None and svc.restore is not None:
                self._set(part, "restoring", "restoring the log from the archive")
                restored = svc.restore(self.settings, self._report(part))
                detail = f"{detail}; {restored}" if detail else restored
            self._check_alive(part, proc, "right after starting")
        except BaseException:
            self._kill(part)
            raise
        part.running_since = time.monotonic()
        part.next_start = None
        self._set(part, "running", detail or "alive")

    def _check_alive(self, part: Part, proc: ManagedProcess, when: str) -> None:
        assert proc.proc is not None
        if proc.proc.poll() is not None:
            part.last_exit = proc.proc.returncode
            logged = last_error_line(proc.log_path, part.log_offset)
            part.last_error = logged or exit_text(part.last_exit)
            raise StackError(
                part.name,
                f"exited with code {proc.proc.returncode} {when}",
                f"see {proc.log_path}: {part.last_error or '(empty log)'}",
            )

    def _wait_started(self, part: Part, proc: ManagedProcess) -> None:
        if part.host is not None and part.port is not None:
            end = part.spawned_at + self.deadline_s
            while not port_open(part.host, part.port):
                self._check_alive(part, proc, "while starting")
                if time.monotonic() > end:
                    raise StackError(
                        part.name,
                        f"not listening on {part.host}:{part.port} after {self.deadline_s:.0f}s",
                        f"see {proc.log_path}",
                    )
                self._pump()
                time.sleep(0.02)
            return
        end = part.spawned_at + part.settle_s
        while time.monotonic() < end:
            self._check_alive(part, proc, "while starting")
            self._pump()
            time.sleep(0.05)

    def _kill(self, part: Part) -> None:
        if part.record is None:
            return
        if part.proc is not None:
            part.proc.stop(part.stop_timeout_s)
            code = part.exit_code()
            if code is not None:
                part.last_exit = code
        else:
            stop_pid(part.record.pid, part.stop_timeout_s)
        part.record, part.proc = None, None
        self._dirty = True

    def _stop_part(self, part: Part) -> dict[str, Any]:
        """``before_stop``, SIGTERM, wait, SIGKILL; what happened, for ``down``."""
        rec = part.record
        if rec is None:
            return {}
        if not part.alive():
            self._kill(part)
            return {
                "part": part.name,
                "pid": rec.pid,
                "action": "already gone",
                "detail": "had exited",
            }
        t0 = time.monotonic()
        notes: list[str] = []
        svc = part.svc
        if svc is not None and svc.before_stop is not None:
            try:
                notes.append(svc.before_stop(self.settings))
            except Exception as err:  # a failed compaction must not block the stop
                notes.append(f"before stop: {err}")
        self._set(part, "stopping", "stopping")
        self.write(force=True)
        self._kill(part)
        took = time.monotonic() - t0
        code = part.last_exit if part.proc is None and not part.adopted else None
        exit_text = f"exit {code}" if code is not None else "exited"
        notes.insert(0, f"{exit_text} after SIGTERM in {took:.1f}s")
        self._set(part, "stopped", "; ".join(n for n in notes if n))
        return {"part": part.name, "pid": rec.pid, "action": "stopped", "detail": part.detail}

    # --- the round: start everything the plan enables ---------------------------------------
    def run_round(self) -> None:
        assert self.round is not None
        started: list[str] = []
        try:
            todo: list[str] = []
            for name in self.order:
                part = self.parts[name]
                if part.not_installed:
                    self._set(part, "not installed", f"{part.not_installed}: skipped")
                elif part.record is None or not part.alive():
                    todo.append(name)
            # in waves: every part whose dependencies run starts at once, then each is
            # waited for (so their start-up times overlap); hooks keep the order that matters
            while todo:
                wave = [n for n in todo if self._deps_ready(self.parts[n])]
                if not wave:
                    name = todo[0]
                    deps = self.parts[name].depends_on
                    waiting = [d for d in deps if self.parts[d].state != "running"]
                    raise StackError(
                        name, f"cannot start: {', '.join(waiting)} not running", "see their logs"
                    )
                for name in wave:
                    self._spawn(self.parts[name])
                    started.append(name)
                for name in wave:
                    self._ready(self.parts[name])
                todo = [n for n in todo if n not in wave]
                self.round["started"] = list(started)
            self.round["result"] = "ok"
        except Stopping:
            raise
        except BaseException as err:
            for name in reversed(started):
                self._kill(self.parts[name])
                self._set(self.parts[name], "stopped", "rolled back: a later part failed to start")
            failed = getattr(err, "part", None)
            if failed in self.parts and self.parts[failed].record is None:
                self._set(self.parts[failed], "stopped", "failed to start")
            # parts of this round that were never started are not this stack's (yet)
            for name in list(self.order):
                p = self.parts[name]
                if p.record is None and p.restarts == 0 and p.state in ("waiting", "stopped"):
                    self.order.remove(name)
                    del self.parts[name]
            if isinstance(err, StackError):
                error = {"part": err.part, "problem": err.problem, "fix": err.fix}
            else:
                error = {
                    "part": "supervisor",
                    "problem": repr(err),
                    "fix": f"see {self._record.log}",
                }
            self.round.update(result="failed", error=error)
            log.error("start failed: %s", error)
        self.write(force=True)

    # --- watching -----------------------------------------------------------------------
    def _backoff(self, part: Part) -> float:
        return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, part.consecutive - 1))

    def _crash_loop(self, part: Part) -> bool:
        now = time.monotonic()
        return sum(1 for t in part.crashes if now - t <= CRASH_LOOP_WINDOW_S) >= CRASH_LOOP_RESTARTS

    def _dependents(self, name: str) -> list[Part]:
        """Every part that (transitively) depends on ``name``, in start order."""
        out: list[str] = []
        for n in self.order:
            deps = set(self.parts[n].depends_on)
            if name in deps or deps & set(out):
                out.append(n)
        return [self.parts[n] for n in out]

    def _on_exit(self, part: Part) -> None:
        code = part.exit_code()
        part.last_exit = code
        logged = last_error_line(Path(part.record.log), part.log_offset) if part.record else ""
        part.last_error = logged or exit_text(code)
        part.record, part.proc = None, None
        now = time.monotonic()
        if part.running_since is not None and now - part.running_since >= STABLE_S:
            part.consecutive = 0
        part.consecutive += 1
        part.crashes.append(now)
        delay = self._backoff(part)
        part.next_start = now + delay
        how = exit_text(code)
        state = "crash-loop" if self._crash_loop(part) else "backoff"
        self._set(part, state, f"{how}; restart in {delay:.1f}s")
        if part.cascade:
            self._hold_dependents(part)
        self.write(force=True)

    def _hold_dependents(self, part: Part) -> None:
        """Stop every part that reads what ``part`` serves, all at once (``part`` is gone
        already, so there is no order to keep), until it is back and restored."""
        deps = [
            d for d in self._dependents(part.name) if d.state not in ("not installed", "stopped")
        ]
        for dep in deps:
            dep.held = True
            self._set(dep, "waiting", f"waiting for {part.name} to restart")
        self.write(force=True)
        live = [d for d in deps if d.record is not None and d.alive()]
        for dep in live:
            log.info("%s: stopping while %s restarts", dep.name, part.name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(dep.record.pid, signal.SIGTERM)  # type: ignore[union-attr]
        # One shared, short deadline: with the log gone a reader has nothing left to finish
        # but its own writes (the archiver flushes within HOLD_STOP_S), and the fresh broker
        # waits for these stops before it is restored.
        end = time.monotonic() + min(
            HOLD_STOP_S, max((d.stop_timeout_s for d in live), default=0.0)
        )
        while any(d.alive() for d in live) and time.monotonic() < end:
            self.write()
            time.sleep(0.05)
        for dep in live:
            if dep.alive():
                log.warning("%s: still running %.0fs after SIGTERM; SIGKILL", dep.name, HOLD_STOP_S)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(dep.record.pid, signal.SIGKILL)  # type: ignore[union-attr]
        for dep in deps:
            self._kill(dep)  # reaps them and records the exit codes

    def _tick(self) -> None:
        now = time.monotonic()
        for name in self.order:
            part = self.parts[name]
            if part.state in ("not installed", "stopped", "stopping"):
                continue
            if part.record is not None:
                if part.alive():
                    if (
                        part.state == "crash-loop"
                        and part.running_since
                        and now - part.running_since >= STABLE_S
                    ):
                        self._set(part, "running")
                    continue
                self._on_exit(part)
                continue
            ready_to_go = part.next_start is None or now >= part.next_start
            if ready_to_go and self._deps_ready(part):
                looping = self._crash_loop(part)
                try:
                    if not part.held:
                        part.restarts += 1
                        self._count_restart(part.name)
                    part.held = False
                    self._start(part)
                    if looping:
                        self._set(
                            part, "crash-loop", f"running again after {part.restarts} restarts"
                        )
                except Stopping:
                    raise
                except StackError as err:
                    part.consecutive += 1
                    part.crashes.append(time.monotonic())
                    delay = self._backoff(part)
                    part.next_start = time.monotonic() + delay
                    if not err.problem.startswith("exited with code"):
                        part.last_error = err.problem  # not an exit: e.g. never got ready
                    state = "crash-loop" if self._crash_loop(part) else "backoff"
                    self._set(part, state, f"{err.problem}; restart in {delay:.1f}s")

    # --- stopping ----------------------------------------------------------------------------
    def shutdown(self) -> None:
        rows: list[dict[str, Any]] = []
        # the gate first: outside producers are cut off (they retry, and deliver after the
        # next ``up``), so what the archiver drains before it stops is the whole log
        order = list(reversed(self.order))
        order.sort(key=lambda n: n != "gate")
        for name in order:
            part = self.parts[name]
            part.next_start = None
            row = self._stop_part(part)
            if row:
                rows.append(row)
            self.write(force=True)
        write_json_atomic(self.down_path, {"parts": rows})
        self.state_path.unlink(missing_ok=True)

    # --- metrics -----------------------------------------------------------------------------
    def _serve_metrics(self) -> None:
        """``/metrics`` (restarts per part) and ``/healthz`` for the daemon itself."""
        try:
            from agentstream.telemetry import serve_part_metrics
        except ImportError:
            return
        try:
            self._metrics = serve_part_metrics("supervisor", self.settings)
        except OSError as err:
            log.warning("supervisor: no metrics endpoint: %s", err)
            return
        self._metrics.health.set_ready(True, "supervising")

    def _count_restart(self, name: str) -> None:
        with contextlib.suppress(ImportError):
            from agentstream.telemetry import PART_RESTARTS

            PART_RESTARTS.labels(name).inc()

    def _beat(self) -> None:
        if self._metrics is not None:
            looping = [p.name for p in self.parts.values() if p.state == "crash-loop"]
            detail = f"crash loop: {', '.join(looping)}" if looping else "supervising"
            self._metrics.health.set_ready(not looping, detail)

    # --- main ------------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        self._load_plan()
        self._adopt()
        self.write(force=True)
        self._serve_metrics()
        try:
            self.run_round()
            nothing_runs = not any(p.record is not None for p in self.parts.values())
            if nothing_runs and self.round and self.round.get("result") == "failed":
                return 1  # nothing of ours runs: `up` reads the failure and cleans up
            while not self._stop:
                if self._reload:
                    self._reload = False
                    self._load_plan()
                    self.run_round()
                self._tick()
                self.write()
                self._beat()
                time.sleep(POLL_S)
        except Stopping:
            pass
        finally:
            if self._metrics is not None:
                self._metrics.stop()
        self.shutdown()
        return 0


def _now_iso(when: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if when is None else when, UTC).isoformat(
        timespec="seconds"
    )


def restore_log(settings: Settings, report: Report) -> str:
    """Re-produce the Parquet archive into the fresh broker (:func:`streams.restore.
    restore_log`), reporting progress; the broker's ``restore`` hook. A failed or
    inconsistent restore fails the broker's start: no consumer may read a partial log."""
    from streams.restore import RestoreError
    from streams.restore import restore_log as restore

    def progress(done: int, total: int) -> None:
        report(f"restoring the log from the archive: {done:,} of {total:,} records", done, total)

    try:
        result = restore(settings.bootstrap_servers, settings.archive_location, progress=progress)
    except RestoreError as err:
        raise StackError(
            "broker", f"restoring the log from the archive failed: {err}", "see the broker log"
        ) from None
    if not result.ok:
        raise StackError("broker", result.summary(), f"check {settings.archive_location}")
    return result.summary()


def main(settings: Settings) -> int:
    """Entry of ``agentstream supervise``: run until SIGTERM."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stdout,
    )
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sup = Supervisor(settings)
    with contextlib.suppress(subprocess.SubprocessError):
        return sup.run()
    return 1
