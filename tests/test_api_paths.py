"""One path for every door: the HTTP API, the CLI and ``InstanceManager`` make the same
transitions for the same commands, and a command racing webhooks on one chip still leaves
a history in which every row starts where the one before ended."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from evochips.api.routes import api_routes
from evochips.db import Database
from evochips.evolution.client import EvolutionClient
from evochips.evolution.shapes import WebhookTarget
from evochips.manager import InstanceManager
from evochips.receiver import create_app
from tests.conftest import AUTH, SAMPLES, SECRET, load_json
from tests.fake_evolution import GLOBAL_KEY, FakeEvolution
from tests.helpers import assert_history_consistent, chip_named, transitions
from tests.servers import evochips, free_port, serving_app

KEY = "api-key-0123456789abcdefghij"
HOOK = WebhookTarget("http://evochips.test/webhooks/evolution", {"x-evochips-token": SECRET})
Step = Callable[[str], Awaitable[None]]


def _api(db: Database, manager: InstanceManager) -> httpx.AsyncClient:
    app = create_app(db, SECRET, api=api_routes(db, manager, (KEY,)))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                             headers={"authorization": f"Bearer {KEY}"})  # fmt: skip


async def _history(db: Database, name: str) -> list[tuple[Any, ...]]:
    chip = await chip_named(db, name)
    await assert_history_consistent(db, chip.id)
    return [
        (row.trigger, row.source, row.from_status, row.to_status, row.from_connection,
         row.to_connection)
        for row in await transitions(db, chip.id)
    ]  # fmt: skip


async def test_the_api_the_cli_and_the_manager_make_the_same_transitions(
    db: Database, database_url: str
) -> None:
    fake = FakeEvolution()
    port = free_port()
    with serving_app(fake.asgi(), port):
        url = f"http://127.0.0.1:{port}"
        client = EvolutionClient(url, GLOBAL_KEY)
        manager = InstanceManager(db, client, HOOK)
        env = {
            "EVOCHIPS_DATABASE_URL": database_url,
            "EVOLUTION_API_URL": url,
            "EVOLUTION_API_KEY": GLOBAL_KEY,
            "EVOCHIPS_PUBLIC_URL": "http://evochips.test",
            "EVOCHIPS_WEBHOOK_SECRET": SECRET,
        }

        async def by_manager(name: str, command: str) -> None:
            calls = {
                "create": lambda: manager.criar_instancia(name, "5511900000001"),
                "check": lambda: manager.verificar_conexao(name),
                "promote": lambda: manager.transicionar(name, "promote"),
                "activate": lambda: manager.transicionar(name, "activate"),
                "logout": lambda: manager.desconectar_instancia(name, None),
                "reconnect": lambda: manager.reconectar_instancia(name, None),
                "delete": lambda: manager.deletar_instancia(name, None),
            }
            assert (await calls[command]())["sucesso"], command

        async with _api(db, manager) as api:

            async def by_api(name: str, command: str) -> None:
                base = f"/api/v1/chips/{name}"
                requests = {
                    "create": ("POST", "/api/v1/chips",
                               {"instance_name": name, "telefone": "5511900000001"}),
                    "check": ("POST", f"{base}/connection-check", None),
                    "promote": ("POST", f"{base}/transitions", {"trigger": "promote"}),
                    "activate": ("POST", f"{base}/transitions", {"trigger": "activate"}),
                    "logout": ("POST", f"{base}/logout", None),
                    "reconnect": ("POST", f"{base}/reconnect", None),
                    "delete": ("DELETE", base, None),
                }  # fmt: skip
                method, path, body = requests[command]
                response = await api.request(method, path, json=body)
                assert response.status_code in (200, 201), (command, response.text)

            async def by_cli(name: str, command: str) -> None:
                args = {
                    "create": ("create", name, "5511900000001"),
                    "promote": ("transition", name, "promote"),
                    "activate": ("transition", name, "activate"),
                }.get(command, (command, name))
                done = await asyncio.to_thread(evochips, "chips", *args, "--json", env=env)
                assert done.returncode == 0, (command, done.stdout, done.stderr)

            doors = {"manager": by_manager, "api": by_api, "cli": by_cli}
            for door, run in doors.items():
                name = f"chip-{door}"
                for command in ("create", "scan", "check", "promote", "activate", "logout",
                                "reconnect", "delete"):  # fmt: skip
                    if command == "scan":
                        fake.scan(name)
                    else:
                        await run(name, command)
        await client.aclose()

    histories = {door: await _history(db, f"chip-{door}") for door in doors}
    assert histories["api"] == histories["manager"] == histories["cli"]
    assert [row[3] for row in histories["api"]][-1] == "deleted"


def _webhook(name: str, state: str, reason: int, second: int) -> dict[str, Any]:
    body = load_json(SAMPLES / "v2-webhook-connection-update-open.json")
    body["instance"] = name
    body["data"] = {**body["data"], "instance": name, "state": state, "statusReason": reason}
    body["date_time"] = f"2025-10-21T12:{second // 60:02d}:{second % 60:02d}.000Z"
    return body


async def test_commands_racing_webhooks_leave_a_contiguous_history(db: Database) -> None:
    fake = FakeEvolution()
    client = EvolutionClient("http://evolution.test", GLOBAL_KEY, transport=fake.transport())
    manager = InstanceManager(db, client, HOOK)
    rng = random.Random(20261203)
    async with _api(db, manager) as api:
        body = {"instance_name": "chip-1", "telefone": "5511900000001"}
        created = await api.post("/api/v1/chips", json=body)
        assert created.status_code == 201
        fake.scan("chip-1")
        seconds = itertools.count(1)
        states = [("open", 200), ("connecting", 200), ("close", 428), ("open", 200)]
        moves: list[Awaitable[httpx.Response]] = []
        for _ in range(40):
            kind = rng.choice(["webhook", "webhook", "trigger", "check"])
            if kind == "webhook":
                state, reason = rng.choice(states)
                hook = _webhook("chip-1", state, reason, next(seconds))
                moves.append(api.post("/webhooks/evolution", json=hook, headers=AUTH))
            elif kind == "trigger":
                trigger = rng.choice(["promote", "activate", "degrade", "restore"])
                moves.append(
                    api.post("/api/v1/chips/chip-1/transitions", json={"trigger": trigger})
                )
            else:
                moves.append(api.post("/api/v1/chips/chip-1/connection-check"))
        rng.shuffle(moves)
        answers = await asyncio.gather(*moves)
    await client.aclose()

    assert {answer.status_code for answer in answers} <= {200, 409}
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["error"]["code"] == "invalid_transition"
    chip = await chip_named(db, "chip-1")
    await assert_history_consistent(db, chip.id)
    # How far the race gets depends on which moves come first; whatever the order, the
    # webhooks moved the chip past what its create left (registered, then the first QR).
    rows = await transitions(db, chip.id)
    assert "webhook" in {row.source for row in rows[2:]}, rows
