"""The fleet feed as an incremental export: a reader that keeps its last cursor and asks
again never misses a history row, even one whose transaction commits after a later one.

History ids come from a sequence, handed out when a row is inserted, not when it
commits; without writers taking turns, a reader could page past an id whose transaction
is still open."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from evochips import lifecycle
from evochips.api.routes import api_routes
from evochips.db import ChipTransition, Database
from evochips.lifecycle import Source
from evochips.receiver import create_app
from evochips.statemachine import Trigger
from tests.chips import given_chip
from tests.conftest import SECRET

KEY = "api-key-0123456789abcdefghij"


async def test_a_row_committed_late_is_not_paged_past(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = await given_chip(db, "feed-slow", "pending", "close")
    quick = await given_chip(db, "feed-quick", "pending", "close")
    inserted, release = asyncio.Event(), asyncio.Event()
    append = lifecycle._append_history

    async def held_open(session: Any, chip_id: str, *args: Any) -> None:
        await append(session, chip_id, *args)
        if chip_id == slow.id:  # the row has its id; its transaction stays open
            inserted.set()
            await release.wait()

    monkeypatch.setattr(lifecycle, "_append_history", held_open)
    app = create_app(db, SECRET, api=api_routes(db, None, (KEY,)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://e.test",
                                 headers={"authorization": f"Bearer {KEY}"}) as api:  # fmt: skip
        first = (await api.get("/api/v1/transitions")).json()
        cursor, seen = first["next_cursor"], [row["id"] for row in first["items"]]

        held = asyncio.create_task(lifecycle.fire(db, slow.id, Trigger.CONNECTING, Source.COMMAND))
        await inserted.wait()
        other = asyncio.create_task(
            lifecycle.fire(db, quick.id, Trigger.CONNECTING, Source.COMMAND)
        )
        with contextlib.suppress(TimeoutError):  # it waits its turn, or commits first
            await asyncio.wait_for(asyncio.shield(other), 0.5)
        page = (await api.get(f"/api/v1/transitions?cursor={cursor}")).json()
        seen += [row["id"] for row in page["items"]]
        cursor = page["next_cursor"] or cursor

        release.set()
        await asyncio.gather(held, other)
        rest = (await api.get(f"/api/v1/transitions?cursor={cursor}")).json()
        seen += [row["id"] for row in rest["items"]]

    async with db.read() as session:
        stored = list(await session.scalars(select(ChipTransition.id).order_by(ChipTransition.id)))
    assert len(stored) == 4  # two registrations, two changes
    assert sorted(seen) == stored, f"missed {sorted(set(stored) - set(seen))}"
    assert len(seen) == len(set(seen)), "a row was read twice"
