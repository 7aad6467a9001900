"""Many deliveries for one chip at once: one effect per event, one linear history."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime

import httpx
from sqlalchemy import select

from evochips import lifecycle
from evochips.db import ChipTransition, Database, WebhookEventRow
from evochips.lifecycle import RegistrationConflict
from tests.chips import given_chip
from tests.conftest import SAMPLES, load_json
from tests.helpers import assert_history_consistent, copies, count, outcomes, transitions


async def test_50_concurrent_then_1000_sequential_identical_deliveries_make_one_transition(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    body = load_json(SAMPLES / "v2-webhook-connection-update-open.json")
    chip = await given_chip(db, "chip-0001", "pending", "connecting")
    rows_before = len(await transitions(db, chip.id))

    responses = await asyncio.gather(
        *(receiver.post("/webhooks/evolution", json=body) for _ in range(50))
    )

    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    assert len(await transitions(db, chip.id)) == rows_before + 1
    assert sorted(await outcomes(db)) == ["applied"], "copies are counted, not stored"
    assert await copies(db) == [49]

    for _ in range(1000):  # Evolution retrying, one replay after another
        replay = await receiver.post("/webhooks/evolution", json=body)
        assert replay.status_code == 200 and replay.json()["outcome"] == "duplicate"
    assert len(await transitions(db, chip.id)) == rows_before + 1
    assert await copies(db) == [1049]
    await assert_history_consistent(db, chip.id)


def _event(state: str, reason: int, second: int) -> dict[str, object]:
    return {
        "event": "connection.update",
        "instance": "chip-0001",
        "data": {"instance": "chip-0001", "state": state, "statusReason": reason},
        "destination": "http://evochips.test/webhooks/evolution",
        "date_time": f"2025-10-21T12:00:{second:02d}.000Z",
        "server_url": "http://evolution.test",
        "apikey": None,
    }


async def test_50_concurrent_different_events_leave_a_linear_history(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    chip = await given_chip(db, "chip-0001", "warming", "open")
    cycle = [("connecting", 200), ("open", 200), ("close", 428), ("close", 401), ("refused", 428)]
    events = [_event(*cycle[i % len(cycle)], second=i) for i in range(50)]
    random.Random(7).shuffle(events)

    responses = await asyncio.gather(
        *(receiver.post("/webhooks/evolution", json=event) for event in events)
    )

    assert all(r.status_code == 200 for r in responses)
    assert await count(db, WebhookEventRow) <= 50  # no-op repeats are counted, not stored
    assert set(await outcomes(db)) <= {"applied", "stale"}
    # given_chip wrote two rows; the burst must have added some (open->connecting at least)
    assert await count(db, ChipTransition) > 2
    await assert_history_consistent(db, chip.id)


async def test_concurrent_registrations_of_one_name_make_one_chip(db: Database) -> None:
    results = await asyncio.gather(
        *(lifecycle.register(db, "chip-0001", f"55119000000{i:02d}") for i in range(10)),
        return_exceptions=True,
    )

    chips = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(chips) == 1
    assert all(isinstance(r, RegistrationConflict) for r in refused), refused
    assert await count(db, ChipTransition) == 1


async def test_a_reconnect_storm_adds_neither_transitions_nor_rows(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    """Offline, Evolution sends ``connecting`` several times a second: here 10 a second
    for a minute, by their date_time (our clock is never compared with it)."""
    chip = await given_chip(db, "chip-0001", "pending", "close")
    storm = [
        _event("connecting", 200, second=0)
        | {"date_time": f"2025-10-21T12:{i // 600:02d}:{i // 10 % 60:02d}.{i % 10}00Z"}
        for i in range(600)
    ]

    for event in storm:
        response = await receiver.post("/webhooks/evolution", json=event)
        assert response.status_code == 200

    history = await transitions(db, chip.id)
    assert [row.trigger for row in history] == ["registered", "connecting"]
    async with db.read() as session:
        rows = (await session.scalars(select(WebhookEventRow))).all()
    # The first delivery moved the chip; the second changed nothing and counts the rest.
    assert [(row.outcome, row.repeats) for row in rows] == [("applied", 1), ("applied", 599)]
    assert rows[-1].date_time == datetime(2025, 10, 21, 12, 0, 59, 900000)
