"""``agentstream gate``: the clients' Kafka port of the embedded stack (``streams.gate``).

Run by ``agentstream up`` as the ``gate`` part: it listens on ``kafka_url``'s port, forwards
to the broker's own port (giving clients its own address in metadata), and records every
acknowledgement in the ack ledger under the archive's ``_log/acks``, so that a broker
crash's loss is measured exactly.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import typer

from agentstream.console import console, fail, settings_or_exit


def gate() -> None:
    """Serve the clients' Kafka port: forward to the broker, record every acknowledgement."""
    import asyncio

    settings = settings_or_exit()
    if not settings.kafka_embedded:
        fail("gate: only the embedded broker has a gate (AGENTSTREAM_KAFKA_EMBEDDED=false here)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    stats = asyncio.run(_run(settings))
    console.print(
        f"gate: {stats.connections} connections, {stats.requests} requests, "
        f"{stats.acked_records} records acknowledged and recorded "
        f"({stats.unreadable} unreadable frames)",
        highlight=False,
        soft_wrap=True,
    )


async def _run(settings: Any) -> Any:
    import asyncio

    from agentstream.stack import gate_upstream, internal_settings
    from agentstream.telemetry import heartbeat, register_stats, serve_part_metrics
    from streams.archive import ack_ledger_dir
    from streams.gate import Gate

    host = settings.bootstrap_servers.split(",")[0].rsplit(":", 1)[0]
    the_gate = Gate(
        host,
        settings.kafka_port,
        gate_upstream(settings),
        ack_ledger_dir(settings.archive_location),
        internal_settings(settings).bootstrap_servers,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await the_gate.start()
    except OSError as err:
        fail(f"gate: cannot serve {host}:{settings.kafka_port}: {err}")
    endpoint = serve_part_metrics("gate", settings)
    register_stats("agentstream_gate", {"gate": lambda: the_gate.stats})
    beat = asyncio.create_task(
        heartbeat(endpoint, lambda: (True, f"log {the_gate.stats.epoch}"), stop)
    )
    up_host, up_port = gate_upstream(settings)
    console.print(
        f"gate: {host}:{settings.kafka_port} -> {up_host}:{up_port}; "
        f"acknowledgements recorded in {ack_ledger_dir(settings.archive_location)}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        await stop.wait()
    finally:
        await beat
        endpoint.stop()
        await the_gate.stop()
    return the_gate.stats


def register(app: typer.Typer) -> None:
    app.command("gate", hidden=True)(gate)
