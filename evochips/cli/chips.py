"""``evochips chips``: look at chips and their history, and issue commands for them.

The commands go through InstanceManager, the same code path as the Python API, so they
need the Evolution settings as well as the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import click
import segno

from evochips import settings as settings_module
from evochips.cli.output import fail, or_exit, print_fields, print_json, print_table, run_query
from evochips.db import Database, queries
from evochips.manager import InstanceManager
from evochips.statemachine import LIFECYCLE_TRIGGERS, ChipStatus, lifecycle_triggers_from

as_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(help="Look at chips and their history, and issue commands for them.")
def chips() -> None:
    pass


@chips.command(
    "list",
    help="List live chips. FLAGS names what needs a look: stuck (no QR comes), unstable "
    "(the connection keeps dropping), misconfigured (not a WhatsApp instance), "
    "number_mismatch (another number paired).",
)
@click.option("--all", "include_deleted", is_flag=True, help="Include deleted chips.")
@as_json_option
def list_chips(include_deleted: bool, as_json: bool) -> None:
    rows = run_query(lambda db: queries.list_chips(db, include_deleted=include_deleted), as_json)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        row["flags"] = ",".join(queries.flags(row))
    columns = ("instance_name", "status", "connection_state", "flags", "telefone",
               "owner_number", "updated_at", "id")  # fmt: skip
    print_table(columns, rows)


@chips.command(help="Show one chip, by instance name or id.")
@click.argument("name")
@as_json_option
def show(name: str, as_json: bool) -> None:
    chip = run_query(lambda db: queries.find(db, name), as_json)
    if chip is None:
        fail(f"no chip with instance name or id {name!r}", as_json)
    data = queries.chip_dict(chip)
    data["allowed_triggers"] = lifecycle_triggers_from(ChipStatus(chip.status))
    if as_json:
        print_json(data)
    else:
        print_fields(data)


@chips.command(help="Show a chip's transitions, oldest first.")
@click.argument("name")
@as_json_option
def history(name: str, as_json: bool) -> None:
    async def load(db: Database) -> list[dict[str, Any]] | None:
        chip = await queries.find(db, name)
        return None if chip is None else await queries.history(db, chip.id)

    rows = run_query(load, as_json)
    if rows is None:
        fail(f"no chip with instance name or id {name!r}", as_json)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        row["status"] = f"{row['from_status'] or '-'} -> {row['to_status']}"
        row["connection"] = f"{row['from_connection'] or '-'} -> {row['to_connection']}"
    columns = ("seq", "created_at", "trigger", "source", "status", "connection", "status_reason")
    print_table(columns, rows)


@chips.command(help="Register a chip and create its Evolution instance.")
@click.argument("name")
@click.argument("telefone")
@click.option("--chip-id", default=None, help="Use (or re-attach) this chip id.")
@as_json_option
def create(name: str, telefone: str, chip_id: str | None, as_json: bool) -> None:
    _command(lambda m: m.criar_instancia(name, telefone, chip_id), as_json)


@chips.command(help="Fetch the chip's current QR and print it to scan from the screen.")
@click.argument("name")
@as_json_option
def qr(name: str, as_json: bool) -> None:
    result = _command(lambda m: m.obter_qr_code(name), as_json, show=False)
    if as_json:
        print_json(result)
    elif result["connected"]:
        click.echo(f"{name} is connected; no QR needed")
    elif result["code"] is None:
        click.echo(f"{name} has no QR yet; try again in a few seconds")
    else:
        segno.make_qr(result["code"], error="l").terminal(compact=True)


@chips.command(help="Ask Evolution for the connection state and bring the chip in line.")
@click.argument("name")
@as_json_option
def check(name: str, as_json: bool) -> None:
    _command(lambda m: m.verificar_conexao(name), as_json)


@chips.command(help="Log the number out (a new QR will be needed).")
@click.argument("name")
@as_json_option
def logout(name: str, as_json: bool) -> None:
    _command(lambda m: m.desconectar_instancia(name, None), as_json)


@chips.command(help="Restart the instance and fetch a fresh QR.")
@click.argument("name")
@as_json_option
def reconnect(name: str, as_json: bool) -> None:
    _command(lambda m: m.reconectar_instancia(name, None), as_json)


@chips.command(help="Delete the instance; the chip keeps its history as deleted.")
@click.argument("name")
@as_json_option
def delete(name: str, as_json: bool) -> None:
    _command(lambda m: m.deletar_instancia(name, None), as_json)


@chips.command(help="Move a chip through its lifecycle.")
@click.argument("name")
@click.argument("trigger", type=click.Choice([t.value for t in LIFECYCLE_TRIGGERS]))
@as_json_option
def transition(name: str, trigger: str, as_json: bool) -> None:
    _command(lambda m: m.transicionar(name, trigger), as_json)


def _command(
    call: Callable[[InstanceManager], Awaitable[dict[str, Any]]], as_json: bool, show: bool = True
) -> dict[str, Any]:
    """Run one InstanceManager command; a failure exits 1 with its error sentence."""
    settings = or_exit(settings_module.load)

    async def run() -> dict[str, Any]:
        db = Database(settings.database_url)
        manager = InstanceManager.from_settings(settings, db)
        try:
            return await call(manager)
        finally:
            await manager.aclose()
            await db.dispose()

    result = asyncio.run(run())
    if not result["sucesso"]:
        if as_json:
            print_json(result)
        raise click.ClickException(result["error"])
    if show:
        shown = {k: v for k, v in result.items() if k != "qr_code"}
        if result.get("qr_code"):
            shown["qr_code"] = "(present: see `evochips chips qr`)"
        if as_json:
            print_json(result)
        else:
            print_fields(shown)
    return result
