"""Putting chips into a known state for a test, through the real state machine."""

from __future__ import annotations

from evochips import lifecycle
from evochips.db import Chip, Database
from evochips.lifecycle import Source
from evochips.statemachine import Trigger

# Trigger paths from a fresh ``pending/close`` chip to each (status, connection) a test needs.
PATHS: dict[tuple[str, str], list[Trigger]] = {
    ("pending", "close"): [],
    ("pending", "connecting"): [Trigger.CONNECTING],
    ("pending", "refused"): [Trigger.QR_REFUSED],
    ("warming", "open"): [Trigger.CONNECTED],
    ("warming", "connecting"): [Trigger.CONNECTED, Trigger.CONNECTING],
    ("ready", "open"): [Trigger.CONNECTED, Trigger.PROMOTE],
    ("active", "open"): [Trigger.CONNECTED, Trigger.PROMOTE, Trigger.ACTIVATE],
    ("degraded", "open"): [Trigger.CONNECTED, Trigger.PROMOTE, Trigger.ACTIVATE, Trigger.DEGRADE],
    ("banned", "close"): [Trigger.BANNED],
    ("deleted", "close"): [Trigger.REMOVED],
}


async def given_chip(
    db: Database,
    instance_name: str,
    status: str = "pending",
    connection: str = "close",
    telefone: str = "5511900000001",
) -> Chip:
    chip = await lifecycle.register(db, instance_name, telefone)
    for trigger in PATHS[(status, connection)]:
        chip = (await lifecycle.fire(db, chip.id, trigger, Source.COMMAND)).chip
    assert (chip.status, chip.connection_state) == (status, connection)
    return chip
