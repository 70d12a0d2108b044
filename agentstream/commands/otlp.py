"""``agentstream otlp``: the OpenTelemetry trace receiver (OTLP/HTTP and OTLP/gRPC).

The receiver itself is :mod:`streams.otlp.receiver`; this module builds it from the settings
(``otlp_host``, ``otlp_http_port``, ``otlp_grpc_port``, ``otlp_token``,
``otlp_max_body_bytes``), turns SIGTERM/SIGINT into a clean stop, serves the part's metrics
and health, and reports what it did in one line at the end.
"""

from __future__ import annotations

import gc
import logging
import signal
from typing import Annotated, Any

import typer

from agentstream.console import console, fail, settings_or_exit


def otlp(
    host: Annotated[
        str | None, typer.Option("--host", help="bind address (default: otlp_host)")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option("--http-port", help="OTLP/HTTP port (default: otlp_http_port)")
    ] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option("--grpc-port", help="OTLP/gRPC port, 0 = off (default: otlp_grpc_port)"),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Receive OpenTelemetry traces (GenAI, OpenInference, OpenLLMetry) and publish them as
    agent events; point OTEL_EXPORTER_OTLP_ENDPOINT at it."""
    import asyncio

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["otlp_host"] = host
    if http_port is not None:
        overrides["otlp_http_port"] = http_port
    if grpc_port is not None:
        overrides["otlp_grpc_port"] = grpc_port
    settings = settings_or_exit(**overrides)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    from streams.otlp.receiver import ReceiverConfig, check_bind, parse_tokens

    config = ReceiverConfig(
        host=settings.otlp_host,
        http_port=settings.otlp_http_port,
        grpc_port=settings.otlp_grpc_port,
        tokens=parse_tokens(settings.otlp_token),
        max_body_bytes=settings.otlp_max_body_bytes,
    )
    try:
        check_bind(config)
    except ValueError as err:
        fail(f"otlp: {err}")
    stats = asyncio.run(_run(settings, config))
    console.print(
        f"otlp: {stats.requests} exports, {stats.spans_received} spans: {stats.spans_mapped} "
        f"mapped, {stats.spans_skipped} skipped (not agent steps), {stats.spans_rejected} "
        f"rejected, {stats.spans_altered} with U+0000 replaced; {stats.events_published} "
        f"events published, {stats.events_deduplicated} "
        "retried events not written again",
        highlight=False,
        soft_wrap=True,
    )


async def _run(settings: Any, config: Any) -> Any:
    import asyncio

    from streams.otlp.receiver import OtlpReceiver
    from streams.producer import EventProducer

    # An export allocates ~100k short-lived objects (protobuf wrappers, dicts, events); with
    # the default gen0 threshold (700) the collector runs hundreds of times per export and
    # promotes in-flight objects, and the older generations' scans then walk the link
    # memory and the remembered ids. Freezing what startup built and a larger gen0 measured
    # ~7% less CPU per span (in-process, 16k spans, 3 alternating trials each).
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    ledger = await _ack_ledger(settings)
    producer = EventProducer.from_settings(
        settings, delivery_timeout_ms=8000, on_acked=ledger.record if ledger else None
    )
    receiver = OtlpReceiver(producer, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await receiver.start()
    except OSError as err:
        fail(f"otlp: cannot bind {config.host}: {err} — set AGENTSTREAM_OTLP_*_PORT")
    from agentstream.telemetry import heartbeat, register_stats, serve_part_metrics

    endpoint = serve_part_metrics("otlp", settings)
    register_stats("agentstream_otlp", {"otlp": lambda: receiver.stats})
    beat = asyncio.create_task(heartbeat(endpoint, lambda: receiver.ready, stop))
    grpc_note = f", OTLP/gRPC on {config.host}:{receiver.grpc_port}" if receiver.grpc_port else ""
    console.print(
        f"otlp: OTLP/HTTP on http://{config.host}:{receiver.http_port}/v1/traces{grpc_note}; "
        f"writing to {settings.bootstrap_servers}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        await stop.wait()
    finally:
        stop.set()
        await beat
        endpoint.stop()
        await receiver.stop()
        try:
            await producer.close()
        except Exception as err:  # reported, not raised: the stats line still prints
            console.print(f"otlp: closing the producer: {err}", highlight=False)
        if ledger is not None:
            ledger.close()
    return receiver.stats


async def _ack_ledger(settings: Any) -> Any:
    """On the embedded broker: the ack ledger of the current log, so that a broker crash
    that takes acknowledged spans' events with it is reported exactly (the receiver writes
    to the broker's own port, not through the gate that records outside producers)."""
    if not settings.kafka_embedded:
        return None
    from streams.ack_ledger import ledger_for_current_log
    from streams.archive import ack_ledger_dir

    return await ledger_for_current_log(
        ack_ledger_dir(settings.archive_location), "otlp", settings.bootstrap_servers
    )


def register(app: typer.Typer) -> None:
    app.command("otlp")(otlp)
