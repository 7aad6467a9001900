"""All or nothing: whichever statement of a delivery's transaction fails, or its COMMIT,
the answer is 503, none of the delivery's writes remain, and Evolution's redelivery then
goes through as if the failure had never happened. Every write path is covered: an event
applied, a late one replayed, a no-op repeat counted, one the state machine refuses, a
copy of one seen before, and one for an instance no chip has."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from evochips.db import Base, Database, WebhookEventRow
from tests.chips import given_chip
from tests.conftest import SAMPLES, load_json
from tests.helpers import chip_named, outcomes, steps

OPEN = load_json(SAMPLES / "v2-webhook-connection-update-open.json")  # 12:04:45
WEBHOOK = "/webhooks/evolution"
Given = Callable[[str], Awaitable[None]]


def _event(instance: str, state: str, reason: int, date_time: str) -> dict[str, Any]:
    return {"event": "connection.update", "instance": instance, "date_time": date_time,
            "data": {"instance": instance, "state": state, "statusReason": reason}}  # fmt: skip


class _Faults:
    """Fails the ``at``-th statement sessions execute (0: none), or the next COMMIT.

    A failed COMMIT here is one the database never received (the connection dropped on
    the way), so nothing was committed: the case the receiver must answer 503 for."""

    def __init__(self, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
        self.at = 0
        self.count = 0
        self.commit_fails = False
        real_execute = AsyncSession.execute
        dialect = db.engine.sync_engine.dialect
        real_commit = dialect.do_commit

        async def execute(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            if self.count == self.at:
                raise OperationalError("injected", {}, ConnectionError("connection lost"))
            return await real_execute(session, *args, **kwargs)

        def do_commit(dbapi_connection: Any) -> None:
            if self.commit_fails:
                self.commit_fails = False
                raise dialect.loaded_dbapi.OperationalError("injected: lost before COMMIT")
            real_commit(dbapi_connection)

        monkeypatch.setattr(AsyncSession, "execute", execute)
        monkeypatch.setattr(dialect, "do_commit", do_commit)

    def arm(self, at: int) -> None:
        self.at, self.count = at, 0


@pytest.fixture
def faults(db: Database, monkeypatch: pytest.MonkeyPatch) -> _Faults:
    return _Faults(db, monkeypatch)


async def _everything(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, every column: a write that survived shows here."""
    async with db.read() as session:
        return {
            table.name: [
                tuple(row)
                for row in await session.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in Base.metadata.sorted_tables
        }


async def _fails_everywhere(
    db: Database,
    receiver: httpx.AsyncClient,
    faults: _Faults,
    caplog: pytest.LogCaptureFixture,
    given: Given,
    body: dict[str, Any],
    outcome: str,
) -> int:
    """Deliver ``body`` to a fresh chip once per statement its transaction takes, failing
    that statement, and once more failing its COMMIT; each time nothing of it may stay,
    nothing may be logged as recorded, and Evolution's retry must then get ``outcome``.
    ``given(name)`` prepares the chip. Returns how many statements the transaction took."""
    await given("chip-count")
    faults.arm(0)
    response = await receiver.post(WEBHOOK, json={**body, "instance": "chip-count"})
    assert response.json()["outcome"] == outcome
    statements = faults.count
    assert statements > 0
    caplog.set_level(logging.INFO)
    for at in [*range(1, statements + 1), "COMMIT"]:
        name = f"chip-fail-{at}"
        await given(name)
        before = await _everything(db)
        caplog.clear()
        if at == "COMMIT":
            faults.commit_fails = True
        else:
            faults.arm(int(at))
        response = await receiver.post(WEBHOOK, json={**body, "instance": name})
        faults.arm(0)
        faults.commit_fails = False
        assert (response.status_code, response.headers.get("retry-after")) == (503, "5"), at
        assert await _everything(db) == before, f"a write survived a failure at {at}"
        logged = caplog.text
        assert f"for {name!r}: " not in logged and f"chip {name!r} " not in logged, at
        retried = await receiver.post(WEBHOOK, json={**body, "instance": name})
        assert retried.json()["outcome"] == outcome, at
    return statements


async def test_a_failure_at_any_statement_of_an_event_leaves_none_of_its_writes(
    db: Database, receiver: httpx.AsyncClient, faults: _Faults, caplog: pytest.LogCaptureFixture
) -> None:
    """Applying an event is: lock the chip, insert the delivery, update the chip, append
    history. On PostgreSQL the last three are one statement (which also takes the
    history's turn)."""

    async def given(name: str) -> None:
        await given_chip(db, name, "pending", "connecting")

    statements = await _fails_everywhere(db, receiver, faults, caplog, given, OPEN, "applied")
    assert statements == (2 if db.engine.dialect.name == "postgresql" else 4)
    for name in ("chip-fail-1", "chip-fail-COMMIT"):
        assert (await steps(db, name))[-1] == "connected:pending->warming"


async def test_a_failure_at_any_statement_of_a_late_event_leaves_none_of_its_writes(
    db: Database, receiver: httpx.AsyncClient, faults: _Faults, caplog: pytest.LogCaptureFixture
) -> None:
    """A late event takes one statement more: lock the chip, insert the delivery, read the
    deliveries to replay, update the chip, append history."""

    async def given(name: str) -> None:
        await given_chip(db, name, "pending", "connecting")
        close = _event(name, "close", 428, "2025-10-21T12:05:00Z")
        assert (await receiver.post(WEBHOOK, json=close)).status_code == 200

    statements = await _fails_everywhere(
        db,
        receiver,
        faults,
        caplog,
        given,
        OPEN,
        "stale",  # OPEN is 12:04:45, late
    )
    assert statements == 5
    for name in ("chip-fail-1", "chip-fail-COMMIT"):
        chip = await chip_named(db, name)
        assert (chip.status, chip.connection_state) == ("warming", "close")
        assert (await steps(db, name))[-1] == "connected:pending->warming"


async def test_a_failure_while_counting_a_repeat_leaves_the_count_as_it_was(
    db: Database, receiver: httpx.AsyncClient, faults: _Faults, caplog: pytest.LogCaptureFixture
) -> None:
    """A third ``connecting`` in a row changes nothing and is counted on the row of the
    second: lock the chip, read its last delivery, count on it, update the chip."""

    async def given(name: str) -> None:
        await given_chip(db, name, "pending", "close")
        for second in (0, 1):  # the first moves the chip, the second is stored as a no-op
            connecting = _event(name, "connecting", 200, f"2025-10-21T12:00:0{second}Z")
            assert (await receiver.post(WEBHOOK, json=connecting)).status_code == 200

    third = _event("chip-count", "connecting", 200, "2025-10-21T12:00:02Z")
    await _fails_everywhere(db, receiver, faults, caplog, given, third, "applied")
    for name in ("chip-fail-1", "chip-fail-COMMIT"):
        assert await _repeats(db, name) == [1, 2], "counted once, on the second row"
        assert await steps(db, name) == ["registered:-->pending", "connecting:pending->pending"]


async def test_a_failure_while_refusing_an_event_leaves_the_chips_clock_as_it_was(
    db: Database, receiver: httpx.AsyncClient, faults: _Faults, caplog: pytest.LogCaptureFixture
) -> None:
    """A deleted chip takes no ``open``; it is recorded ignored, and its Evolution clock
    moves to the event's time: lock the chip, update the clock, insert the delivery."""

    async def given(name: str) -> None:
        await given_chip(db, name, "deleted", "close")

    await _fails_everywhere(db, receiver, faults, caplog, given, OPEN, "ignored")
    for name in ("chip-fail-1", "chip-fail-COMMIT"):
        chip = await chip_named(db, name)
        assert chip.status == "deleted"
        assert chip.evolution_date_time is not None
        assert chip.evolution_date_time.isoformat().startswith("2025-10-21T12:04:45")
    assert set(await outcomes(db)) == {"ignored"}


async def test_a_failure_while_recording_a_copy_leaves_no_trace_of_the_copy(
    db: Database, receiver: httpx.AsyncClient, faults: _Faults, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy of a delivery seen before is answered ``duplicate``; however it is recorded
    (a row of its own, or a count on the first delivery's row), a failure undoes it."""

    async def given(name: str) -> None:
        await given_chip(db, name, "pending", "connecting")
        assert (await receiver.post(WEBHOOK, json={**OPEN, "instance": name})).status_code == 200

    await _fails_everywhere(db, receiver, faults, caplog, given, OPEN, "duplicate")
    for name in ("chip-fail-1", "chip-fail-COMMIT"):
        assert await _copies_of(db, name) == 1
        assert (await steps(db, name))[-1] == "connected:pending->warming"


async def test_a_failure_while_recording_an_unmatched_event_leaves_no_row(
    db: Database, receiver: httpx.AsyncClient, faults: _Faults, caplog: pytest.LogCaptureFixture
) -> None:
    async def given(name: str) -> None:
        return None  # no chip has the instance

    await _fails_everywhere(db, receiver, faults, caplog, given, OPEN, "unmatched")
    assert set(await outcomes(db)) == {"unmatched"}


async def test_a_failure_mid_transaction_leaves_nothing_and_logs_no_success(
    db: Database,
    receiver: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await given_chip(db, "chip-0001", "pending", "connecting")
    caplog.set_level(logging.INFO)

    real_execute = AsyncSession.execute

    async def lost_at_history(session: AsyncSession, statement: Any, *args: Any) -> Any:
        """The connection drops as the history row is written, whichever statement that
        is (on PostgreSQL the delivery and the chip's update are part of it)."""
        sql = str(statement.compile(dialect=session.get_bind().dialect))
        if "INSERT INTO chip_transitions" in sql:
            raise OperationalError(sql, {}, ConnectionError("gone"))
        return await real_execute(session, statement, *args)

    with monkeypatch.context() as patched:
        patched.setattr(AsyncSession, "execute", lost_at_history)
        failed = await receiver.post(WEBHOOK, json=OPEN)
    assert failed.status_code == 503
    assert "applied" not in caplog.text
    assert await outcomes(db) == [] and (await chip_named(db, "chip-0001")).status == "pending"

    redelivered = await receiver.post(WEBHOOK, json=OPEN)
    assert redelivered.json()["outcome"] == "applied"
    assert "webhook CONNECTION_UPDATE for 'chip-0001': applied" in caplog.text
    assert (await chip_named(db, "chip-0001")).status == "warming"


async def _repeats(db: Database, instance_name: str) -> list[int]:
    async with db.read() as session:
        rows = await session.scalars(
            select(WebhookEventRow.repeats)
            .where(WebhookEventRow.instance_name == instance_name)
            .order_by(WebhookEventRow.id)
        )
        return list(rows)


async def _copies_of(db: Database, instance_name: str) -> int:
    """Copies recorded for the instance, whether as rows marked duplicate or counted."""
    mine = WebhookEventRow.instance_name == instance_name
    async with db.read() as session:
        rows = await session.scalar(
            select(func.count()).where(mine, WebhookEventRow.outcome == "duplicate")
        )
        counted = await session.scalar(select(func.sum(WebhookEventRow.copies)).where(mine))
    return int(rows or 0) + int(counted or 0)
