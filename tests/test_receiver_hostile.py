"""Input meant to hurt: odd values, deep or invalid JSON, text databases cannot store,
databases that vanish or stay locked, and secrets that must not reach the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from evochips import lifecycle
from evochips.api.routes import api_routes
from evochips.db import Database, WebhookEventRow
from evochips.db import engine as engine_module
from evochips.db.migrate import upgrade
from evochips.lifecycle import Source
from evochips.receiver import create_app
from evochips.statemachine import Trigger
from tests.chips import given_chip
from tests.conftest import AUTH, SAMPLES, SECRET, _admin, _asyncpg_dsn, load_json
from tests.helpers import chip_named, outcomes, steps

OPEN = load_json(SAMPLES / "v2-webhook-connection-update-open.json")
API_KEY = "api-key-0123456789abcdefghij"


def _event(data: Any, *, event: str = "connection.update", instance: Any = "chip-0001",
           date_time: str = "2025-10-21T12:00:00.000Z") -> dict[str, Any]:  # fmt: skip
    return {"event": event, "instance": instance, "data": data, "date_time": date_time}


@pytest.mark.parametrize("reason", ["²", "٤٠٣", 99999999999999999999999, 3_000_000_000, -403,
                                    True, "4 0 3", None])  # fmt: skip
async def test_odd_status_reasons_are_no_reason(
    db: Database, receiver: httpx.AsyncClient, reason: Any
) -> None:
    await given_chip(db, "chip-0001", "warming", "open")
    response = await receiver.post(
        "/webhooks/evolution", json=_event({"state": "close", "statusReason": reason})
    )
    assert response.status_code == 200
    chip = await chip_named(db, "chip-0001")
    assert (chip.status, chip.connection_state, chip.status_reason) == ("warming", "close", None)


@pytest.mark.parametrize(
    "body",
    [
        b'{"event": "connection.update", "data": {"statusReason": NaN}}',
        b'{"event": "connection.update", "data": Infinity}',
        # A number past a float's range, which Python reads as infinity and jsonb refuses.
        b'{"event": "connection.update", "instance": "chip-0001", "data": {"state": '
        b'"connecting", "statusReason": 1e999}}',
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps(_event({"x": json.loads("[" * 600 + "]" * 600)})).encode(),
    ],
    ids=["nan", "infinity", "overflow", "deep-invalid", "deep-valid"],
)
async def test_json_that_is_not_evolutions_is_400(
    db: Database, receiver: httpx.AsyncClient, body: bytes
) -> None:
    response = await receiver.post("/webhooks/evolution", content=body)
    assert response.status_code == 400
    assert await outcomes(db) == []


@pytest.mark.parametrize(
    "body",
    [
        _event({"state": "open"}, instance="chip\x00-0001"),
        _event({"state": "open"}, event="conn\x00ection.update"),
        _event({"state": "open", "profileName": "a\ud800b"}),
        _event({"state": "open", "wuid": "5" * 500 + "@s.whatsapp.net"}),
        _event({"qrcode": {"pairingCode": "P" * 100, "code": "2@x", "base64": "data:,"}},
               event="qrcode.updated"),
        _event({"state": "open"}, event="e" * 500),
        _event({"state": "open"}, instance="i" * 5000),
        _event({"text": "nul \x00 and \udfff inside"}, event="messages.upsert"),
        {"event": "connection.update", "instance": {"nested": "object"}, "data": {}},
    ],
    ids=["nul-instance", "nul-event", "surrogate", "long-wuid", "long-pairing-code",
         "long-event", "long-instance", "unhandled-with-nul", "instance-object"],
)  # fmt: skip
async def test_text_a_database_cannot_store_is_never_a_500(
    db: Database, receiver: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    await given_chip(db, "chip-0001", "pending", "connecting")
    response = await receiver.post(
        "/webhooks/evolution",
        content=json.dumps(body).encode(),  # keeps \\ud800 escaped
    )
    assert response.status_code in (200, 202), response.text
    chip = await chip_named(db, "chip-0001")
    assert chip.owner_jid is None and chip.evolution_pairing_code is None


async def test_bodies_without_an_event_do_not_pass_for_each_other(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    for body in (b"null", b"[]", b'"text"', b"1", b'{"event": 1}', b'{"event": "  "}'):
        response = await receiver.post("/webhooks/evolution", content=body)
        assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert await outcomes(db) == ["ignored"] * 6


async def test_an_unmatched_event_applies_once_its_chip_exists(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    first = await receiver.post("/webhooks/evolution", json=OPEN)
    await given_chip(db, "chip-0001", "pending", "connecting")

    again = await receiver.post("/webhooks/evolution", json=OPEN)
    third = await receiver.post("/webhooks/evolution", json=OPEN)

    assert (first.status_code, first.json()["outcome"]) == (202, "unmatched")
    assert again.json()["outcome"] == "applied" and third.json()["outcome"] == "duplicate"
    assert (await chip_named(db, "chip-0001")).status == "warming"


async def test_late_events_of_an_old_instance_do_not_touch_its_successor(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    old = await given_chip(db, "chip-0001", "pending", "connecting")
    await receiver.post("/webhooks/evolution", json=OPEN)  # 12:04:45, the old instance
    await lifecycle.fire(db, old.id, Trigger.REMOVED, Source.COMMAND)
    new = await given_chip(db, "chip-0001", "pending", "connecting")  # same name, new instance

    for name in ("logout-instance", "connection-update-close-401", "remove-instance"):
        late = {
            **load_json(SAMPLES / f"v2-webhook-{name}.json"),
            "date_time": "2025-10-21T12:04:44Z",
        }
        response = await receiver.post("/webhooks/evolution", json=late)
        assert response.json()["outcome"] == "stale", name
    retried = await receiver.post("/webhooks/evolution", json=OPEN)
    assert retried.json()["outcome"] == "duplicate"

    chip = await chip_named(db, "chip-0001")
    assert chip.id == new.id and (chip.status, chip.connection_state) == ("pending", "connecting")


async def test_the_removal_of_an_old_instance_does_not_delete_its_successor(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    """Delete a chip and create its name again at once: the old instance's removal
    webhooks, sent without waiting and retried with backoff, may come after the new chip
    is registered, dated later than anything received. Their tag names the old chip."""
    old = await given_chip(db, "chip-0001", "warming", "open")
    await lifecycle.fire(db, old.id, Trigger.REMOVED, Source.COMMAND)
    new = await given_chip(db, "chip-0001", "pending", "close")
    assert None not in (old.instance_tag, new.instance_tag) and old.instance_tag != new.instance_tag

    for name in ("status-instance-closed", "logout-instance", "connection-update-close-401",
                 "remove-instance"):  # fmt: skip
        late = {**load_json(SAMPLES / f"v2-webhook-{name}.json"), "date_time": "2025-10-21T13:00Z"}
        response = await receiver.post(
            "/webhooks/evolution", json=late, headers={"x-evochips-instance": old.instance_tag}
        )
        # They go to the deleted chip they describe, which takes only a removal.
        expected = "applied" if name == "remove-instance" else "ignored"
        assert (response.status_code, response.json()["outcome"]) == (200, expected), name
    chip = await chip_named(db, "chip-0001")
    assert chip.id == new.id and (chip.status, chip.connection_state) == ("pending", "close")
    async with db.read() as session:
        owners = await session.scalars(select(WebhookEventRow.chip_id))
        assert set(owners) == {old.id}

    # The new instance's own events apply as usual, dated before the old one's removal.
    connecting = _event({"state": "connecting", "statusReason": 200}, date_time="2025-10-21T12:59Z")
    response = await receiver.post(
        "/webhooks/evolution", json=connecting, headers={"x-evochips-instance": new.instance_tag}
    )
    assert response.json()["outcome"] == "applied"
    assert (await chip_named(db, "chip-0001")).connection_state == "connecting"


async def test_an_instance_a_chip_was_given_before_is_not_that_chips_now(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    """A deleted chip re-attached to a new instance keeps its id but draws a new tag, so
    the instance it had before can no longer move it."""
    chip = await given_chip(db, "chip-0001", "deleted", "close")
    again = await lifecycle.register(db, "chip-0001", "5511900000001", chip.id)
    assert again.id == chip.id and again.instance_tag != chip.instance_tag

    removed = {
        **load_json(SAMPLES / "v2-webhook-remove-instance.json"),
        "date_time": "2025-10-21T13:00Z",
    }
    response = await receiver.post(
        "/webhooks/evolution", json=removed, headers={"x-evochips-instance": chip.instance_tag}
    )

    assert (response.status_code, response.json()["outcome"]) == (200, "stale")
    assert (await chip_named(db, "chip-0001")).status == "pending"


async def test_a_real_offset_is_honoured(db: Database, receiver: httpx.AsyncClient) -> None:
    await given_chip(db, "chip-0001", "pending", "connecting")
    # 12:30+03:00 is 09:30 UTC, so a connecting at 10:00Z is newer and applies.
    await receiver.post("/webhooks/evolution", json={**OPEN, "date_time": "2025-10-21T12:30+03:00"})
    later = _event({"state": "connecting", "statusReason": 200}, date_time="2025-10-21T10:00Z")

    response = await receiver.post("/webhooks/evolution", json=later)

    assert response.json()["outcome"] == "applied"


async def _post_with_jwt(db: Database, claims: dict[str, Any]) -> int:
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(db, SECRET)), base_url="http://r.test",
        headers={"authorization": f"Bearer {token}"},
    ) as client:  # fmt: skip
        return (await client.post("/webhooks/evolution", json=OPEN)).status_code


async def test_long_lived_jwt_is_refused(db: Database) -> None:
    now = int(time.time())
    assert await _post_with_jwt(db, {"iat": now, "exp": now + 30 * 365 * 86400}) == 401


@pytest.fixture
async def sqlite_db(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[Database]:
    path = tmp_path / "evochips.db"
    path.write_bytes(sqlite_template.read_bytes())
    database = Database(f"sqlite+aiosqlite:///{path}")
    yield database
    await database.dispose()


async def test_a_deleted_sqlite_file_is_503_not_silent_loss(
    sqlite_db: Database, tmp_path: Path
) -> None:
    await given_chip(sqlite_db, "chip-0001", "pending", "connecting")
    for leftover in tmp_path.glob("evochips.db*"):
        leftover.unlink()
    async with _client(sqlite_db) as client:
        response = await client.post("/webhooks/evolution", json=OPEN)
    assert response.status_code == 503 and response.headers["retry-after"]


async def test_waiting_too_long_for_sqlites_lock_is_503(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "SQLITE_WRITE_WAIT_SECONDS", 0.2)
    await given_chip(sqlite_db, "chip-0001", "pending", "connecting")
    # Another writer holds the turn for the whole request.
    async with sqlite_db.write(), _client(sqlite_db) as client:
        started = time.monotonic()
        response = await client.post("/webhooks/evolution", json=OPEN)
    assert response.status_code == 503
    assert time.monotonic() - started < 5


async def test_postgres_without_schema_is_503(postgres_url: str) -> None:
    name = f"evochips_empty_{uuid.uuid4().hex[:8]}"
    await _admin(f'CREATE DATABASE "{name}"')
    empty = Database(postgres_url.rsplit("/", 1)[0] + f"/{name}")
    try:
        async with _client(empty) as client:
            response = await client.post("/webhooks/evolution", json=OPEN)
            ready = await client.get("/readyz")
    finally:
        await empty.dispose()
        await _admin(f'DROP DATABASE "{name}" WITH (FORCE)')
    assert response.status_code == 503
    assert ready.status_code == 503 and "evochips migrate" in ready.json()["error"]


async def test_postgres_database_that_does_not_exist_is_503(postgres_url: str) -> None:
    missing = Database(postgres_url.rsplit("/", 1)[0] + "/evochips_no_such_database")
    async with _client(missing) as client:
        response = await client.post("/webhooks/evolution", json=OPEN)
        ready = await client.get("/readyz")
    await missing.dispose()
    assert (response.status_code, ready.status_code) == (503, 503)


@pytest.mark.parametrize("refusal", ["no connections", "read-only", "no privileges"])
async def test_postgres_refusing_the_work_is_503(postgres_url: str, refusal: str) -> None:
    """A database an operator closed, a standby left read-only by a failover, a role that
    lost its grants: each may be mended, so the answer asks Evolution to retry."""
    name = f"evochips_refusing_{uuid.uuid4().hex[:8]}"
    role = f"evochips_role_{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_url).set(database=name)
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        await asyncio.to_thread(upgrade, url.render_as_string(hide_password=False))
        if refusal == "no connections":
            await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        elif refusal == "read-only":
            await _admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        else:
            await _admin(f'CREATE ROLE "{role}" LOGIN')
            url = url.set(username=role)
        refusing = Database(url)
        try:
            async with _client(refusing, raise_app_exceptions=False) as client:
                response = await client.post("/webhooks/evolution", json=OPEN)
        finally:
            await refusing.dispose()
    finally:
        await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await _admin(f'DROP DATABASE "{name}" WITH (FORCE)')
        await _admin(f'DROP ROLE IF EXISTS "{role}"')
    assert (response.status_code, response.headers.get("retry-after")) == (503, "5"), refusal
    assert response.json() == {"error": "database unavailable, retry later"}


async def test_postgres_missing_one_table_is_not_ready(postgres_url: str) -> None:
    name = f"evochips_partial_{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    await _admin(f'CREATE DATABASE "{name}"')
    partial = Database(url)
    try:
        await asyncio.to_thread(upgrade, url)
        async with partial.write() as session:
            await session.execute(text("ALTER TABLE chip_transitions RENAME TO kept_aside"))
        async with _client(partial) as client:
            ready = await client.get("/readyz")
    finally:
        await partial.dispose()
        await _admin(f'DROP DATABASE "{name}" WITH (FORCE)')
    assert ready.status_code == 503 and "evochips migrate" in ready.json()["error"]


class _Impatient(Database):
    """PostgreSQL with asyncpg giving up on a statement after ``seconds`` (15 s in
    production), and ``server_settings`` for each connection."""

    def __init__(self, url: str, seconds: float, server_settings: dict[str, str]) -> None:
        self._seconds, self._server_settings = seconds, server_settings
        super().__init__(url)

    def _engine_options(self) -> dict[str, Any]:
        options = super()._engine_options()
        options["connect_args"] = {
            **options["connect_args"],
            "command_timeout": self._seconds,
            "server_settings": self._server_settings,
        }
        return options


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    ("seconds", "server_settings"),
    [(0.5, {}), (15, {"lock_timeout": "500"}), (15, {"statement_timeout": "500"})],
    ids=["command-timeout", "lock-timeout", "statement-timeout"],
)
async def test_postgres_timing_out_on_a_locked_chip_is_503_and_the_redelivery_applies(
    db: Database, database_url: str, seconds: float, server_settings: dict[str, str]
) -> None:
    """Another transaction holds the chip's row (a long reconciliation pass, a stuck
    session), and PostgreSQL or the driver gives up waiting: a timeout, 503 to retry."""
    await given_chip(db, "chip-0001", "pending", "connecting")
    impatient = _Impatient(database_url, seconds, server_settings)
    holder = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        async with _client(impatient, raise_app_exceptions=False) as client:
            holding = holder.transaction()
            await holding.start()
            await holder.execute(
                "SELECT id FROM chips WHERE instance_name = 'chip-0001' FOR UPDATE"
            )
            started = time.monotonic()
            timed_out = await client.post("/webhooks/evolution", json=OPEN)
            waited = time.monotonic() - started
            await holding.rollback()
            redelivered = await client.post("/webhooks/evolution", json=OPEN)
    finally:
        await holder.close()
        await impatient.dispose()

    assert (timed_out.status_code, timed_out.headers.get("retry-after")) == (503, "5")
    assert waited < 5, f"answered after {waited:.1f} s, not at the timeout"
    assert (redelivered.status_code, redelivered.json()["outcome"]) == (200, "applied")
    assert await outcomes(db) == ["applied"]
    assert await steps(db, "chip-0001") == [
        "registered:-->pending",
        "connecting:pending->pending",
        "connected:pending->warming",
    ]


def _locked_open(n: int) -> dict[str, Any]:
    return {**OPEN, "instance": "chip-locked", "date_time": f"2025-10-21T12:05:{n:02d}Z"}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_one_locked_chip_does_not_hold_up_the_others(db: Database, database_url: str) -> None:
    """Deliveries queued behind a row another session holds take pool connections while
    they wait; they give up after the lock timeout, so the rest of the fleet gets through."""
    await given_chip(db, "chip-locked", "pending", "connecting")
    await given_chip(db, "chip-free", "pending", "connecting")
    holder = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        async with _client(db) as client:
            holding = holder.transaction()
            await holding.start()
            await holder.execute(
                "SELECT id FROM chips WHERE instance_name = 'chip-locked' FOR UPDATE"
            )
            # More waiters than the pool has connections (5, and 10 more on demand).
            queued = [
                asyncio.create_task(client.post("/webhooks/evolution", json=_locked_open(n)))
                for n in range(20)
            ]
            await asyncio.sleep(0.5)
            other = await client.post("/webhooks/evolution", json={**OPEN, "instance": "chip-free"})
            answers = await asyncio.gather(*queued)
            await holding.rollback()
    finally:
        await holder.close()
    assert (other.status_code, other.json()["outcome"]) == (200, "applied")
    assert {answer.status_code for answer in answers} == {503}
    assert (await chip_named(db, "chip-locked")).status == "pending"


class _Broken(Database):
    """A database whose writes fail in a way nobody planned for."""

    def write(self) -> Any:
        raise RuntimeError("a bug")


async def test_an_unexpected_error_is_a_bare_500_and_logs_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = _Broken(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(broken, SECRET), raise_app_exceptions=False),
        base_url="http://r.test",
    ) as client:  # fmt: skip
        response = await client.post(f"/webhooks/evolution/k/{SECRET}/x", json=OPEN)
    await broken.dispose()
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    ours = "\n".join(
        f"{record.getMessage()} {record.exc_text or ''}"
        for record in caplog.records
        if record.name.startswith("evochips")
    )
    assert SECRET not in ours
    assert "/webhooks/evolution/k/[secret]/x" in ours


async def test_instance_names_cannot_forge_log_lines(
    db: Database, receiver: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    forged = "x\n2026-12-03 INFO evochips.lifecycle: chip 'y' connected"
    await receiver.post("/webhooks/evolution", json=_event({"state": "open"}, instance=forged))
    assert not any(line.startswith("2026-12-03 INFO") for line in caplog.text.splitlines())


async def test_many_hostile_deliveries_leave_a_consistent_chip(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    chip = await given_chip(db, "chip-0001", "pending", "connecting")
    bodies = [
        json.dumps(_event({"state": s, "statusReason": r}, date_time=f"2025-10-21T12:00:{i:02d}Z"))
        for i, (s, r) in enumerate([("open", 200), ("close", "401"), ("close", "²"),
                                    ("refused", 428), ("connecting", None)] * 4)
    ]  # fmt: skip
    answers = await asyncio.gather(
        *(receiver.post("/webhooks/evolution", content=b) for b in bodies)
    )
    assert {a.status_code for a in answers} == {200}
    from tests.helpers import assert_history_consistent

    await assert_history_consistent(db, chip.id)
    assert (await steps(db, "chip-0001"))[0] == "registered:-->pending"


def _client(db: Database, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    """A client of ``db``'s receiver; without ``raise_app_exceptions`` an error the app does
    not handle is answered 500, as by a server."""
    app = create_app(db, SECRET)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://r.test", headers=AUTH)


@pytest.mark.parametrize("date_time", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
async def test_dates_at_the_calendars_edge_are_no_date(
    db: Database, receiver: httpx.AsyncClient, date_time: str
) -> None:
    await given_chip(db, "chip-0001", "pending", "connecting")
    response = await receiver.post("/webhooks/evolution", json={**OPEN, "date_time": date_time})
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert "date_time" in response.json()["detail"]


@pytest.mark.parametrize("claims", [{"iat": "now", "exp": "later"}, {"iat": True, "exp": 600}])
async def test_a_signed_jwt_with_odd_times_is_refused(db: Database, claims: dict[str, Any]) -> None:
    assert await _post_with_jwt(db, claims) == 401


async def test_a_refused_secret_is_logged_without_the_secret(
    receiver: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    wrong = "wrong-secret-value-0000000000000000"
    response = await receiver.post(f"/webhooks/evolution/k/{wrong}", json=OPEN, headers={})
    assert response.status_code == 401
    logged = [r.getMessage() for r in caplog.records if r.name == "evochips.receiver.app"]
    assert any("webhook refused" in line for line in logged)
    assert not any(wrong in line for line in logged)


@pytest.mark.parametrize("path", ["/webhooks/evolution", "/api/v1/chips"])
async def test_a_sender_that_goes_away_mid_body_is_one_quiet_line_and_nothing_stored(
    db: Database, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    await given_chip(db, "chip-0001", "pending", "connecting")
    app = create_app(db, SECRET, api=api_routes(db, None, (API_KEY,)))
    body = json.dumps(OPEN).encode()
    arrivals = [
        {"type": "http.request", "body": body[:40], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return arrivals.pop(0) if arrivals else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
               (b"x-evochips-token", SECRET.encode()),
               (b"authorization", b"Bearer " + API_KEY.encode())]  # fmt: skip
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}  # fmt: skip
    caplog.set_level(logging.INFO)

    await app(scope, receive, send)  # raises nothing: uvicorn would print a traceback

    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "Traceback" not in caplog.text
    assert await outcomes(db) == []
