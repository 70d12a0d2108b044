"""``agentstream archive``: run the Parquet archiver (or, with ``--info``, describe the archive).

The archiver itself is :mod:`streams.archive`; this module picks the broker and the archive
directory from the settings, turns SIGTERM/SIGINT into a clean stop (open segments are
closed durably on the way out) and reports errors in one line.
"""

from __future__ import annotations

import asyncio
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
        float,
        typer.Option("--max-segment-age", min=0.1, help="roll a file after this many seconds"),
    ] = 60.0,
    row_group_rows: Annotated[
        int, typer.Option("--row-group-rows", min=1, help="rows per Parquet row group")
    ] = 20_000,
    info: Annotated[
        bool, typer.Option("--info", help="describe what the archive holds and exit")
    ] = False,
) -> None:
    """Archive agent-events to hive-partitioned Parquet until stopped (SIGTERM / Ctrl-C)."""
    settings = settings_or_exit()
    root = (directory or settings.archive_location).resolve()
    if info:
        _info(root)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    stats = asyncio.run(
        _run(
            settings.bootstrap_servers,
            root,
            max_segment_bytes=int(max_segment_mb * (1 << 20)),
            max_segment_age_s=max_segment_age,
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


def register(app: typer.Typer) -> None:
    app.command("archive")(archive)
