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


def _padded_open(size: int) -> bytes:
    opened = load_json(SAMPLES / "v2-webhook-connection-update-open.json")
    return json.dumps({**opened, "data": {**opened["data"], "pad": "x" * size}}).encode()


async def test_a_handled_event_over_the_limit_is_413_before_it_is_read_whole(
    db: Database,
) -> None:
    body = _padded_open(8 * MIB)
    sent = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal sent
        async for chunk in _chunks(body):
            sent += len(chunk)
            yield chunk

    await given_chip(db, "chip-0001", "pending", "connecting")
    async with _client(db) as client:
        response = await client.post("/webhooks/evolution", content=counted())
    assert response.status_code == 413
    assert sent < 2 * MIB, f"read {sent} bytes of {len(body)} before refusing"
    assert await count(db, WebhookEventRow) == 0


async def test_an_unhandled_event_named_by_the_url_passes_whatever_its_body(
    db: Database,
) -> None:
    """With "webhook by events", the URL names the event, so the body need not."""
    body = b'{"instance":"chip-0001","data":{"pad":"' + b"x" * (3 * MIB) + b'"},'
    body += b'"event":"messages.upsert"}'
    async with _client(db) as client:
        response = await client.post("/webhooks/evolution/messages-upsert", content=_chunks(body))
        cut = await client.post("/webhooks/evolution/chats-update", content=b"{not json")
    assert response.status_code == 200 and response.json()["event"] == "MESSAGES_UPSERT"
    assert cut.status_code == 200, "not parsed, so not refused as malformed either"
    assert await count(db, WebhookEventRow) == 0


async def test_a_suffix_that_names_no_evolution_event_decides_nothing(db: Database) -> None:
    await given_chip(db, "chip-0001", "pending", "connecting")
    async with _client(db) as client:
        response = await client.post("/webhooks/evolution/tenant-a", content=_padded_open(10))
        too_big = await client.post("/webhooks/evolution/tenant-a", content=_padded_open(2 * MIB))
    assert response.status_code == 200 and response.json()["outcome"] == "applied"
    assert too_big.status_code == 413


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


async def test_the_limit_is_a_setting_and_a_refused_50_mb_body_stays_unread(
    database_url: str,
) -> None:
    port = free_port()
    env = {**receiver_env(database_url, port), "EVOCHIPS_MAX_WEBHOOK_BYTES": str(64 * 1024)}
    with serving_evochips(port, env) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as client:
            small = await client.post("/webhooks/evolution", content=_padded_open(32 * 1024))
            over = await client.post("/webhooks/evolution", content=_padded_open(80 * 1024))
            before = _rss_kib(server.pid)
            try:
                huge = await client.post(
                    "/webhooks/evolution", content=_chunks(_padded_open(50 * MIB)), timeout=60
                )
                status = huge.status_code
            except httpx.TransportError:
                status = 0  # the server answered and closed while the rest was being sent
            after = _rss_kib(server.pid)
    assert small.status_code in (200, 202) and over.status_code == 413
    assert status in (413, 0)
    assert after - before < 10 * 1024, f"RSS grew by {(after - before) // 1024} MiB"
