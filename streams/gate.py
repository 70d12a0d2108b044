"""The gate: the clients' Kafka port, recording every acknowledgement before it is given.

Outside producers (agent code, other Kafka clients) reach the embedded broker through the
gate. It forwards every request and response unchanged, in order, one upstream connection
per client connection. For each Produce request it notes how many records go to each
partition; when the broker's answer says where they went, it writes the acknowledged end
offset to the ack ledger (:mod:`streams.ack_ledger`) *before* the producer receives the
answer. So whatever a producer was told is in the log is in the ledger, and a broker crash
that takes unarchived records with it is measured exactly: the archiver subtracts what it
archived from what the ledger says was acknowledged.

Upstream is the broker's own port. In the answers that name brokers (Metadata,
FindCoordinator, DescribeCluster) the gate writes its own address over the broker's, so a
client never learns a way around it. The gate reads the log's epoch
(:mod:`streams.log_identity`) to know which log its ledger belongs to, re-reads it after
any upstream connection broke, and switches ledger files when the log changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter

from streams.ack_ledger import AckLedger, ledger_for_current_log
from streams.kafka_wire import (
    ADDRESS_APIS,
    PRODUCE,
    ProduceRequest,
    WireError,
    produce_request,
    produce_response,
    request_header,
    response_correlation_id,
    rewrite_addresses,
)
from streams.log_identity import LogWatch

log = logging.getLogger(__name__)

MAX_FRAME = 100 << 20  # Kafka's own default socket.request.max.bytes
_SIZE = struct.Struct(">i")

ACKED_RECORDS = Counter(
    "agentstream_gate_acked_records", "Records the broker acknowledged through the gate", ["topic"]
)
GATE_ERRORS = Counter(
    "agentstream_gate_unreadable_frames",
    "Frames the gate could not read: requests end their connection; a Produce request "
    "is forwarded, its acknowledgement not recorded",
    ["direction"],
)


@dataclass
class GateStats:
    connections: int = 0
    requests: int = 0
    produce_requests: int = 0
    acked_records: int = 0
    unreadable: int = 0
    epoch: str | None = None
    ledger_changes: int = 0


@dataclass(frozen=True, slots=True)
class _Pending:
    correlation_id: int
    api_key: int
    api_version: int
    produce: ProduceRequest | None


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One size-prefixed frame (without the prefix), or None at a clean end of stream."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as err:
        if err.partial:
            raise
        return None
    (size,) = _SIZE.unpack(head)
    if size < 0 or size > MAX_FRAME:
        raise WireError(f"frame of {size} bytes")
    return await reader.readexactly(size)


class Gate:
    """Listens on ``host:port``, forwards to ``upstream``; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        upstream: tuple[str, int],
        ledger_dir: Path,
        epoch_bootstrap: str,
        *,
        writer: str = "gate",
        advertise: tuple[str, int] | None = None,
    ) -> None:
        """``advertise``: the address clients must use, written over every broker address
        in metadata and coordinator answers (default: where the gate listens)."""
        self.host, self.port, self.upstream = host, port, upstream
        self.advertise = advertise or (host, port)
        self.ledger_dir, self.writer = Path(ledger_dir), writer
        self.epoch_bootstrap = epoch_bootstrap
        self.stats = GateStats()
        self._ledger: AckLedger | None = None
        self._watch: LogWatch | None = None
        self._suspect = False  # an upstream connection broke: re-read the epoch first
        self._epoch_lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- the log's identity and its ledger ------------------------------------------------
    async def _open_ledger(self) -> None:
        ledger = await ledger_for_current_log(self.ledger_dir, self.writer, self.epoch_bootstrap)
        self._watch = LogWatch(self.epoch_bootstrap, "gate")
        await self._watch.start()
        self._use(ledger)

    def _use(self, ledger: AckLedger) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self.stats.ledger_changes += 1
        self._ledger = ledger
        self.stats.epoch = ledger.epoch
        log.info("gate: acknowledgements of log %s recorded in %s", ledger.epoch, ledger.path)

    async def _confirm_epoch(self) -> None:
        """After an upstream connection broke: which log is behind the gate now?"""
        async with self._epoch_lock:
            if not self._suspect or self._watch is None:
                return
            change = await self._watch.check(force=True)
            if self._watch.failed:
                raise ConnectionError("the log's identity cannot be read (broker away?)")
            if change is not None:
                marker = await self._watch.accept()
                if marker is None:
                    raise ConnectionError("the new log has no epoch marker yet")
                log.warning("gate: the log behind the gate changed (%s)", change)
                self._use(AckLedger(self.ledger_dir, self.writer, marker.epoch))
            self._suspect = False

    # --- serving ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self._open_ledger()
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        log.info("gate: %s:%d -> %s:%d", self.host, self.port, *self.upstream)

    async def stop(self) -> None:
        """Close the port, then every connection (clients retry elsewhere or later)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        if self._watch is not None:
            await self._watch.stop()
        if self._ledger is not None:
            self._ledger.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self.stats.connections += 1
        upstream_w: asyncio.StreamWriter | None = None
        try:
            if self._suspect:
                await self._confirm_epoch()
            upstream_r, upstream_w = await asyncio.open_connection(*self.upstream)
            pending: deque[_Pending] = deque()
            ups = asyncio.ensure_future(self._requests(client_r, upstream_w, pending))
            downs = asyncio.ensure_future(self._responses(upstream_r, client_w, pending))
            done, rest = await asyncio.wait({ups, downs}, return_when=asyncio.FIRST_COMPLETED)
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            if downs in done and ups not in done:
                self._suspect = True  # the broker side ended the connection
            for t in done:
                if t.exception() is not None and not isinstance(
                    t.exception(), ConnectionError | asyncio.IncompleteReadError
                ):
                    log.warning("gate: connection ended: %r", t.exception())
        except (OSError, ConnectionError) as err:
            self._suspect = True
            log.info("gate: upstream unavailable: %s", err)
        except asyncio.CancelledError:
            pass
        finally:
            for w in (client_w, upstream_w):
                if w is not None:
                    w.close()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _requests(
        self,
        client_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
        pending: deque[_Pending],
    ) -> None:
        while True:
            try:
                frame = await _read_frame(client_r)
                if frame is None:
                    return
                self.stats.requests += 1
                header = request_header(frame)
            except WireError:
                GATE_ERRORS.labels("request").inc()
                self.stats.unreadable += 1
                raise  # not Kafka: the broker would close the connection too
            produce: ProduceRequest | None = None
            if header.api_key == PRODUCE:
                self.stats.produce_requests += 1
                try:
                    produce = produce_request(frame, header)
                except WireError as err:
                    GATE_ERRORS.labels("request").inc()
                    self.stats.unreadable += 1
                    log.error("gate: unreadable Produce request (acks not recorded): %s", err)
            if produce is None or produce.acks != 0:  # acks=0: no answer will come
                pending.append(
                    _Pending(header.correlation_id, header.api_key, header.api_version, produce)
                )
            upstream_w.write(_SIZE.pack(len(frame)) + frame)
            await upstream_w.drain()

    async def _responses(
        self,
        upstream_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        pending: deque[_Pending],
    ) -> None:
        while (frame := await _read_frame(upstream_r)) is not None:
            corr = response_correlation_id(frame)
            while pending and pending[0].correlation_id != corr:
                pending.popleft()  # answered out of order or never: not ours to fix
            req = pending.popleft() if pending else None
            if req is not None and req.produce is not None:
                self._record(req, frame)
            elif req is not None and req.api_key in ADDRESS_APIS:
                try:
                    frame = rewrite_addresses(frame, req.api_key, req.api_version, *self.advertise)
                except WireError:
                    GATE_ERRORS.labels("response").inc()
                    self.stats.unreadable += 1
                    raise  # never hand out the broker's own address: the client reconnects
            client_w.write(_SIZE.pack(len(frame)) + frame)
            await client_w.drain()

    def _record(self, req: _Pending, frame: bytes) -> None:
        """The acknowledged end of every partition, into the ledger, before the client
        hears of it."""
        assert req.produce is not None and self._ledger is not None
        try:
            acks = produce_response(frame, req.api_version)
        except WireError as err:
            GATE_ERRORS.labels("response").inc()
            self.stats.unreadable += 1
            log.error("gate: unreadable Produce response (acks not recorded): %s", err)
            return
        counts = req.produce.counts
        for ack in acks:
            n = counts.get((ack.topic, ack.partition), 0)
            if ack.error_code == 0 and ack.base_offset >= 0 and n:
                self._ledger.record(ack.topic, ack.partition, ack.base_offset + n)
                self.stats.acked_records += n
                ACKED_RECORDS.labels(ack.topic).inc(n)


async def run_gate(gate: Gate, stop: asyncio.Event) -> GateStats:
    await gate.start()
    try:
        await stop.wait()
    finally:
        await gate.stop()
    return gate.stats


def main(argv: list[str] | None = None) -> None:
    """``python -m streams.gate HOST PORT UPSTREAM_HOST UPSTREAM_PORT LEDGER_DIR EPOCH_BOOTSTRAP``:
    a gate without the stack's settings (benchmarks, a broker run by hand); it gives
    clients HOST:PORT as the broker's address."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(prog="python -m streams.gate", description=main.__doc__)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("upstream_host")
    ap.add_argument("upstream_port", type=int)
    ap.add_argument("ledger_dir", type=Path)
    ap.add_argument("epoch_bootstrap", help="the broker's own address, to read the log's epoch")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def serve() -> GateStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        gate = Gate(
            args.host,
            args.port,
            (args.upstream_host, args.upstream_port),
            args.ledger_dir,
            args.epoch_bootstrap,
        )
        return await run_gate(gate, stop)

    stats = asyncio.run(serve())
    print(f"gate: {stats.requests} requests, {stats.acked_records} records acknowledged")


if __name__ == "__main__":
    main()
