"""Receivers in several processes on one database keep the guarantees of one process: one
effect per event, one linear history per chip, no row for a storm of repeats.

Two layouts are tested: two ``evochips serve`` processes on two ports, as two replicas
behind a load balancer, with deliveries alternating between them; and one
``evochips serve --workers 2``, with each delivery traced to the worker that served it.
"""

from __future__ import annotations

import asyncio
import random
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from evochips.db import Base, Chip, Database, WebhookEventRow
from tests.chips import given_chip
from tests.conftest import AUTH, SAMPLES, load_json
from tests.helpers import (
    assert_history_consistent,
    chip_named,
    copies,
    outcomes,
    transitions,
)
from tests.servers import (
    PROC_TCP,
    Server,
    connection_owners,
    free_port,
    receiver_env,
    serving_evochips,
    serving_many,
    workers_of,
)

WEBHOOK = "/webhooks/evolution"
OPEN = load_json(SAMPLES / "v2-webhook-connection-update-open.json")  # chip-0001, 12:04:45
# Every state connection.update carries, so that concurrent events disagree.
CYCLE = [("connecting", 200), ("open", 200), ("close", 428), ("close", 401), ("refused", 428)]


def _env(database_url: str, port: int) -> dict[str, str]:
    # No reconciliation pass: these receivers have no Evolution to compare with.
    return {**receiver_env(database_url, port), "EVOCHIPS_RECONCILE_INTERVAL": "0"}


def _event(instance: str, state: str, reason: int, date_time: str) -> dict[str, Any]:
    return {
        "event": "connection.update",
        "instance": instance,
        "data": {"instance": instance, "state": state, "statusReason": reason},
        "destination": "http://evochips.test/webhooks/evolution",
        "date_time": date_time,
        "server_url": "http://evolution.test",
        "apikey": None,
    }


def _different_events(instance: str, count: int) -> list[dict[str, Any]]:
    """``count`` events for one chip, one a second, each a state of CYCLE in turn."""
    return [
        _event(instance, *CYCLE[i % len(CYCLE)], date_time=f"2025-10-21T12:00:{i:02d}.000Z")
        for i in range(count)
    ]


# -- two replicas ----------------------------------------------------------------------


@dataclass
class Replicas:
    """Two ``evochips serve`` processes on one database, one client per replica."""

    db: Database
    servers: tuple[Server, ...]
    clients: list[httpx.AsyncClient]
    marks: list[int]  # how much each replica had printed when the test began

    async def post(self, turn: int, body: dict[str, Any]) -> httpx.Response:
        """Deliver ``body`` to replica ``turn`` modulo two: round-robin, as a balancer."""
        return await self.clients[turn % len(self.clients)].post(WEBHOOK, json=body)

    def logged(self, fact: str) -> list[int]:
        """How many lines holding ``fact`` each replica has logged during the test: each
        logs a delivery it recorded once its transaction has committed."""
        outputs = [
            server.output()[mark:] for server, mark in zip(self.servers, self.marks, strict=True)
        ]
        return [sum(fact in line for line in output.splitlines()) for output in outputs]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """One migrated database for the module's replicas (SQLite: a file both processes
    open, where every write transaction starts with BEGIN IMMEDIATE)."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("replicas") / "evochips.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="module")
def replica_servers(shared_database: str) -> Iterator[tuple[tuple[Server, ...], list[int]]]:
    """Started once per backend, since booting a process is most of a test's time."""
    ports = [free_port(), free_port()]
    commands = [(port, _env(shared_database, port), ()) for port in ports]
    with serving_many(commands) as servers:
        yield servers, ports


@pytest.fixture
async def replicas(
    shared_database: str, replica_servers: tuple[tuple[Server, ...], list[int]]
) -> AsyncIterator[Replicas]:
    servers, ports = replica_servers
    assert len({server.pid for server in servers}) == 2
    db = Database(shared_database)
    await _empty(db)
    clients = [
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30)
        for port in ports
    ]
    marks = [len(server.output()) for server in servers]
    try:
        yield Replicas(db, servers, clients, marks)
    finally:
        for client in clients:
            await client.aclose()
        await db.dispose()
    for server in servers:
        assert server.process.poll() is None, server.output()[-3000:]


async def _empty(db: Database) -> None:
    async with db.write() as session:
        for table in reversed(Base.metadata.sorted_tables):
            await session.execute(table.delete())


RECORDED = "webhook CONNECTION_UPDATE for 'chip-0001': "


async def test_two_replicas_make_one_transition_of_50_concurrent_and_1000_sequential_copies(
    replicas: Replicas,
) -> None:
    chip = await given_chip(replicas.db, "chip-0001", "pending", "connecting")
    rows_before = len(await transitions(replicas.db, chip.id))

    burst = await asyncio.gather(*(replicas.post(i, OPEN) for i in range(50)))

    assert [r.status_code for r in burst] == [200] * 50, {r.status_code for r in burst}
    assert sorted(r.json()["outcome"] for r in burst) == ["applied"] + ["duplicate"] * 49
    assert replicas.logged(RECORDED) == [25, 25]
    assert len(await transitions(replicas.db, chip.id)) == rows_before + 1
    # Each copy is counted on the first delivery's row, whichever process received it.
    assert (await outcomes(replicas.db), await copies(replicas.db)) == (["applied"], [49])

    replays = [await replicas.post(i, OPEN) for i in range(1000)]  # Evolution retrying

    assert {(r.status_code, r.json()["outcome"]) for r in replays} == {(200, "duplicate")}
    assert replicas.logged(RECORDED) == [525, 525]
    assert len(await transitions(replicas.db, chip.id)) == rows_before + 1
    assert (await outcomes(replicas.db), await copies(replicas.db)) == (["applied"], [1049])
    assert (await chip_named(replicas.db, "chip-0001")).status == "warming"
    await assert_history_consistent(replicas.db, chip.id)


async def test_two_replicas_keep_one_linear_history_of_50_concurrent_different_events(
    replicas: Replicas,
) -> None:
    chip = await given_chip(replicas.db, "chip-0001", "warming", "open")
    in_order = await given_chip(replicas.db, "chip-0002", "warming", "open")
    events = _different_events("chip-0001", 50)
    shuffled = random.Random(7).sample(events, len(events))

    answers = await asyncio.gather(*(replicas.post(i, e) for i, e in enumerate(shuffled)))

    assert [r.status_code for r in answers] == [200] * 50, {r.status_code for r in answers}
    assert all(replicas.logged(RECORDED)), "each replica recorded some of the burst"
    assert {r.json()["outcome"] for r in answers} <= {"applied", "stale"}
    assert len(await transitions(replicas.db, chip.id)) > 2  # open->connecting at least
    await assert_history_consistent(replicas.db, chip.id)
    # Whatever the arrival order, the chip ends where in-order delivery leaves a twin.
    for turn, event in enumerate(_different_events("chip-0002", 50)):
        assert (await replicas.post(turn, event)).status_code == 200
    await assert_history_consistent(replicas.db, in_order.id)
    raced, ordered = await _chip(replicas.db, chip.id), await _chip(replicas.db, in_order.id)
    assert _state(raced) == _state(ordered)


async def test_two_replicas_record_a_reconnect_storm_as_one_transition(
    replicas: Replicas,
) -> None:
    """Offline, Evolution sends ``connecting`` several times a second; each replica in turn
    gets the next one, by date_time."""
    chip = await given_chip(replicas.db, "chip-0001", "pending", "close")
    storm = [
        _event("chip-0001", "connecting", 200, f"2025-10-21T12:{i // 600:02d}:"
               f"{i // 10 % 60:02d}.{i % 10}00Z")
        for i in range(200)
    ]  # fmt: skip

    answers = [await replicas.post(turn, event) for turn, event in enumerate(storm)]

    assert {(r.status_code, r.json()["outcome"]) for r in answers} == {(200, "applied")}
    history = await transitions(replicas.db, chip.id)
    assert [row.trigger for row in history] == ["registered", "connecting"]
    async with replicas.db.read() as session:
        rows = (await session.scalars(select(WebhookEventRow).order_by(WebhookEventRow.id))).all()
    # The first delivery moved the chip; the second changed nothing and counts the rest.
    assert [(row.outcome, row.repeats) for row in rows] == [("applied", 1), ("applied", 199)]
    await assert_history_consistent(replicas.db, chip.id)


async def _chip(db: Database, chip_id: str) -> Chip:
    async with db.read() as session:
        chip = await session.get(Chip, chip_id)
    assert chip is not None
    return chip


def _state(chip: Chip) -> tuple[str, str, int | None]:
    return chip.status, chip.connection_state, chip.status_reason


# -- serve --workers 2 -------------------------------------------------------------------


@pytest.mark.skipif(not PROC_TCP.exists(), reason="tells workers apart through Linux's /proc")
async def test_serve_with_two_workers_spreads_deliveries_and_keeps_one_effect(
    database_url: str,
) -> None:
    port = free_port()
    db = Database(database_url)
    chip = await given_chip(db, "chip-0001", "pending", "connecting")
    different = random.Random(3).sample(_different_events("chip-0001", 20), 20)

    with serving_evochips(port, _env(database_url, port), "serve", "--port", str(port),
                          "--workers", "2") as server:  # fmt: skip
        workers = await _until_every_worker_answers(server, port, count=2)
        # One connection per delivery, opened one after another, so that the kernel hands
        # each to whichever worker is waiting (a burst of connects can all go to one).
        clients = [_client(port) for _ in range(50)]
        try:
            opened = [_client_port(await client.get("/healthz")) for client in clients]
            owners = connection_owners(port, workers)
            same = await asyncio.gather(*(c.post(WEBHOOK, json=OPEN) for c in clients))
            came_over = [_client_port(response) for response in same]
            rows_after_same = len(await transitions(db, chip.id))
            stored_after_same = (await outcomes(db), await copies(db))
            mixed = await asyncio.gather(
                *(clients[i].post(WEBHOOK, json=event) for i, event in enumerate(different))
            )
        finally:
            for client in clients:
                await client.aclose()

    try:
        assert came_over == opened, "a delivery went over another connection than traced"
        by_worker = Counter(owners.get(client_port) for client_port in opened)
        assert set(by_worker) == set(workers), f"deliveries per worker: {dict(by_worker)}"
        assert {r.status_code for r in same} == {200}
        assert sorted(r.json()["outcome"] for r in same) == ["applied"] + ["duplicate"] * 49
        assert rows_after_same == 3  # registered, connecting, and one connected
        assert stored_after_same == (["applied"], [49])
        assert {r.status_code for r in mixed} == {200}
        await assert_history_consistent(db, chip.id)
    finally:
        await db.dispose()


def _client(port: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=1)
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=AUTH, limits=limits, timeout=30
    )


def _client_port(response: httpx.Response) -> int:
    """The local port of the connection ``response`` came over (while it is open)."""
    _, port = response.extensions["network_stream"].get_extra_info("client_addr")
    return int(port)


async def _until_every_worker_answers(server: Server, port: int, count: int) -> list[int]:
    """The workers' pids, once each has served a request (they boot one by one)."""
    workers: list[int] = []
    seen: set[int | None] = set()
    for _ in range(200):
        workers = workers_of(server, port)
        if len(workers) == count:
            async with _client(port) as client:
                client_port = _client_port(await client.get("/healthz"))
                seen.add(connection_owners(port, workers).get(client_port))
            if seen >= set(workers):
                return workers
        await asyncio.sleep(0.05)
    raise AssertionError(f"workers {workers} listen; only {sorted(map(str, seen))} answered")
