"""What the commands share: loading settings, running async work, printing results."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.engine import make_url

from evochips import settings as settings_module
from evochips.db import Database, DatabaseUnavailable
from evochips.settings import SettingsError

T = TypeVar("T")


def or_exit(load: Callable[[], T]) -> T:
    """Load settings, or stop with the one sentence that names the bad one."""
    try:
        return load()
    except SettingsError as exc:
        click.echo(f"evochips: {exc}", err=True)
        sys.exit(2)


def fail(
    message: str, as_json: bool = False, error: type[click.ClickException] = click.ClickException
) -> NoReturn:
    """Stop with ``message`` (raising ``error``, whose exit code it is); with --json also
    as ``{"error": ...}`` on stdout, so a script reading it always gets a document."""
    if as_json:
        print_json({"error": message})
    raise error(message)


def run_query(query: Callable[[Database], Awaitable[T]], as_json: bool = False) -> T:
    """Run ``query`` against the configured database and dispose of it afterwards."""
    url = or_exit(settings_module.database_url)

    async def run() -> T:
        db = Database(url)
        try:
            return await query(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(run())
    except DatabaseUnavailable as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        fail(f"{exc} (EVOCHIPS_DATABASE_URL: {shown})", as_json)


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The Evolution client logs each call itself, without query strings.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=_json_default, ensure_ascii=False))


def print_table(columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def print_fields(data: dict[str, Any]) -> None:
    width = max(len(key) for key in data)
    for key, value in data.items():
        click.echo(f"{key:<{width}}  {cell(value)}")


def cell(value: Any) -> str:
    """One value as a table shows it, on one line: text from webhooks (a profile name, a
    JID) may hold newlines or terminal escapes, which are shown escaped, not obeyed."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return _CONTROL.sub(_escaped, str(value))


# C0 and C1 control characters, DEL, and the line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return match[0].encode("unicode_escape").decode("ascii")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")
