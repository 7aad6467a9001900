"""The ``evochips`` command: run the service, migrate, and look at chips and history."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from evochips import settings as settings_module
from evochips.db import Database, DatabaseUnavailable, queries
from evochips.settings import SettingsError
from evochips.statemachine import ChipStatus, lifecycle_triggers_from

T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="evochips")


@click.group(help="Own the lifecycle of WhatsApp numbers run on Evolution API.")
def cli() -> None:
    pass


@cli.command(help="Run the webhook receiver (uvicorn).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
def serve(host: str, port: int) -> None:
    import uvicorn

    from evochips.receiver import create_app

    settings = _or_exit(settings_module.load)
    _configure_logging()
    db = Database(settings.database_url)
    app = create_app(db, settings.webhook_secret, on_shutdown=db.dispose)
    logging.getLogger(__name__).info(
        "evochips receiving Evolution webhooks at %s; Evolution API at %s",
        settings.webhook_url,
        settings.evolution_api_url,
    )
    # uvicorn's access log would print the secret of /webhooks/evolution/k/<secret>;
    # the receiver logs one line per delivery itself.
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")


@cli.command(help="Create or upgrade the database schema.")
def migrate() -> None:
    from evochips.db.migrate import upgrade

    url = _or_exit(settings_module.database_url)
    _configure_logging()
    try:
        upgrade(url)
    except (OSError, SQLAlchemyError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"could not migrate the database: {reason}") from exc
    click.echo("database schema is up to date")


@cli.group(help="Look at chips and their history.")
def chips() -> None:
    pass


@chips.command("list", help="List live chips.")
@click.option("--all", "include_deleted", is_flag=True, help="Include deleted chips.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_chips(include_deleted: bool, as_json: bool) -> None:
    rows = _run_query(lambda db: queries.list_chips(db, include_deleted=include_deleted))
    if as_json:
        _print_json(rows)
        return
    columns = ("instance_name", "status", "connection_state", "telefone", "updated_at", "id")
    _print_table(columns, rows)


@chips.command(help="Show one chip, by instance name or id.")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(name: str, as_json: bool) -> None:
    chip = _run_query(lambda db: queries.find(db, name))
    if chip is None:
        raise click.ClickException(f"no chip with instance name or id {name!r}")
    data = queries.chip_dict(chip)
    data["allowed_triggers"] = lifecycle_triggers_from(ChipStatus(chip.status))
    if as_json:
        _print_json(data)
        return
    width = max(len(key) for key in data)
    for key, value in data.items():
        click.echo(f"{key:<{width}}  {_cell(value)}")


@chips.command(help="Show a chip's transitions, oldest first.")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history(name: str, as_json: bool) -> None:
    async def load(db: Database) -> list[dict[str, Any]] | None:
        chip = await queries.find(db, name)
        return None if chip is None else await queries.history(db, chip.id)

    rows = _run_query(load)
    if rows is None:
        raise click.ClickException(f"no chip with instance name or id {name!r}")
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        row["status"] = f"{row['from_status'] or '-'} -> {row['to_status']}"
        row["connection"] = f"{row['from_connection'] or '-'} -> {row['to_connection']}"
    columns = ("seq", "created_at", "trigger", "source", "status", "connection", "status_reason")
    _print_table(columns, rows)


def _run_query(query: Callable[[Database], Awaitable[T]]) -> T:
    url = _or_exit(settings_module.database_url)

    async def run() -> T:
        db = Database(url)
        try:
            return await query(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(run())
    except DatabaseUnavailable as exc:
        raise click.ClickException(f"{exc} (EVOCHIPS_DATABASE_URL: {_shown(url)})") from exc


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _or_exit(load: Callable[[], T]) -> T:
    try:
        return load()
    except SettingsError as exc:
        click.echo(f"evochips: {exc}", err=True)
        sys.exit(2)


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The Evolution client logs each call itself, without query strings.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=_json_default, ensure_ascii=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _print_table(columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
