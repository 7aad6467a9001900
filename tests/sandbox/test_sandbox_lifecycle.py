"""The whole life of a chip over real HTTP: ``evochips serve`` and the Evolution API
sandbox each in their own process on loopback, InstanceManager driving, the sandbox's
control routes playing the phone. No mocks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from evochips import settings
from evochips.db import Chip, Database
from evochips.manager import InstanceManager, evolution_from_settings
from evochips.reconcile import Reconciler, ReconcileSettings
from tests.chips import given_chip
from tests.conftest import SECRET
from tests.helpers import assert_history_consistent, chip_named, steps, transitions
from tests.servers import free_port, serving_evochips

TIME_SCALE = "0.02"  # create waits 0.1 s instead of 5 s; a QR lives 0.9 s instead of 45 s


@dataclass
class Loop:
    manager: InstanceManager
    db: Database
    phone: httpx.AsyncClient  # the sandbox's control routes
    evolution_url: str
    config: settings.Settings

    async def until(self, name: str, check: Callable[[Chip], bool], seconds: float = 30) -> Chip:
        """Wait for the chip to reach a state webhooks bring it to."""
        deadline = time.monotonic() + seconds
        while True:
            chip = await chip_named(self.db, name)
            if check(chip):
                return chip
            if time.monotonic() > deadline:
                raise AssertionError(f"chip stuck at {chip.status}/{chip.connection_state}")
            await asyncio.sleep(0.05)

    async def play(self, name: str, action: str) -> None:
        response = await self.phone.post(f"/_sandbox/instances/{name}/{action}")
        assert response.status_code == 200, response.text

    async def nothing_lost(self) -> None:
        """Every webhook the sandbox sent was finally accepted by the receiver."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            sent = (await self.phone.get("/_sandbox/deliveries")).json()
            if sent and all(d["delivered"] for d in sent):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"undelivered webhooks: {[d for d in sent if not d['delivered']]}")

    async def settled(self, name: str, state: str, seconds: float = 30) -> None:
        """Wait until the sandbox's instance is in ``state`` (an episode has played out)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            shown = (await self.phone.get("/_sandbox/instances")).json()
            if any(i["instance"] == name and i["state"] == state for i in shown):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"sandbox instance {name} never reached {state}")


def _state(status: str, connection: str) -> Callable[[Chip], bool]:
    return lambda chip: (chip.status, chip.connection_state) == (status, connection)


def _has_qr(chip: Chip) -> bool:
    return chip.evolution_qr_code is not None


async def _loop(database_url: str, version: int) -> AsyncIterator[Loop]:
    evolution_port, receiver_port = free_port(), free_port()
    env = {
        "EVOLUTION_API_URL": f"http://127.0.0.1:{evolution_port}",
        "EVOLUTION_API_KEY": "sandbox-test-key",
        "EVOCHIPS_DATABASE_URL": database_url,
        "EVOCHIPS_PUBLIC_URL": f"http://127.0.0.1:{receiver_port}",
        "EVOCHIPS_WEBHOOK_SECRET": SECRET,
    }
    sandbox_args = ("sandbox", "--port", str(evolution_port), "--version", str(version),
                    "--key", "sandbox-test-key", "--time-scale", TIME_SCALE)  # fmt: skip
    with (
        serving_evochips(evolution_port, env, *sandbox_args, ready="/"),
        serving_evochips(receiver_port, env),
    ):
        config = settings.load(env)
        db = Database(database_url)
        manager = InstanceManager.from_settings(config, db)
        async with httpx.AsyncClient(base_url=env["EVOLUTION_API_URL"]) as phone:
            try:
                yield Loop(manager, db, phone, env["EVOLUTION_API_URL"], config)
            finally:
                await manager.aclose()
                await db.dispose()


@pytest.fixture
async def loop_v2(database_url: str) -> AsyncIterator[Loop]:
    async for loop in _loop(database_url, 2):
        yield loop


@pytest.fixture
async def loop_v1(database_url: str) -> AsyncIterator[Loop]:
    async for loop in _loop(database_url, 1):
        yield loop


async def _whole_life(loop: Loop) -> list[str]:
    manager, name = loop.manager, "loja-01"
    created = await manager.criar_instancia(name, "+55 11 90000-0001")
    assert created["sucesso"] is True, created
    first_qr = (await loop.until(name, _has_qr)).evolution_qr_code

    await loop.play(name, "scan")
    await loop.until(name, _state("warming", "open"))
    for trigger in ("promote", "activate"):
        assert (await manager.transicionar(name, trigger))["sucesso"] is True
    await loop.play(name, "drop")  # the connection drops and comes back: status kept
    await loop.settled(name, "open")
    await loop.until(name, _state("active", "open"))

    await loop.play(name, "logout")  # from the phone
    await loop.until(name, _state("pending", "close"))
    reconnected = await manager.reconectar_instancia(name, created["chip_id"])
    assert reconnected["sucesso"] is True, reconnected
    chip = await loop.until(name, lambda c: _has_qr(c) and c.evolution_qr_code != first_qr)
    assert chip.connection_state == "connecting"

    await loop.play(name, "scan")
    await loop.until(name, _state("warming", "open"))
    await loop.play(name, "ban")
    await loop.until(name, lambda c: c.status == "banned")
    deleted = await manager.deletar_instancia(name, created["chip_id"])
    assert deleted["sucesso"] is True, deleted
    chip = await loop.until(name, lambda c: c.status == "deleted")
    await assert_history_consistent(loop.db, chip.id)
    return [step.split(":")[1] for step in await steps(loop.db, name)]


LIFE = [
    "-->pending", "pending->warming", "warming->ready", "ready->active",
    "active->pending", "pending->warming", "warming->banned", "banned->deleted",
]  # fmt: skip
# v2 ends a banned session with status.instance (403), logout.instance and a close (403),
# sent without waiting for each other; when logout.instance overtakes the other two, the
# chip is first logged out, then banned.
LIFE_LOGOUT_FIRST = [*LIFE[:6], "warming->pending", "pending->banned", LIFE[7]]


async def test_whole_life_of_a_chip_on_v2(loop_v2: Loop) -> None:
    statuses = await _whole_life(loop_v2)
    assert _compress(statuses) in (LIFE, LIFE_LOGOUT_FIRST)


async def test_whole_life_of_a_chip_on_v1(loop_v1: Loop) -> None:
    statuses = await _whole_life(loop_v1)
    assert _compress(statuses) == LIFE


def _compress(statuses: list[str]) -> list[str]:
    """Status changes only: rows where the connection moved but the status stayed go."""
    return [s for s in statuses if s.split("->")[0] != s.split("->")[1]]


async def test_qr_limit_while_nobody_scans(loop_v2: Loop) -> None:
    created = await loop_v2.manager.criar_instancia("loja-02", "5511900000002")
    assert created["sucesso"] is True
    await loop_v2.until("loja-02", _has_qr)

    await loop_v2.play("loja-02", "qr-limit")

    chip = await loop_v2.until("loja-02", lambda c: c.connection_state == "refused")
    assert chip.status == "pending" and chip.evolution_qr_code is None


async def test_duplicated_deliveries_have_one_effect(loop_v2: Loop) -> None:
    await loop_v2.phone.post("/_sandbox/faults", json={"duplicate_deliveries": 2})
    created = await loop_v2.manager.criar_instancia("loja-03", "5511900000003")
    await loop_v2.until("loja-03", _has_qr)
    await loop_v2.play("loja-03", "scan")

    chip = await loop_v2.until("loja-03", _state("warming", "open"))

    await loop_v2.nothing_lost()
    assert created["sucesso"] is True
    assert [s for s in await steps(loop_v2.db, "loja-03") if "connected" in s] == [
        "connected:pending->warming"
    ]
    await assert_history_consistent(loop_v2.db, chip.id)


async def test_webhooks_out_of_order_end_in_the_right_state(loop_v2: Loop) -> None:
    # Deliveries wait up to 400 ms each, so later events often overtake earlier ones.
    await loop_v2.phone.post("/_sandbox/faults", json={"delivery_jitter_ms": 400})
    created = await loop_v2.manager.criar_instancia("loja-06", "5511900000006")
    await loop_v2.until("loja-06", _has_qr)
    await loop_v2.play("loja-06", "scan")
    await loop_v2.settled("loja-06", "open")
    await loop_v2.play("loja-06", "drop")
    await loop_v2.settled("loja-06", "open")

    await loop_v2.nothing_lost()

    chip = await chip_named(loop_v2.db, "loja-06")
    assert created["sucesso"] is True
    assert (chip.status, chip.connection_state) == ("warming", "open")
    await assert_history_consistent(loop_v2.db, chip.id)


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ({"fail_times": 1, "fail_status": 503}, "503"),
        ({"error_in_200_times": 1}, "reported an error"),
    ],
)
async def test_evolution_failing_while_commands_run(
    loop_v2: Loop, fault: dict[str, Any], words: str
) -> None:
    created = await loop_v2.manager.criar_instancia("loja-04", "5511900000004")
    await loop_v2.until("loja-04", _has_qr)
    await loop_v2.phone.post("/_sandbox/faults", json=fault)

    result = await loop_v2.manager.desconectar_instancia("loja-04", created["chip_id"])

    assert result["sucesso"] is False and words in result["error"]
    chip = await chip_named(loop_v2.db, "loja-04")
    assert chip.status == "pending" and chip.deleted_at is None
    again = await loop_v2.manager.desconectar_instancia("loja-04", created["chip_id"])
    assert again["sucesso"] is True  # the fault is over; nothing was lost or half-done
    await loop_v2.until("loja-04", _state("pending", "close"))
    await loop_v2.nothing_lost()


async def test_evolution_hanging_ends_in_a_clear_failure(
    loop_v2: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("evochips.evolution.client.CALL_DEADLINE_SECONDS", 0.5)
    created = await loop_v2.manager.criar_instancia("loja-05", "5511900000005")
    await loop_v2.phone.post("/_sandbox/faults", json={"hang_times": 1})

    result: dict[str, Any] = await _within(5, loop_v2.manager.desconectar_instancia(
        "loja-05", created["chip_id"]))  # fmt: skip

    assert result["sucesso"] is False and "in time" in result["error"]
    assert (await chip_named(loop_v2.db, "loja-05")).status == "pending"


async def _within(seconds: float, work: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(work, seconds)


async def test_a_reconcile_pass_reads_a_v1_server(loop_v1: Loop) -> None:
    """v1 lists its instances in its own shape (``{"instance": {...}}`` items, no close
    reason): a pass over the v1 sandbox deletes the chip whose instance is gone, after
    asking for it by name, and leaves the chip whose instance is there. (v1's answer to
    a lookup by name, one object rather than a list, is read in the client's tests.)"""
    created = await loop_v1.manager.criar_instancia("loja-01", "+55 11 90000-0001")
    assert created["sucesso"] is True, created
    await loop_v1.until("loja-01", _has_qr)
    gone = await given_chip(loop_v1.db, "loja-02", "warming", "open")  # never in Evolution
    evolution, webhook = evolution_from_settings(loop_v1.config)
    reconciler = Reconciler(loop_v1.db, evolution, webhook, ReconcileSettings())
    try:
        first = await reconciler.run()
        second = await reconciler.run()
    finally:
        await evolution.aclose()

    assert [(f.kind, f.instance_name, f.action) for f in first.findings] == [
        ("instance_missing", "loja-02", "deleted")
    ]
    assert second.findings == []
    assert (await chip_named(loop_v1.db, "loja-01")).status == "pending"
    rows = await transitions(loop_v1.db, gone.id)
    assert (rows[-1].source, rows[-1].to_status) == ("reconcile", "deleted")
    await assert_history_consistent(loop_v1.db, gone.id)
