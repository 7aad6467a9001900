"""The receiver's contract: authentication, status codes, routes and health checks."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import jwt
import pytest

from evochips.db import Database, WebhookEventRow
from evochips.receiver import create_app
from tests.chips import given_chip
from tests.conftest import SAMPLES, SECRET, load_json
from tests.helpers import chip_named, count, outcomes

OTHER_SECRET = "another-secret-00000000000000000000"
CONNECTING = load_json(SAMPLES / "v2-webhook-connection-update-connecting.json")


def _client(app: object, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://receiver.test", headers=headers)


def _jwt(secret: str, *, age: int = 0) -> str:
    now = int(time.time()) - age
    claims = {"iat": now, "exp": now + 600, "app": "evolution", "action": "webhook"}
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/webhooks/evolution", {"x-evochips-token": SECRET}, 200),
        ("/webhooks/evolution", {"x-evochips-token": "wrong-secret-0000000000000000000000"}, 401),
        ("/webhooks/evolution", {}, 401),
        ("/webhooks/evolution", {"authorization": f"Bearer {_jwt(SECRET)}"}, 200),
        (
            "/webhooks/evolution",
            {"authorization": f"Bearer {_jwt('another-secret-00000000000000000000')}"},
            401,
        ),
        ("/webhooks/evolution", {"authorization": f"Bearer {_jwt(SECRET, age=3600)}"}, 401),
        ("/webhooks/evolution", {"authorization": "Bearer not-a-jwt"}, 401),
        (f"/webhooks/evolution/k/{SECRET}", {}, 200),
        (f"/webhooks/evolution/k/{SECRET}/connection-update", {}, 200),
        ("/webhooks/evolution/k/wrong-secret-0000000000000000000000", {}, 401),
        ("/webhooks/evolution/k/wrong-secret-0000000000000000000000/connection-update", {}, 401),
        ("/webhooks/evolution/connection-update", {"x-evochips-token": SECRET}, 200),
        ("/webhooks/evolution/connection-update", {}, 401),
    ],
)
async def test_webhook_authentication(
    db: Database, path: str, headers: dict[str, str], status: int
) -> None:
    await given_chip(db, "chip-0001")
    async with _client(create_app(db, SECRET), headers) as client:
        response = await client.post(path, json=CONNECTING)
    assert response.status_code == status
    assert await count(db, WebhookEventRow) == (1 if status == 200 else 0)


async def test_jwt_without_expiry_is_refused(db: Database) -> None:
    token = jwt.encode({"iat": int(time.time())}, SECRET, algorithm="HS256")
    async with _client(create_app(db, SECRET), {"authorization": f"Bearer {token}"}) as client:
        response = await client.post("/webhooks/evolution", json=CONNECTING)
    assert response.status_code == 401


async def test_malformed_json_is_400(db: Database, receiver: httpx.AsyncClient) -> None:
    response = await receiver.post(
        "/webhooks/evolution", content=b'{"event":"connection.update","instance":"chip-0001",'
    )
    assert response.status_code == 400
    assert response.json() == {"error": "body is not JSON"}


async def test_unknown_instance_is_202_and_kept(db: Database, receiver: httpx.AsyncClient) -> None:
    response = await receiver.post("/webhooks/evolution", json=CONNECTING)
    assert response.status_code == 202
    assert response.json()["outcome"] == "unmatched"
    assert await outcomes(db) == ["unmatched"]


async def test_unhandled_event_is_200_and_ignored(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    body = {"event": "messages.upsert", "instance": "chip-0001", "data": {"key": {"id": "X"}}}
    response = await receiver.post("/webhooks/evolution/messages-upsert", json=body)
    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"


async def test_body_over_the_limit_is_413(db: Database) -> None:
    async with _client(
        create_app(db, SECRET, max_body_bytes=1024), {"x-evochips-token": SECRET}
    ) as c:
        response = await c.post("/webhooks/evolution", content=b"{" + b" " * 2048 + b"}")
    assert response.status_code == 413
    assert await count(db, WebhookEventRow) == 0


async def test_database_down_is_503_with_retry_after(tmp_path: Path) -> None:
    # A directory where the database file should be: SQLite cannot open it.
    down = Database(f"sqlite+aiosqlite:///{tmp_path}")
    async with _client(create_app(down, SECRET), {"x-evochips-token": SECRET}) as client:
        response = await client.post("/webhooks/evolution", json=CONNECTING)
        ready = await client.get("/readyz")
    await down.dispose()
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert "Traceback" not in response.text
    assert ready.status_code == 503


async def test_postgres_unreachable_is_503() -> None:
    down = Database("postgresql+asyncpg://nobody@127.0.0.1:1/nothing")
    async with _client(create_app(down, SECRET), {"x-evochips-token": SECRET}) as client:
        response = await client.post("/webhooks/evolution", json=CONNECTING)
    await down.dispose()
    assert response.status_code == 503
    assert response.json() == {"error": "database unavailable, retry later"}


async def test_health_and_readiness(db: Database, receiver: httpx.AsyncClient) -> None:
    assert (await receiver.get("/healthz")).json() == {"status": "ok"}
    ready = await receiver.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


async def test_readiness_reports_missing_schema(tmp_path: Path) -> None:
    empty = Database(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    async with _client(create_app(empty, SECRET)) as client:
        ready = await client.get("/readyz")
    await empty.dispose()
    assert ready.status_code == 503


async def test_a_file_that_is_not_a_database_is_503_for_readiness_and_webhooks(
    tmp_path: Path,
) -> None:
    (tmp_path / "evochips.db").write_text("not a database\n")
    broken = Database(f"sqlite+aiosqlite:///{tmp_path / 'evochips.db'}")
    async with _client(create_app(broken, SECRET), {"x-evochips-token": SECRET}) as client:
        ready = await client.get("/readyz")
        webhook = await client.post("/webhooks/evolution", json=CONNECTING)
    await broken.dispose()
    assert ready.status_code == 503
    assert webhook.status_code == 503 and webhook.headers["retry-after"]


async def test_a_webhook_before_the_chip_is_paired_finds_it(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    await given_chip(db, "chip-0001")
    response = await receiver.post("/webhooks/evolution", json=CONNECTING)
    assert response.status_code == 200
    chip = await chip_named(db, "chip-0001")
    assert chip.connection_state == "connecting"


async def test_stored_body_has_no_secrets(db: Database, receiver: httpx.AsyncClient) -> None:
    body = load_json(SAMPLES / "v2-webhook-qrcode-updated-pairing-code.json")
    await given_chip(db, "chip-0002")
    await receiver.post("/webhooks/evolution", json=body)

    async with db.read() as session:
        stored = (await session.get(WebhookEventRow, 1)) or None
    assert stored is not None and stored.body is not None
    text = str(stored.body)
    secrets = [body["data"]["qrcode"]["code"], "K7QM4XZ2", body["data"]["qrcode"]["base64"]]
    for secret in secrets:
        assert secret not in text
    assert stored.body["instance"] == "chip-0002"
