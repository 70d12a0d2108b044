"""``agentstream archive``: run the Parquet archiver (``--info``: describe the archive;
``--restore``: refill a fresh broker's log from it; ``--losses``: what a broker crash lost).

The archiver itself is :mod:`streams.archive`; this module picks the broker and the archive
directory from the settings, turns SIGTERM/SIGINT into a clean stop (open segments are
closed durably on the way out) and reports errors in one line.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from agentstream.console import console, fail, settings_or_exit


def archive(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="archive directory (default: AGENTSTREAM_ARCHIVE_DIR or DATA_DIR/archive)"
        ),
    ] = None,
    max_segment_mb: Annotated[
        float, typer.Option("--max-segment-mb", min=0.001, help="roll a file after this many MB")
    ] = 64.0,
    max_segment_age: Annotated[
        float | None,
        typer.Option(
            "--max-segment-age",
            min=0.1,
            help="write what was read at least this often, in seconds (default: "
            "AGENTSTREAM_ARCHIVE_FLUSH_S, 1): the most an embedded broker crash can lose",
            show_default=False,
        ),
    ] = None,
    row_group_rows: Annotated[
        int, typer.Option("--row-group-rows", min=1, help="rows per Parquet row group")
    ] = 20_000,
    info: Annotated[
        bool, typer.Option("--info", help="describe what the archive holds and exit")
    ] = False,
    restore: Annotated[
        bool,
        typer.Option(
            "--restore",
            help="refill a fresh (empty) broker's agent-events from the archive and exit "
            "(`agentstream up` does this itself)",
        ),
    ] = False,
    losses: Annotated[
        bool,
        typer.Option("--losses", help="list acknowledged records a broker crash lost, and exit"),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="with --restore/--losses: JSON")] = False,
) -> None:
    """Archive agent-events to hive-partitioned Parquet until stopped (SIGTERM / Ctrl-C)."""
    import asyncio

    settings = settings_or_exit()
    root = (directory or settings.archive_location).resolve()
    if info:
        _info(root)
        return
    if losses:
        _losses(root, as_json)
        return
    if restore:
        _restore(settings, root, as_json)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    stats = asyncio.run(
        _run(
            settings.bootstrap_servers,
            root,
            max_segment_bytes=int(max_segment_mb * (1 << 20)),
            max_segment_age_s=max_segment_age or settings.archive_flush_s,
            row_group_rows=row_group_rows,
            max_event_bytes=settings.max_event_bytes,
        )
    )
    console.print(
        f"archived {stats.records} records ({stats.invalid} invalid, kept in dlq/) in "
        f"{stats.segments} segments, generation {stats.generation}, to {root}",
        highlight=False,
        soft_wrap=True,
    )


async def _run(bootstrap: str, root: Path, **options: Any) -> Any:
    import asyncio

    from aiokafka.errors import KafkaConnectionError, KafkaError

    from streams.archive import ArchiveLocked, Archiver

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    archiver = Archiver(bootstrap, root, **options)
    try:
        return await archiver.run(stop)
    except ArchiveLocked as err:
        fail(f"archive: {err} — stop it (`agentstream down`) or pass another --dir")
    except (KafkaConnectionError, OSError) as err:
        fail(
            f"archive: cannot reach the Kafka broker at {bootstrap} ({type(err).__name__}) — "
            "start it with `agentstream up` or set AGENTSTREAM_KAFKA_URL"
        )
    except (KafkaError, RuntimeError) as err:
        fail(f"archive: {err} — check the broker (`agentstream status`)")


def _info(root: Path) -> None:
    from rich.table import Table

    from streams.archive import complete_segments, scan_files

    if not root.is_dir():
        fail(f"archive: {root} does not exist — run `agentstream archive` (or `agentstream up`)")
    segments = complete_segments(root)
    partial = len(scan_files(root)) - sum(len(s.files) for s in segments)
    table = Table(title=f"archive {root}")
    for col in ("generation", "partition", "segments", "first offset", "last offset", "files"):
        table.add_column(col, justify="right")
    summary: dict[tuple[int, int], list[Any]] = {}
    for s in segments:
        row = summary.setdefault((s.generation, s.partition), [0, s.first_offset, 0, 0])
        row[0] += 1
        row[2] = s.last_offset
        row[3] += len(s.files)
    for (g, p), (n, first, last, files) in sorted(summary.items()):
        table.add_row(str(g), str(p), str(n), str(first), str(last), str(files))
    console.print(table)
    note = f"; {partial} files of an unfinished segment (rewritten on restart)" if partial else ""
    console.print(f"{len(segments)} segments{note}", highlight=False)
    from streams.archive import read_loss_report

    lost = read_loss_report(root)
    if lost.incidents:
        console.print(
            f"[red]{lost.records} acknowledged records were lost with a broker before they "
            f"were archived[/red] (`agentstream archive --losses`)",
            highlight=False,
        )


def _restore(settings: Any, root: Path, as_json: bool) -> None:
    import json

    from aiokafka.errors import KafkaError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agentstream.console import err_console
    from streams.restore import RestoreError, restore_log

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    bar = Progress(
        TextColumn("restore"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=as_json,
    )
    with bar:
        task = bar.add_task("records", total=None)
        try:
            report = restore_log(
                settings.bootstrap_servers,
                root,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                partitions=settings.partitions,
                replication_factor=settings.replication_factor,
            )
        except RestoreError as err:
            fail(f"restore: {err}")
        except (KafkaError, OSError, TimeoutError) as err:
            fail(
                f"restore: cannot reach the Kafka broker at {settings.bootstrap_servers} "
                f"({type(err).__name__}) — start it with `agentstream up` or set "
                "AGENTSTREAM_KAFKA_URL"
            )
    if as_json:
        console.print_json(json.dumps(report.as_dict(), default=str))
    else:
        console.print(report.summary(), highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


def _losses(root: Path, as_json: bool) -> None:
    import json

    from streams.archive import read_loss_report

    report = read_loss_report(root)
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
        return
    if not report.incidents:
        console.print(f"no loss recorded under {root}", highlight=False)
        return
    for inc in report.incidents:
        console.print(inc.describe(), highlight=False, soft_wrap=True)
    console.print(f"{report.records} acknowledged records lost in total", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("archive")(archive)
