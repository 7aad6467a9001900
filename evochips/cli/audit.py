"""``evochips audit``: the fleet-wide history, for people who audit the fleet."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from evochips import settings as settings_module
from evochips.cli.output import or_exit
from evochips.db import Database, DatabaseUnavailable, queries
from evochips.lifecycle import Source
from evochips.statemachine import ChipStatus, Trigger

PAGE = 1000
_FORMATS = [
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S.%f%z",
]  # what the export prints, too


@click.group(help="Query the audit trail of every chip.")
def audit() -> None:
    pass


@audit.command(
    help="Stream every transition, oldest first (in commit order), as JSON lines or CSV."
)
@click.option("--since", type=click.DateTime(_FORMATS), help="Recorded at or after (UTC).")
@click.option("--until", type=click.DateTime(_FORMATS), help="Recorded before (UTC).")
@click.option(
    "--after-id",
    type=click.IntRange(0, 2**63 - 1),
    default=0,
    show_default=True,
    help="Only transitions with a larger id (the last id of an earlier export).",
)
@click.option("--source", type=click.Choice([s.value for s in Source]))
@click.option("--trigger", type=click.Choice([t.value for t in Trigger]))
@click.option(
    "--status",
    type=click.Choice([s.value for s in ChipStatus]),
    help="Only transitions into this status.",
)
@click.option("--format", "output", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)  # fmt: skip
def export(
    since: datetime | None,
    until: datetime | None,
    after_id: int,
    source: str | None,
    trigger: str | None,
    status: str | None,
    output: str,
) -> None:
    where = queries.TransitionFilter(
        since=_utc(since), until=_utc(until), source=source, trigger=trigger, status=status
    )
    url = or_exit(settings_module.database_url)
    write = _csv_writer() if output == "csv" else _jsonl
    try:
        asyncio.run(_stream(url, where, after_id, write))
    except DatabaseUnavailable as exc:
        raise click.ClickException(str(exc)) from exc


async def _stream(url: str, where: queries.TransitionFilter, after: int, write: Any) -> None:
    """Page through the feed so memory stays flat however long the history is."""
    db = Database(url)
    try:
        while True:
            page = await queries.transitions_page(db, where, after, PAGE)
            for row in page.rows:
                write(row)
            after = page.last or after
            if not page.has_more:
                return
    finally:
        await db.dispose()


def _jsonl(row: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(row, default=_iso, ensure_ascii=False) + "\n")


def _csv_writer() -> Any:
    writer = csv.DictWriter(sys.stdout, fieldnames=queries.FEED_FIELDS, lineterminator="\n")
    writer.writeheader()

    def write(row: dict[str, Any]) -> None:
        meta = json.dumps(row["meta"], ensure_ascii=False, sort_keys=True)
        writer.writerow({**row, "created_at": row["created_at"].isoformat(), "meta": meta})

    return write


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")
