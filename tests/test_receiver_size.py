"""Body sizes: an event evochips does not handle passes whatever its size, unparsed and
unkept; a handled one beyond the limit is refused before it is read whole."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from evochips.db import Database, WebhookEventRow
from evochips.receiver import create_app
from tests.chips import given_chip
from tests.conftest import AUTH, SAMPLES, SECRET, load_json
from tests.helpers import count, outcomes
from tests.servers import free_port, receiver_env, serving_evochips

MIB = 1024 * 1024


def _message(size: int) -> bytes:
    """A messages.upsert delivery, ``event`` first as Evolution sends it, padded to size."""
    head = b'{"event":"messages.upsert","instance":"chip-0001","data":{"pad":"'
    tail = b'"},"date_time":"2025-10-21T12:00:00.000Z"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def _chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _client(db: Database, limit: int = MIB) -> httpx.AsyncClient:
    app = create_app(db, SECRET, max_body_bytes=limit)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r.test",
                             headers=AUTH)  # fmt: skip


async def test_a_large_unhandled_event_is_acknowledged_unparsed(db: Database) -> None:
    body = _message(20 * MIB)
    async with _client(db) as client:
        response = await client.post("/webhooks/evolution", content=_chunks(body))
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert response.json()["event"] == "MESSAGES_UPSERT"
    assert await count(db, WebhookEventRow) == 0, "not evochips' business: not stored"


async def test_unhandled_events_are_answered_even_with_the_database_down(tmp_path: Path) -> None:
    down = Database(f"sqlite+aiosqlite:///{tmp_path}/missing/evochips.db")
    async with _client(down) as client:
        response = await client.post("/webhooks/evolution", content=_chunks(_message(3 * MIB)))
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    await down.dispose()


async def test_a_handled_event_over_the_limit_is_413(db: Database) -> None:
    opened = load_json(SAMPLES / "v2-webhook-connection-update-open.json")
    body = json.dumps({**opened, "data": {**opened["data"], "pad": "x" * (2 * MIB)}}).encode()
    await given_chip(db, "chip-0001", "pending", "connecting")
    async with _client(db) as client:
        response = await client.post("/webhooks/evolution", content=_chunks(body))
    assert response.status_code == 413
    assert await count(db, WebhookEventRow) == 0


async def test_a_body_naming_no_event_first_is_read_under_the_limit(db: Database) -> None:
    body = b'{"instance":"chip-0001","event":"messages.upsert","data":"' + b"x" * (2 * MIB) + b'"}'
    async with _client(db) as client:
        response = await client.post("/webhooks/evolution", content=_chunks(body))
    assert response.status_code == 413, "without the event first, the body may matter"


async def test_a_small_unhandled_event_is_acknowledged_and_not_stored(db: Database) -> None:
    async with _client(db) as client:
        response = await client.post("/webhooks/evolution/messages-upsert", content=_message(900))
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert await outcomes(db) == []


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_50_mb_delivery_does_not_grow_the_server_by_50_mb(database_url: str) -> None:
    port = free_port()
    env = receiver_env(database_url, port)
    with serving_evochips(port, env) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as client:
            await client.post("/webhooks/evolution", content=_message(1024))  # warm up
            before = _rss_kib(server.pid)
            response = await client.post(
                "/webhooks/evolution", content=_chunks(_message(50 * MIB)), timeout=60
            )
            after = _rss_kib(server.pid)
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert after - before < 10 * 1024, f"RSS grew by {(after - before) // 1024} MiB"
