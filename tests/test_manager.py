"""InstanceManager: the original design's validation list, and the failure contract."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest

from evochips.db import Database
from evochips.evolution.client import EvolutionClient
from evochips.evolution.shapes import WebhookTarget
from evochips.manager import InstanceManager
from tests.conftest import SAMPLES, load_json
from tests.fake_evolution import GLOBAL_KEY, FakeEvolution, FakeInstance
from tests.helpers import assert_history_consistent, chip_named, outcomes, steps

HOOK = WebhookTarget("http://evochips.test/webhooks/evolution", {"x-evochips-token": "s"})


@pytest.fixture
def evolution() -> FakeEvolution:
    return FakeEvolution()


@pytest.fixture
async def manager(db: Database, evolution: FakeEvolution) -> AsyncIterator[InstanceManager]:
    client = EvolutionClient("http://evolution.test", GLOBAL_KEY, transport=evolution.transport())
    manager = InstanceManager(db, client, HOOK)
    yield manager
    await manager.aclose()


async def test_create_with_a_unique_name(
    db: Database, manager: InstanceManager, evolution: FakeEvolution
) -> None:
    result = await manager.criar_instancia("chip-0001", "+55 (11) 90000-0001")

    assert result["sucesso"] is True
    assert result["instance_name"] == "chip-0001"
    assert result["qr_code"].startswith("data:image/png;base64,")
    chip = await chip_named(db, "chip-0001")
    assert chip.id == result["chip_id"]
    assert chip.telefone == "5511900000001"
    assert (chip.status, chip.connection_state) == ("pending", "connecting")
    assert chip.evolution_instance_id == evolution.instances["chip-0001"].instance_id
    assert chip.evolution_qr_code == result["qr_code"]
    create = next(body for method, path, body in evolution.calls if path == "/instance/create")
    assert create["webhook"]["url"] == HOOK.url
    assert create["webhook"]["headers"] == HOOK.headers
    assert await steps(db, "chip-0001") == [
        "registered:-->pending", "qr_updated:pending->pending",
    ]  # fmt: skip


async def test_create_with_a_duplicate_name_fails(
    db: Database, manager: InstanceManager, evolution: FakeEvolution
) -> None:
    first = await manager.criar_instancia("chip-0001", "5511900000001")

    second = await manager.criar_instancia("chip-0001", "5511900000002")

    assert second["sucesso"] is False
    assert "already in use" in second["error"]
    assert (await chip_named(db, "chip-0001")).id == first["chip_id"]
    assert sum(path == "/instance/create" for _, path, _ in evolution.calls) == 1


async def test_create_refused_by_evolution_leaves_no_live_chip(
    db: Database, manager: InstanceManager, evolution: FakeEvolution
) -> None:
    # Another system already owns the name in Evolution; our database does not know it.
    evolution.instances["chip-0002"] = FakeInstance(name="chip-0002", token="THEIRS")

    result = await manager.criar_instancia("chip-0002", "5511900000002")

    assert result["sucesso"] is False and "already in use" in result["error"]
    chip = await chip_named(db, "chip-0002")
    assert chip.status == "deleted" and chip.deleted_at is not None
    assert await steps(db, "chip-0002") == ["registered:-->pending", "rejected:pending->deleted"]

    del evolution.instances["chip-0002"]  # once Evolution frees the name, it can be used
    retry = await manager.criar_instancia("chip-0002", "5511900000002")
    assert retry["sucesso"] is True and retry["chip_id"] != chip.id


async def test_get_the_qr_of_an_existing_instance(db: Database, manager: InstanceManager) -> None:
    created = await manager.criar_instancia("chip-0001", "5511900000001")

    result = await manager.obter_qr_code("chip-0001")

    assert result["sucesso"] is True and result["connected"] is False
    assert result["qr_code"].startswith("data:image/png;base64,")
    assert result["qr_code"] != created["qr_code"], "Evolution shows a new QR each time"
    assert result["code"].startswith("2@chip-0001-2,")
    assert (await chip_named(db, "chip-0001")).evolution_qr_code == result["qr_code"]


async def test_qr_not_ready_is_not_an_error(db: Database, evolution: FakeEvolution) -> None:
    evolution.qr_ready = False
    client = EvolutionClient("http://evolution.test", GLOBAL_KEY, transport=evolution.transport())
    manager = InstanceManager(db, client, HOOK)
    created = await manager.criar_instancia("chip-0001", "5511900000001")

    result = await manager.obter_qr_code("chip-0001")

    assert created["sucesso"] is True and created["qr_code"] is None
    assert result == {"sucesso": True, "qr_code": None, "code": None, "connected": False}


async def test_connection_check_returns_the_right_state(
    db: Database, manager: InstanceManager, evolution: FakeEvolution
) -> None:
    await manager.criar_instancia("chip-0001", "5511900000001")
    assert await manager.verificar_conexao("chip-0001") == {
        "sucesso": True, "state": "connecting", "connected": False,
    }  # fmt: skip

    evolution.scan("chip-0001")
    result = await manager.verificar_conexao("chip-0001")

    assert result == {"sucesso": True, "state": "open", "connected": True}
    chip = await chip_named(db, "chip-0001")
    assert (chip.status, chip.connection_state, chip.evolution_connected) == (
        "warming", "open", True,
    )  # fmt: skip
    history = await steps(db, "chip-0001")
    assert history[-1] == "connected:pending->warming"
    await assert_history_consistent(db, chip.id)


async def test_logout_updates_the_database(
    db: Database, manager: InstanceManager, evolution: FakeEvolution
) -> None:
    created = await manager.criar_instancia("chip-0001", "5511900000001")
    evolution.scan("chip-0001")
    await manager.verificar_conexao("chip-0001")
    await manager.transicionar("chip-0001", "promote")

    result = await manager.desconectar_instancia("chip-0001", created["chip_id"])

    assert result == {"sucesso": True, "message": "instance chip-0001 logged out"}
    chip = await chip_named(db, "chip-0001")
    assert (chip.status, chip.connection_state, chip.evolution_connected) == (
        "pending", "close", False,
    )  # fmt: skip
    assert (await steps(db, "chip-0001"))[-1] == "logged_out:ready->pending"
    again = await manager.desconectar_instancia("chip-0001", created["chip_id"])
    assert again["sucesso"] is True and "was not connected" in again["message"]


async def test_delete_removes_it_from_evolution_and_updates_the_database(
    db: Database, manager: InstanceManager, evolution: FakeEvolution
) -> None:
    created = await manager.criar_instancia("chip-0001", "5511900000001")

    result = await manager.deletar_instancia("chip-0001", created["chip_id"])

    assert result == {"sucesso": True, "message": "instance chip-0001 deleted"}
    assert "chip-0001" not in evolution.instances
    chip = await chip_named(db, "chip-0001")
    assert chip.status == "deleted" and chip.deleted_at is not None
    assert (await steps(db, "chip-0001"))[-1] == "removed:pending->deleted"
    again = await manager.deletar_instancia("chip-0001", created["chip_id"])
    assert again["sucesso"] is True and "already deleted" in again["message"]


async def test_delete_of_an_instance_evolution_lost_still_deletes(
    db: Database, manager: InstanceManager, evolution: FakeEvolution
) -> None:
    created = await manager.criar_instancia("chip-0001", "5511900000001")
    evolution.instances.clear()

    result = await manager.deletar_instancia("chip-0001", created["chip_id"])

    assert result["sucesso"] is True and "already gone" in result["message"]
    assert (await chip_named(db, "chip-0001")).status == "deleted"


async def test_reconnect_yields_a_new_qr(
    db: Database, manager: InstanceManager, evolution: FakeEvolution
) -> None:
    created = await manager.criar_instancia("chip-0001", "5511900000001")

    result = await manager.reconectar_instancia("chip-0001", created["chip_id"])

    assert result["sucesso"] is True
    assert result["qr_code"].startswith("data:image/png;base64,")
    assert result["qr_code"] != created["qr_code"]
    assert (await chip_named(db, "chip-0001")).evolution_qr_code == result["qr_code"]
    methods = [(m, p) for m, p, _ in evolution.calls if "chip-0001" in p]
    assert methods == [("POST", "/instance/restart/chip-0001"),
                       ("GET", "/instance/connect/chip-0001")]  # fmt: skip


async def test_reconnect_of_a_closed_instance_falls_back_to_connect(
    db: Database, manager: InstanceManager, evolution: FakeEvolution
) -> None:
    created = await manager.criar_instancia("chip-0001", "5511900000001")
    evolution.instances["chip-0001"].state = "close"

    result = await manager.reconectar_instancia("chip-0001", created["chip_id"])

    assert result["sucesso"] is True and result["qr_code"] is not None
    assert base64.b64decode(result["qr_code"].split(",", 1)[1]).startswith(b"\x89PNG")


async def test_lifecycle_commands_follow_the_table(
    db: Database, manager: InstanceManager, evolution: FakeEvolution
) -> None:
    await manager.criar_instancia("chip-0001", "5511900000001")

    refused = await manager.transicionar("chip-0001", "activate")
    assert refused["sucesso"] is False
    assert "chip-0001" in refused["error"] and "pending" in refused["error"]

    evolution.scan("chip-0001")
    await manager.verificar_conexao("chip-0001")
    for trigger, status in [("promote", "ready"), ("activate", "active"),
                            ("degrade", "degraded"), ("restore", "active")]:  # fmt: skip
        result = await manager.transicionar("chip-0001", trigger)
        assert result["sucesso"] is True and result["status"] == status
    unknown = await manager.transicionar("chip-0001", "to_banned")
    assert unknown["sucesso"] is False and "not one of" in unknown["error"]


@pytest.mark.parametrize(
    ("name", "telefone", "words"),
    [
        ("bad name", "5511900000001", "instance name"),
        ("bad/name", "5511900000001", "instance name"),
        ("", "5511900000001", "instance name"),
        ("x" * 65, "5511900000001", "instance name"),
        ("chip-0001", "12345", "telefone"),
        ("chip-0001", "", "telefone"),
    ],
)
async def test_create_validates_before_touching_anything(
    db: Database, manager: InstanceManager, evolution: FakeEvolution,
    name: str, telefone: str, words: str,
) -> None:  # fmt: skip
    result = await manager.criar_instancia(name, telefone)
    assert result["sucesso"] is False and words in result["error"]
    assert result["chip_id"] is None and result["qr_code"] is None
    assert evolution.calls == []


async def test_evolution_unreachable_is_an_error_not_an_exception(db: Database) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    transport = httpx.MockTransport(down)
    client = EvolutionClient(
        "http://evolution.test", GLOBAL_KEY, transport=transport, read_attempts=1
    )
    manager = InstanceManager(db, client, HOOK)

    result = await manager.criar_instancia("chip-0001", "5511900000001")

    assert result["sucesso"] is False and "unreachable" in result["error"]
    assert "may exist" in result["error"]
    chip = await chip_named(db, "chip-0001")
    assert chip.status == "pending", "the outcome is unknown, so the chip is kept"
    qr = await manager.obter_qr_code("chip-0001")
    assert qr["sucesso"] is False and qr["connected"] is False


async def test_unknown_instance_is_an_error(manager: InstanceManager) -> None:
    for result in (
        await manager.obter_qr_code("nope"),
        await manager.verificar_conexao("nope"),
        await manager.desconectar_instancia("nope", None),
        await manager.deletar_instancia("nope", None),
        await manager.reconectar_instancia("nope", None),
    ):
        assert result["sucesso"] is False and "no chip has instance 'nope'" in result["error"]


async def test_chip_id_must_match_the_instance(manager: InstanceManager) -> None:
    await manager.criar_instancia("chip-0001", "5511900000001")
    result = await manager.desconectar_instancia("chip-0001", "another-chip")
    assert result["sucesso"] is False and "belongs to chip" in result["error"]


async def test_chip_id_reattaches_a_deleted_chip(db: Database, manager: InstanceManager) -> None:
    first = await manager.criar_instancia("chip-0001", "5511900000001")
    await manager.deletar_instancia("chip-0001", first["chip_id"])

    again = await manager.criar_instancia("chip-0001b", "5511900000001", first["chip_id"])

    assert again["sucesso"] is True and again["chip_id"] == first["chip_id"]
    chip = await chip_named(db, "chip-0001b")
    assert (chip.status, chip.deleted_at) == ("pending", None)
    assert (await steps(db, "chip-0001b"))[2:4] == [
        "removed:pending->deleted", "registered:deleted->pending",
    ]  # fmt: skip
    await assert_history_consistent(db, chip.id)


async def test_a_webhook_sent_before_create_returns_finds_the_chip(
    db: Database, receiver: httpx.AsyncClient, evolution: FakeEvolution
) -> None:
    """Evolution posts ``connecting`` while it still sleeps on the create request."""
    early = load_json(SAMPLES / "v2-webhook-connection-update-connecting.json")
    answers: list[int] = []

    class WebhookFirst(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == "/instance/create":
                answers.append((await receiver.post("/webhooks/evolution", json=early)).status_code)
            return evolution.handle(request)

    client = EvolutionClient("http://evolution.test", GLOBAL_KEY, transport=WebhookFirst())
    manager = InstanceManager(db, client, HOOK)

    result = await manager.criar_instancia("chip-0001", "5511900000001")

    assert result["sucesso"] is True
    assert answers == [200]
    assert await outcomes(db) == ["applied"]
    assert (await steps(db, "chip-0001"))[:2] == [
        "registered:-->pending", "connecting:pending->pending",
    ]  # fmt: skip


@pytest.mark.parametrize("chip_id", ["x" * 37, "", "a b", "ç", "1;DROP TABLE chips"])
async def test_a_chip_id_that_cannot_be_stored_is_refused(
    manager: InstanceManager, evolution: FakeEvolution, chip_id: str
) -> None:
    result = await manager.criar_instancia("chip-0001", "5511900000001", chip_id)
    assert result["sucesso"] is False and "chip_id" in result["error"]
    assert evolution.calls == []
