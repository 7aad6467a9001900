"""Two worker processes sharing one database, as two replicas behind a load balancer:
the same guarantees as one process."""

from __future__ import annotations

import asyncio
import random

import httpx

from evochips.db import Database
from tests.chips import given_chip
from tests.conftest import AUTH, SAMPLES, load_json
from tests.helpers import assert_history_consistent, outcomes, transitions
from tests.servers import free_port, receiver_env, serving_evochips


def _event(state: str, reason: int, second: int) -> dict[str, object]:
    return {
        "event": "connection.update",
        "instance": "chip-0001",
        "data": {"instance": "chip-0001", "state": state, "statusReason": reason},
        "date_time": f"2025-10-21T12:00:{second:02d}.000Z",
        "apikey": None,
    }


async def test_two_workers_keep_one_effect_and_one_history(database_url: str) -> None:
    port = free_port()
    env = receiver_env(database_url, port)
    db = Database(database_url)
    chip = await given_chip(db, "chip-0001", "pending", "connecting")
    opened = load_json(SAMPLES / "v2-webhook-connection-update-open.json")
    cycle = [("connecting", 200), ("open", 200), ("close", 428), ("close", 401)]
    different = [_event(*cycle[i % 4], second=i) for i in range(20)]
    random.Random(3).shuffle(different)

    with serving_evochips(port, env, "serve", "--port", str(port), "--workers", "2"):
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH,
                                     limits=limits, timeout=30) as client:  # fmt: skip
            same = await asyncio.gather(
                *(client.post("/webhooks/evolution", json=opened) for _ in range(50))
            )
            rows_after_same = len(await transitions(db, chip.id))
            outcomes_after_same = sorted(await outcomes(db))
            mixed = await asyncio.gather(
                *(client.post("/webhooks/evolution", json=event) for event in different)
            )

    try:
        assert {r.status_code for r in same} == {200}
        assert rows_after_same == 3  # registered, connecting, and one connected
        assert outcomes_after_same == ["applied"] + ["duplicate"] * 49
        assert {r.status_code for r in mixed} == {200}
        await assert_history_consistent(db, chip.id)
    finally:
        await db.dispose()
