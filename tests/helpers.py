"""Small helpers the tests share: reading chips and history, checking invariants."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import func, select

from evochips.db import Chip, ChipTransition, Database, WebhookEventRow
from evochips.evolution.client import EvolutionClient


async def chip_named(db: Database, instance_name: str) -> Chip:
    async with db.read() as session:
        chip = await session.scalar(
            select(Chip)
            .where(Chip.instance_name == instance_name)
            .order_by(Chip.deleted_at.is_not(None))
            .limit(1)
        )
    assert chip is not None, f"no chip {instance_name}"
    return chip


async def transitions(db: Database, chip_id: str) -> list[ChipTransition]:
    async with db.read() as session:
        rows = await session.scalars(
            select(ChipTransition)
            .where(ChipTransition.chip_id == chip_id)
            .order_by(ChipTransition.seq)
        )
        return list(rows)


async def steps(db: Database, instance_name: str) -> list[str]:
    """The chip's history as ``trigger:from->to`` status steps (connection left out)."""
    chip = await chip_named(db, instance_name)
    return [
        f"{row.trigger}:{row.from_status or '-'}->{row.to_status}"
        for row in await transitions(db, chip.id)
    ]


async def outcomes(db: Database) -> list[str]:
    async with db.read() as session:
        rows = await session.scalars(select(WebhookEventRow.outcome).order_by(WebhookEventRow.id))
        return list(rows)


async def copies(db: Database) -> list[int]:
    """Each stored delivery's count of copies received after it, in delivery order."""
    async with db.read() as session:
        rows = await session.scalars(select(WebhookEventRow.copies).order_by(WebhookEventRow.id))
        return list(rows)


async def count(db: Database, model: type[Any]) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def assert_history_consistent(db: Database, chip_id: str) -> None:
    """Every row starts where the one before ended, seq runs 1..n, and the chip agrees."""
    chip = await _chip_by_id(db, chip_id)
    rows = await transitions(db, chip_id)
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    for before, after in itertools.pairwise(rows):
        assert (after.from_status, after.from_connection) == (
            before.to_status,
            before.to_connection,
        ), f"row {after.seq} does not start where row {before.seq} ended"
    last = rows[-1]
    assert (chip.status, chip.connection_state) == (last.to_status, last.to_connection)
    assert chip.evolution_connected == (chip.connection_state == "open")


async def _chip_by_id(db: Database, chip_id: str) -> Chip:
    async with db.read() as session:
        chip = await session.get(Chip, chip_id)
    assert chip is not None
    return chip


Handler = Callable[[httpx.Request], httpx.Response]


def evolution_with(
    handler: Handler, *, api_version: int | None = 2, read_attempts: int = 1
) -> EvolutionClient:
    """An EvolutionClient whose HTTP goes to ``handler`` instead of the network (reads are
    tried once unless a test is about retries)."""
    return EvolutionClient(
        "http://evolution.test",
        "test-global-key",
        api_version=api_version,
        transport=httpx.MockTransport(handler),
        read_attempts=read_attempts,
    )


def json_response(status: int, body: Any) -> httpx.Response:
    """A response as Evolution (Express) sends it: JSON with a charset."""
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json; charset=utf-8"},
    )
