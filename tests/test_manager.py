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
from tests.chips import given_chip
from tests.conftest import SAMPLES, load_json
from tests.fake_evolution import GLOBAL_KEY, FakeEvolution, FakeInstance
from tests.helpers import (
    assert_history_consistent,
    chip_named,
    evolution_with,
    json_response,
    outcomes,
    steps,
)

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
    # Each instance's webhooks carry the tag of the chip it was made for.
    assert chip.instance_tag is not None
    assert create["webhook"]["headers"] == {
        **HOOK.headers,
        "x-evochips-instance": chip.instance_tag,
    }
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


async def test_reconnect_of_a_paired_chip_caught_reconnecting_shows_no_old_qr(
    db: Database, manager: InstanceManager, evolution: FakeEvolution
) -> None:
    """Evolution's QR cache outlives pairings: a restart that finds a paired instance
    reconnecting (a second restart at once, say) is answered with the last QR it showed.
    The session resumes without one, so there is nothing to scan."""
    created = await manager.criar_instancia("chip-0001", "5511900000001")
    evolution.scan("chip-0001")
    assert (await manager.verificar_conexao("chip-0001"))["connected"]
    evolution.instances["chip-0001"].state = "connecting"

    result = await manager.reconectar_instancia("chip-0001", created["chip_id"])

    assert result["sucesso"] is True and result["qr_code"] is None
    assert "paired session resumes" in result["message"]
    chip = await chip_named(db, "chip-0001")
    assert (chip.status, chip.evolution_qr_code) == ("warming", None)


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
        ("nl-1\n", "5511900000001", "instance name"),
        ("chip\ud800", "5511900000001", "instance name"),
        (["chip-0001"], "5511900000001", "instance name"),
        ("chip-0001", "12345", "telefone"),
        ("chip-0001", "", "telefone"),
        ("chip-0001", 5511900000001, "telefone must be text"),
        ("chip-0001", "٥٥١١٩٠٠٠٠٠٠٠١", "telefone"),
        ("chip-0001", "5511abc900000005", "may hold only digits"),
        ("chip-0001", "55.11.9000.00005", "may hold only digits"),
        ("chip-0001", "55119\ud800000004", "may hold only digits"),
        ("chip-0001", "+55 11 9000\n00005", "may hold only digits"),
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


async def test_evolution_unreachable_is_an_error_and_writes_nothing(db: Database) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    client = EvolutionClient(
        "http://evolution.test", GLOBAL_KEY, api_version=None,
        transport=httpx.MockTransport(down), read_attempts=1,
    )  # fmt: skip
    manager = InstanceManager(db, client, HOOK)

    result = await manager.criar_instancia("chip-0001", "5511900000001")

    assert result["sucesso"] is False and "unreachable" in result["error"]
    assert (result["chip_id"], result["error_code"]) == (None, "evolution_unavailable")
    assert await manager.obter_qr_code("chip-0001") == {
        "sucesso": False, "qr_code": None, "code": None, "connected": False,
        "error": "no chip has instance 'chip-0001'", "error_code": "not_found",
    }  # fmt: skip


class _AnswerLost(httpx.AsyncBaseTransport):
    """Evolution acts on the create, but its answer never reaches us."""

    def __init__(self, evolution: FakeEvolution, failure: httpx.Response | None = None) -> None:
        self._evolution = evolution
        self._failure = failure

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._evolution.handle(request)
        if request.url.path != "/instance/create":
            return answer
        if self._failure is not None:
            return self._failure
        raise httpx.ReadTimeout("no answer", request=request)


@pytest.mark.parametrize(
    "failure",
    [None, httpx.Response(504, text="<html>504 Gateway Time-out</html>")],
    ids=["timeout", "gateway-504"],
)
async def test_create_without_an_answer_keeps_the_chip_and_a_repeat_finishes_it(
    db: Database, evolution: FakeEvolution, failure: httpx.Response | None
) -> None:
    lost = EvolutionClient("http://evolution.test", GLOBAL_KEY,
                           transport=_AnswerLost(evolution, failure))  # fmt: skip
    first = await InstanceManager(db, lost, HOOK).criar_instancia("chip-0001", "5511900000001")

    assert first["sucesso"] is False and "may exist" in first["error"]
    assert first["chip_id"] is not None and first["instance_name"] == "chip-0001"
    chip = await chip_named(db, "chip-0001")
    assert (chip.id, chip.status, chip.evolution_instance_id) == (first["chip_id"], "pending", None)

    fine = EvolutionClient("http://evolution.test", GLOBAL_KEY, transport=evolution.transport())
    again = await InstanceManager(db, fine, HOOK).criar_instancia("chip-0001", "5511900000001")

    assert again["sucesso"] is True and again["chip_id"] == first["chip_id"]
    chip = await chip_named(db, "chip-0001")
    assert chip.evolution_instance_id == evolution.instances["chip-0001"].instance_id
    assert await steps(db, "chip-0001") == ["registered:-->pending"]


async def test_unknown_instance_is_an_error(manager: InstanceManager) -> None:
    for result in (
        await manager.obter_qr_code("nope"),
        await manager.verificar_conexao("nope"),
        await manager.desconectar_instancia("nope", None),
        await manager.deletar_instancia("nope", None),
        await manager.reconectar_instancia("nope", None),
    ):
        assert result["sucesso"] is False and "no chip has instance 'nope'" in result["error"]


async def test_a_deleted_chip_is_named_as_deleted_not_as_unknown(
    db: Database, manager: InstanceManager
) -> None:
    chip = await given_chip(db, "chip-0001", "deleted", "close")
    for result in (
        await manager.obter_qr_code("chip-0001"),
        await manager.verificar_conexao("chip-0001"),
        await manager.desconectar_instancia("chip-0001", None),
        await manager.reconectar_instancia("chip-0001", None),
        await manager.transicionar("chip-0001", "promote"),
    ):
        assert result["sucesso"] is False
        assert (result["error_code"], result["error"]) == (
            "invalid_transition",
            f"chip {chip.id} for instance 'chip-0001' is deleted; it takes no command until "
            "it is created again",
        )


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


@pytest.mark.parametrize("name", ["x\x00y", "nl-1\n", "a/b", 7])
async def test_every_command_checks_the_name_before_looking(
    manager: InstanceManager, evolution: FakeEvolution, name: object
) -> None:
    for result in (
        await manager.obter_qr_code(name),  # type: ignore[arg-type]
        await manager.verificar_conexao(name),  # type: ignore[arg-type]
        await manager.desconectar_instancia(name, None),  # type: ignore[arg-type]
        await manager.deletar_instancia(name, None),  # type: ignore[arg-type]
        await manager.reconectar_instancia(name, None),  # type: ignore[arg-type]
        await manager.transicionar(name, "promote"),  # type: ignore[arg-type]
    ):
        assert result["sucesso"] is False and "instance name" in result["error"]
    assert evolution.calls == []


async def test_a_trigger_of_the_wrong_type_is_refused(manager: InstanceManager) -> None:
    await manager.criar_instancia("chip-0001", "5511900000001")
    result = await manager.transicionar("chip-0001", ["promote"])  # type: ignore[arg-type]
    assert result["sucesso"] is False and "not one of" in result["error"]


async def test_v1_delete_of_a_connected_instance_logs_out_first(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("evochips.manager.V1_DELETE_PAUSES", (0, 0, 0))
    needs = load_json(SAMPLES / "v1-delete-400-needs-disconnect.json")
    deletes = [json_response(400, needs), json_response(400, needs),
               json_response(200, load_json(SAMPLES / "v1-delete-success.json"))]  # fmt: skip
    calls: list[str] = []

    def v1(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.url.path == "/instance/delete/chip-0001":
            return deletes.pop(0)
        if request.url.path == "/instance/logout/chip-0001":
            return json_response(200, load_json(SAMPLES / "v1-logout-success.json"))
        return json_response(404, {"status": 404})

    chip = await given_chip(db, "chip-0001", "active", "open")
    manager = InstanceManager(db, evolution_with(v1, api_version=1), HOOK)

    result = await manager.deletar_instancia("chip-0001", chip.id)

    assert result == {"sucesso": True, "message": "instance chip-0001 deleted"}
    assert calls == [
        "DELETE /instance/delete/chip-0001",
        "DELETE /instance/logout/chip-0001",
        "DELETE /instance/delete/chip-0001",
        "DELETE /instance/delete/chip-0001",
    ]
    assert (await steps(db, "chip-0001"))[-2:] == [
        "logged_out:active->pending", "removed:pending->deleted",
    ]  # fmt: skip


async def test_a_qr_in_create_answer_does_not_undo_a_scan_reported_meanwhile(
    db: Database, receiver: httpx.AsyncClient, evolution: FakeEvolution
) -> None:
    """The phone scanned while Evolution was still sleeping on the create request."""
    opened = load_json(SAMPLES / "v2-webhook-connection-update-open.json")

    class ScannedDuringCreate(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            answer = evolution.handle(request)  # carries a QR
            if request.url.path == "/instance/create":
                await receiver.post("/webhooks/evolution", json=opened)
            return answer

    client = EvolutionClient("http://evolution.test", GLOBAL_KEY, transport=ScannedDuringCreate())
    result = await InstanceManager(db, client, HOOK).criar_instancia("chip-0001", "5511900000001")

    assert result["sucesso"] is True
    assert result["qr_code"] is None, "the QR is spent: the caller must not be asked to scan it"
    chip = await chip_named(db, "chip-0001")
    assert (chip.status, chip.connection_state, chip.evolution_qr_code) == ("warming", "open", None)


async def test_a_404_that_is_not_evolutions_does_not_count_as_deleted(db: Database) -> None:
    def proxy_404(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="<html>404 Not Found</html>")

    chip = await given_chip(db, "chip-0001", "warming", "open")
    manager = InstanceManager(db, evolution_with(proxy_404), HOOK)

    result = await manager.deletar_instancia("chip-0001", chip.id)

    assert result["sucesso"] is False and "404" in result["error"]
    assert (await chip_named(db, "chip-0001")).status == "warming"


async def test_a_name_that_contains_disconnected_does_not_trigger_a_logout(db: Database) -> None:
    calls: list[str] = []

    def refuses(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        return json_response(400, {"status": 400, "error": "Bad Request",
                                   "response": {"message": ["something else"]}})  # fmt: skip

    chip = await given_chip(db, "chip-disconnected", "warming", "open")
    manager = InstanceManager(db, evolution_with(refuses), HOOK)

    result = await manager.deletar_instancia("chip-disconnected", chip.id)

    assert result["sucesso"] is False and "something else" in result["error"]
    assert calls == ["DELETE /instance/delete/chip-disconnected"]


async def test_a_create_whose_recording_fails_names_its_chip(
    db: Database,
    manager: InstanceManager,
    evolution: FakeEvolution,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from evochips import lifecycle
    from evochips.db import DatabaseUnavailable

    async def busy(*args: object, **kwargs: object) -> None:
        raise DatabaseUnavailable("database is busy")

    monkeypatch.setattr(lifecycle, "remember_instance", busy)
    result = await manager.criar_instancia("chip-0001", "5511900000001")

    assert result["sucesso"] is False and result["error_code"] == "database_unavailable"
    assert result["chip_id"] == (await chip_named(db, "chip-0001")).id
    assert "created in Evolution" in result["error"] and "chip-0001" in evolution.instances
    monkeypatch.undo()
    finished = await manager.criar_instancia("chip-0001", "5511900000001")
    assert finished["sucesso"] and finished["chip_id"] == result["chip_id"]
