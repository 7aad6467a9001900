"""``evochips reconcile``: compare the database with Evolution once, and correct it."""

from __future__ import annotations

import asyncio
import os
import signal

import click

from evochips import settings as settings_module
from evochips.cli.output import fail, or_exit, print_json, print_table
from evochips.db import Database, DatabaseUnavailable
from evochips.evolution.errors import EvolutionError
from evochips.manager import evolution_from_settings
from evochips.reconcile import Reconciler, Report, run_once


@click.command(help="Compare every chip with Evolution's instances once, and correct them.")
@click.option("--dry-run", is_flag=True, help="Report what differs; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def reconcile(dry_run: bool, as_json: bool) -> None:
    settings = or_exit(settings_module.load)

    async def run() -> Report | None:
        # SIGTERM (systemd, a container stop, `timeout`) ends the pass as Ctrl-C does, so
        # the lease is given back instead of blocking every replica for its full term.
        main = asyncio.current_task()
        assert main is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
        db = Database(settings.database_url)
        evolution, webhook = evolution_from_settings(settings)
        reconciler = Reconciler.from_settings(settings, db, evolution, webhook)
        try:
            if dry_run:
                return await reconciler.run(dry_run=True)
            return await run_once(reconciler, db, f"cli-{os.getpid()}")
        finally:
            await evolution.aclose()
            await db.dispose()

    kept = "a dry run, nothing changed" if dry_run else "corrections made before it are kept"
    try:
        report = asyncio.run(run())
    except (EvolutionError, DatabaseUnavailable) as exc:
        fail(f"reconcile pass stopped ({kept}): {exc}", as_json)
    except (asyncio.CancelledError, KeyboardInterrupt):  # SIGTERM, or Ctrl-C
        fail(f"reconcile pass stopped by a signal ({kept})", as_json)
    if report is None:
        fail("another replica is running a pass; try again shortly", as_json, _Busy)
    if as_json:
        print_json(report.as_dict())
        return
    click.echo(
        f"{report.chips} chips, {report.instances} instances"
        + (f", {report.deferred} left for the next pass" if report.deferred else "")
        + (" (dry run: nothing changed)" if dry_run else "")
    )
    rows = [vars(finding) for finding in report.findings]
    if rows:
        print_table(("kind", "instance_name", "action", "detail"), rows)
    else:
        click.echo("everything agrees")


class _Busy(click.ClickException):
    """Another replica holds the lease: nothing failed, try again later."""

    exit_code = 3
