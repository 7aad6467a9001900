"""Contract of the HTTP API under /api/v1: every route, every error, on both databases.

Evolution is the recorded fake behind ``httpx.MockTransport``; the app is the real one,
receiver and API together, reached through ASGI.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from evochips.api.routes import api_routes
from evochips.db import Chip, Database
from evochips.evolution.client import EvolutionClient
from evochips.evolution.shapes import WebhookTarget
from evochips.manager import InstanceManager
from evochips.receiver import create_app
from tests.chips import given_chip
from tests.conftest import AUTH, SAMPLES, SECRET, load_json
from tests.fake_evolution import GLOBAL_KEY, FakeEvolution
from tests.helpers import assert_history_consistent, count, evolution_with, json_response

KEY = "api-key-0123456789abcdefghij"
OLD_KEY = "api-key-old-0123456789abcdef"
BEARER = {"authorization": f"Bearer {KEY}"}
HOOK = WebhookTarget("http://evochips.test/webhooks/evolution", {"x-evochips-token": SECRET})


def _client(db: Database, evolution: EvolutionClient) -> httpx.AsyncClient:
    manager = InstanceManager(db, evolution, HOOK)
    app = create_app(db, SECRET, api=api_routes(db, manager, (OLD_KEY, KEY)))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://evochips.test", headers=BEARER
    )


@pytest.fixture
def evolution() -> FakeEvolution:
    return FakeEvolution()


@pytest.fixture
async def api(db: Database, evolution: FakeEvolution) -> AsyncIterator[httpx.AsyncClient]:
    client = EvolutionClient("http://evolution.test", GLOBAL_KEY, transport=evolution.transport())
    async with _client(db, client) as api_client:
        yield api_client
    await client.aclose()


async def _create(api: httpx.AsyncClient, name: str, **extra: Any) -> dict[str, Any]:
    body = {"instance_name": name, "telefone": "+55 11 90000-0001", **extra}
    response = await api.post("/api/v1/chips", json=body)
    assert response.status_code == 201, response.text
    chip: dict[str, Any] = response.json()["chip"]
    return chip


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in response.text
    return error


async def _open(api: httpx.AsyncClient, name: str) -> None:
    """The phone scans the QR: Evolution reports the connection as open."""
    body = {**load_json(SAMPLES / "v2-webhook-connection-update-open.json"), "instance": name}
    body["data"] = {**body["data"], "instance": name}
    response = await api.post("/webhooks/evolution", json=body, headers=AUTH)
    assert response.json()["outcome"] == "applied"


# -- authentication ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", f"Basic {KEY}", "Bearer wrong-key-0123456789abcdefgh", f"Bearer {KEY}x"],
)
async def test_without_a_valid_key_every_route_answers_401(
    api: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    api.headers.pop("authorization")
    for method, path in [("GET", "/api/v1/chips"), ("POST", "/api/v1/chips"),
                         ("GET", "/api/v1/chips/x"), ("DELETE", "/api/v1/chips/x"),
                         ("GET", "/api/v1/transitions")]:  # fmt: skip
        response = await api.request(method, path, headers=headers)
        _error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_both_keys_work_during_a_rotation(api: httpx.AsyncClient) -> None:
    for key in (OLD_KEY, KEY):
        response = await api.get("/api/v1/chips", headers={"authorization": f"Bearer {key}"})
        assert response.status_code == 200


async def test_with_no_keys_configured_the_api_refuses_everyone(db: Database) -> None:
    app = create_app(db, SECRET, api=api_routes(db, None, ()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        error = _error(await c.get("/api/v1/chips", headers=BEARER), 401, "unauthorized")
    assert "EVOCHIPS_API_KEYS" in error["message"]


async def test_webhooks_keep_their_own_secret(api: httpx.AsyncClient) -> None:
    response = await api.post("/webhooks/evolution", json={"event": "x"})  # bearer, no secret
    assert response.status_code == 401


# -- create --------------------------------------------------------------------------------


async def test_create_registers_the_chip_and_returns_it_with_its_first_qr(
    api: httpx.AsyncClient, evolution: FakeEvolution
) -> None:
    body = {"instance_name": "loja-1", "telefone": "+55 (11) 90000-0001"}
    response = await api.post("/api/v1/chips", json=body)
    assert response.status_code == 201
    body = response.json()
    assert body["qr_code"].startswith("data:image/png;base64,")
    chip = body["chip"]
    assert (chip["instance_name"], chip["telefone"]) == ("loja-1", "5511900000001")
    assert (chip["status"], chip["connection_state"], chip["has_qr_code"]) == (
        "pending", "connecting", True)  # fmt: skip
    assert "loja-1" in evolution.instances


async def test_a_bad_create_names_every_bad_field_and_touches_nothing(
    api: httpx.AsyncClient, evolution: FakeEvolution, db: Database
) -> None:
    body = {"instance_name": "a b", "telefone": "12", "chip_id": "x" * 40, "colour": "red"}
    error = _error(await api.post("/api/v1/chips", json=body), 400, "validation")
    assert set(error["fields"]) == {"instance_name", "telefone", "chip_id", "colour"}
    error = _error(await api.post("/api/v1/chips", json={}), 400, "validation")
    assert set(error["fields"]) == {"instance_name", "telefone"}
    for content in (b"{not json", b"[]", b'"text"', b"\xff\xfe"):
        _error(await api.post("/api/v1/chips", content=content), 400, "validation")
    for number in (b"NaN", b"Infinity", b"1e999"):
        content = b'{"instance_name": "loja-1", "telefone": ' + number + b"}"
        error = _error(await api.post("/api/v1/chips", content=content), 400, "validation")
        assert error["fields"] == {"body": "is not JSON"}
    # JSON leaves a key named twice undefined; which one was meant is not guessed.
    twice = b'{"instance_name": "loja-1", "instance_name": "loja-2", "telefone": "5511900000001"}'
    error = _error(await api.post("/api/v1/chips", content=twice), 400, "validation")
    assert error["fields"] == {"body": "names 'instance_name' twice"}
    assert evolution.calls == [] and await count(db, Chip) == 0


async def test_a_body_over_64_kib_is_refused_with_413(api: httpx.AsyncClient) -> None:
    body = b'{"instance_name": "x", "telefone": "' + b"1" * 70_000 + b'"}'
    _error(await api.post("/api/v1/chips", content=body), 413, "body_too_large")


async def test_a_name_in_use_is_409(api: httpx.AsyncClient) -> None:
    await _create(api, "loja-1")
    body = {"instance_name": "loja-1", "telefone": "5511900000002"}
    error = _error(await api.post("/api/v1/chips", json=body), 409, "name_in_use")
    assert "loja-1" in error["message"]


async def test_a_retried_create_with_its_idempotency_key_creates_one_chip(
    api: httpx.AsyncClient, db: Database, evolution: FakeEvolution
) -> None:
    body = {"instance_name": "loja-1", "telefone": "5511900000001"}
    key = {"idempotency-key": "order-1234"}
    first = await api.post("/api/v1/chips", json=body, headers=key)
    again = await api.post("/api/v1/chips", json=body, headers=key)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert await count(db, Chip) == 1
    assert len([call for call in evolution.calls if call[1] == "/instance/create"]) == 1
    other = {"instance_name": "loja-2", "telefone": "5511900000001"}
    _error(await api.post("/api/v1/chips", json=other, headers=key), 409,
           "idempotency_key_reused")  # fmt: skip


async def test_concurrent_retries_with_one_key_create_one_chip(
    api: httpx.AsyncClient, db: Database
) -> None:
    body = {"instance_name": "loja-1", "telefone": "5511900000001"}
    answers = await asyncio.gather(*(
        api.post("/api/v1/chips", json=body, headers={"idempotency-key": "k-1"})
        for _ in range(8)
    ))  # fmt: skip
    assert {a.status_code for a in answers} <= {201, 409}
    created = [a for a in answers if a.status_code == 201]
    assert created and all(a.json()["chip"]["id"] == created[0].json()["chip"]["id"]
                           for a in created)  # fmt: skip
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["error"]["code"] == "request_in_progress"
            assert answer.headers["retry-after"]
    assert await count(db, Chip) == 1


async def test_a_failed_create_does_not_keep_its_idempotency_key(db: Database) -> None:
    attempts = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        if request.url.path == "/instance/create":
            attempts += 1
            if attempts == 1:
                raise httpx.ConnectError("connection refused")
        return fake.handle(request)

    fake = FakeEvolution()
    async with _client(db, evolution_with(flaky)) as api:
        body = {"instance_name": "loja-1", "telefone": "5511900000001"}
        key = {"idempotency-key": "k-1"}
        _error(await api.post("/api/v1/chips", json=body, headers=key), 503,
               "evolution_unavailable")  # fmt: skip
        retried = await api.post("/api/v1/chips", json=body, headers=key)
    assert retried.status_code == 201, retried.text
    assert await count(db, Chip) == 1


# -- reading chips ---------------------------------------------------------------------------


async def test_a_chip_is_found_by_id_or_name_with_the_triggers_it_allows(
    api: httpx.AsyncClient,
) -> None:
    chip = await _create(api, "loja-1")
    await _open(api, "loja-1")
    by_id = (await api.get(f"/api/v1/chips/{chip['id']}")).json()
    by_name = (await api.get("/api/v1/chips/loja-1")).json()
    assert by_id == by_name
    assert (by_id["status"], by_id["allowed_triggers"]) == ("warming", ["promote"])
    _error(await api.get("/api/v1/chips/nobody"), 404, "not_found")
    _error(await api.get("/api/v1/chips/loja-1?x=1"), 400, "validation")


async def test_the_list_filters_and_pages_without_repeating_or_skipping(
    api: httpx.AsyncClient,
) -> None:
    for n in range(5):
        await _create(api, f"loja-{n}")
    await _open(api, "loja-3")

    seen: list[str] = []
    page = (await api.get("/api/v1/chips?limit=2")).json()
    seen += [chip["instance_name"] for chip in page["items"]]
    await _create(api, "loja-9")  # inserted while a client pages
    while page["has_more"]:
        page = (await api.get(f"/api/v1/chips?limit=2&cursor={page['next_cursor']}")).json()
        seen += [chip["instance_name"] for chip in page["items"]]
    assert seen == [f"loja-{n}" for n in (0, 1, 2, 3, 4, 9)]

    connected = (await api.get("/api/v1/chips?connected=true")).json()["items"]
    assert [chip["instance_name"] for chip in connected] == ["loja-3"]
    warming = (await api.get("/api/v1/chips?status=warming&connection_state=open")).json()
    assert [chip["instance_name"] for chip in warming["items"]] == ["loja-3"]


async def test_bad_list_parameters_are_each_named(api: httpx.AsyncClient) -> None:
    query = "status=sleeping&connected=maybe&limit=0&cursor=%%%&colour=red"
    error = _error(await api.get(f"/api/v1/chips?{query}"), 400, "validation")
    assert set(error["fields"]) == {"status", "connected", "limit", "cursor", "colour"}
    for cursor in ("W10", "WzEsMl0", "eyJhIjoxfQ"):  # [], [1,2], {"a":1}
        _error(await api.get(f"/api/v1/chips?cursor={cursor}"), 400, "validation")


# -- commands ----------------------------------------------------------------------------


async def test_the_qr_comes_as_json_or_as_the_png_itself(
    api: httpx.AsyncClient, evolution: FakeEvolution
) -> None:
    await _create(api, "loja-1")
    as_json = await api.get("/api/v1/chips/loja-1/qrcode")
    assert as_json.status_code == 200 and as_json.json()["connected"] is False
    assert as_json.json()["qr_code"].startswith("data:image/png;base64,")

    png = await api.get("/api/v1/chips/loja-1/qrcode", headers={"accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")

    evolution.scan("loja-1")
    none = await api.get("/api/v1/chips/loja-1/qrcode", headers={"accept": "image/png"})
    assert "connected" in _error(none, 404, "qr_not_available")["message"]


async def test_check_logout_reconnect_and_delete(
    api: httpx.AsyncClient, evolution: FakeEvolution, db: Database
) -> None:
    chip = await _create(api, "loja-1")
    evolution.scan("loja-1")

    checked = await api.post("/api/v1/chips/loja-1/connection-check")
    assert checked.status_code == 200
    assert (checked.json()["state"], checked.json()["chip"]["status"]) == ("open", "warming")

    logged_out = await api.post(f"/api/v1/chips/{chip['id']}/logout")
    assert logged_out.status_code == 200 and logged_out.json()["chip"]["status"] == "pending"

    reconnected = await api.post("/api/v1/chips/loja-1/reconnect")
    assert reconnected.status_code == 200 and reconnected.json()["qr_code"]

    deleted = await api.delete("/api/v1/chips/loja-1")
    assert deleted.status_code == 200 and deleted.json()["chip"]["status"] == "deleted"
    again = await api.delete(f"/api/v1/chips/{chip['id']}")
    assert again.status_code == 200 and "already deleted" in again.json()["message"]
    assert (await api.get("/api/v1/chips/loja-1")).json()["status"] == "deleted"
    error = _error(await api.post("/api/v1/chips/loja-1/logout"), 409, "invalid_transition")
    assert "deleted" in error["message"]
    await assert_history_consistent(db, chip["id"])


async def test_lifecycle_triggers_and_the_409_that_names_what_is_allowed(
    api: httpx.AsyncClient,
) -> None:
    await _create(api, "loja-1")
    refused = await api.post("/api/v1/chips/loja-1/transitions", json={"trigger": "activate"})
    error = _error(refused, 409, "invalid_transition")
    assert "'pending'" in error["message"] and "allowed: none" in error["message"]

    await _open(api, "loja-1")
    for trigger, status in [("promote", "ready"), ("activate", "active"), ("degrade", "degraded"),
                            ("restore", "active")]:  # fmt: skip
        moved = await api.post("/api/v1/chips/loja-1/transitions", json={"trigger": trigger})
        assert moved.status_code == 200 and moved.json()["chip"]["status"] == status

    error = _error(await api.post("/api/v1/chips/loja-1/transitions",
                                  json={"trigger": "fly", "x": 1}), 400, "validation")  # fmt: skip
    assert set(error["fields"]) == {"trigger", "x"}


async def test_evolution_failures_map_to_502_503_and_504(db: Database) -> None:
    fake = FakeEvolution()

    def refusing(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/instance/connect/"):
            body = {"status": 400, "error": "Bad Request",
                    "response": {"message": ["Evolution says no"]}}  # fmt: skip
            return json_response(400, body)
        if request.url.path.startswith("/instance/connectionState/"):
            raise httpx.ReadTimeout("too slow")
        if request.url.path.startswith("/instance/restart/"):
            raise httpx.ConnectError("connection refused")
        return fake.handle(request)

    async with _client(db, evolution_with(refusing)) as api:
        await _create(api, "loja-1")
        error = _error(await api.get("/api/v1/chips/loja-1/qrcode"), 502, "evolution_rejected")
        assert "Evolution says no" in error["message"]
        _error(await api.post("/api/v1/chips/loja-1/connection-check"), 504, "evolution_timeout")
        unreachable = await api.post("/api/v1/chips/loja-1/reconnect")
        _error(unreachable, 503, "evolution_unavailable")
        assert unreachable.headers["retry-after"]


async def test_a_database_that_is_down_gives_503_with_retry_after(tmp_path: Any) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/missing/evochips.db")
    app = create_app(db, SECRET, api=api_routes(db, None, (KEY,)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                 headers=BEARER) as api:  # fmt: skip
        for path in ("/api/v1/chips", "/api/v1/chips/x", "/api/v1/transitions"):
            response = await api.get(path)
            _error(response, 503, "database_unavailable")
            assert response.headers["retry-after"]
    await db.dispose()


async def test_a_file_that_is_not_a_database_gives_503(tmp_path: Any) -> None:
    (tmp_path / "evochips.db").write_text("not a database\n")
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/evochips.db")
    app = create_app(db, SECRET, api=api_routes(db, None, (KEY,)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                 headers=BEARER) as api:  # fmt: skip
        response = await api.get("/api/v1/chips")
    await db.dispose()
    error = _error(response, 503, "database_unavailable")
    assert "not an SQLite database" in error["message"]
    assert response.headers["retry-after"]


async def test_unknown_routes_and_methods_answer_in_the_error_shape(
    api: httpx.AsyncClient,
) -> None:
    _error(await api.get("/api/v1/nothing-here"), 404, "not_found")
    wrong = await api.put("/api/v1/chips")
    _error(wrong, 405, "method_not_allowed")
    assert set(wrong.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


# -- audit ---------------------------------------------------------------------------------


async def test_a_chips_history_is_paged_oldest_first(api: httpx.AsyncClient) -> None:
    chip = await _create(api, "loja-1")
    await _open(api, "loja-1")
    await api.post("/api/v1/chips/loja-1/transitions", json={"trigger": "promote"})

    rows: list[dict[str, Any]] = []
    page = (await api.get("/api/v1/chips/loja-1/transitions?limit=2")).json()
    rows += page["items"]
    while page["has_more"]:
        cursor = page["next_cursor"]
        page = (
            await api.get(f"/api/v1/chips/{chip['id']}/transitions?limit=2&cursor={cursor}")
        ).json()
        rows += page["items"]
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["trigger"] == "registered" and rows[-1]["trigger"] == "promote"
    _error(await api.get("/api/v1/chips/nobody/transitions"), 404, "not_found")


async def test_the_fleet_feed_filters_and_exports_incrementally(api: httpx.AsyncClient) -> None:
    await _create(api, "loja-1")
    await _create(api, "loja-2")
    everything = (await api.get("/api/v1/transitions?limit=500")).json()
    assert not everything["has_more"]
    ids = [row["id"] for row in everything["items"]]
    assert ids == sorted(ids)

    await _open(api, "loja-2")  # happens after the export above
    newer = (await api.get(f"/api/v1/transitions?cursor={everything['next_cursor']}")).json()
    assert [(r["trigger"], r["source"]) for r in newer["items"]] == [("connected", "webhook")]

    by_webhook = (await api.get("/api/v1/transitions?source=webhook&status=warming")).json()
    assert [row["trigger"] for row in by_webhook["items"]] == ["connected"]
    future = (await api.get("/api/v1/transitions?since=2999-01-01T00:00:00Z")).json()
    past = (await api.get("/api/v1/transitions?until=2000-01-01")).json()
    assert future["items"] == past["items"] == []
    error = _error(await api.get("/api/v1/transitions?since=yesterday&source=fax&limit=x"), 400,
                   "validation")  # fmt: skip
    assert set(error["fields"]) == {"since", "source", "limit"}


# -- found by trying to break it ---------------------------------------------------------


@pytest.mark.parametrize("ref", ["%00", "a%00b", "x" * 65, "a.b", "%C3%A9", "a%20b"])
async def test_a_reference_no_chip_could_have_is_404_on_every_route(
    api: httpx.AsyncClient, ref: str
) -> None:
    for method, suffix in [("GET", ""), ("DELETE", ""), ("GET", "/qrcode"),
                           ("POST", "/logout"), ("GET", "/transitions")]:  # fmt: skip
        response = await api.request(method, f"/api/v1/chips/{ref}{suffix}")
        error = _error(response, 404, "not_found")
        assert len(error["message"]) < 200


@pytest.mark.parametrize("key", ["[9223372036854775808]", "[-1]", "[1.5]", '["\u0000"]', "[true]"])
async def test_a_forged_cursor_is_400_never_500(api: httpx.AsyncClient, key: str) -> None:
    import base64

    cursor = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
    for path in ("/api/v1/transitions", "/api/v1/chips/loja-1/transitions"):
        _error(await api.get(f"{path}?cursor={cursor}"), 400, "validation")
    chips_cursor = base64.urlsafe_b64encode(rb'["2026-12-03T19:37:56+00:00", "\u0000"]')
    _error(await api.get(f"/api/v1/chips?cursor={chips_cursor.decode()}"), 400, "validation")


async def test_a_chip_id_may_not_be_another_chips_name(api: httpx.AsyncClient) -> None:
    other = await _create(api, "race2")
    body = {"instance_name": "amb1", "telefone": "5511900000041", "chip_id": "race2"}
    _error(await api.post("/api/v1/chips", json=body), 409, "name_in_use")
    named_as_id = {"instance_name": other["id"], "telefone": "5511900000041"}
    error = _error(await api.post("/api/v1/chips", json=named_as_id), 409, "name_in_use")
    assert error["message"] == (
        f"instance name {other['id']!r} is the id of chip {other['id']}; pick a name that "
        "names nothing else"
    )
    assert (await api.get("/api/v1/chips/race2")).json()["id"] == other["id"]


async def test_evolution_answering_5xx_is_503_with_retry_after(db: Database) -> None:
    fake = FakeEvolution()

    def failing(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/instance/create":
            body = {"status": 503, "error": "Service Unavailable", "response": {"message": ["x"]}}
            return json_response(503, body)
        return fake.handle(request)

    async with _client(db, evolution_with(failing)) as api:
        body = {"instance_name": "loja-1", "telefone": "5511900000001"}
        response = await api.post("/api/v1/chips", json=body)
    _error(response, 503, "evolution_unavailable")
    assert response.headers["retry-after"]


async def test_repeated_parameters_and_an_oversized_declared_body_are_refused(
    api: httpx.AsyncClient,
) -> None:
    error = _error(await api.get("/api/v1/chips?limit=1&limit=2"), 400, "validation")
    assert error["fields"] == {"limit": "given more than once"}
    oversized = await api.post("/api/v1/chips", content=b"{}",
                               headers={"content-length": "100000"})  # fmt: skip
    _error(oversized, 413, "body_too_large")


async def test_a_transition_can_require_the_version_the_client_saw(
    api: httpx.AsyncClient,
) -> None:
    await _create(api, "loja-1")
    await _open(api, "loja-1")
    seen = (await api.get("/api/v1/chips/loja-1")).json()["version"]

    moved = await api.post("/api/v1/chips/loja-1/transitions",
                           json={"trigger": "promote", "expected_version": seen})  # fmt: skip
    stale = await api.post("/api/v1/chips/loja-1/transitions",
                           json={"trigger": "activate", "expected_version": seen})  # fmt: skip
    bad = await api.post("/api/v1/chips/loja-1/transitions",
                         json={"trigger": "activate", "expected_version": "1"})  # fmt: skip

    assert moved.status_code == 200 and moved.json()["chip"]["status"] == "ready"
    assert "changed" in _error(stale, 409, "concurrent_change")["message"]
    assert set(_error(bad, 400, "validation")["fields"]) == {"expected_version"}
    assert (await api.get("/api/v1/chips/loja-1")).json()["status"] == "ready"


async def test_a_bug_behind_a_route_is_a_500_in_the_error_shape_without_a_traceback(
    db: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(InstanceManager, "verificar_conexao", broken)
    manager = InstanceManager(db, EvolutionClient("http://evolution.test", GLOBAL_KEY), HOOK)
    app = create_app(db, SECRET, api=api_routes(db, manager, (KEY,)))
    # As uvicorn does: the answer is sent, and the error is not raised into the client.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://evochips.test",
                                 headers=BEARER) as client:  # fmt: skip
        await given_chip(db, "loja-1", "pending", "connecting")
        answer = await client.post("/api/v1/chips/loja-1/connection-check")
    await manager.aclose()

    assert _error(answer, 500, "internal")["message"] == "internal error"
    assert "Traceback" not in answer.text and "ZeroDivisionError" not in answer.text
    assert any("ZeroDivisionError" in (r.exc_text or "") for r in caplog.records), "logged"


async def test_a_chip_shows_its_flags_and_the_number_it_paired(api: httpx.AsyncClient) -> None:
    chip = await _create(api, "loja-1")
    assert (chip["unstable"], chip["unstable_since"], chip["misconfigured"]) == (False, None, None)
    assert (chip["drops"], chip["drops_since"]) == (0, None)
    assert (chip["owner_number"], chip["number_mismatch"]) == (None, False)

    await _open(api, "loja-1")

    shown = (await api.get("/api/v1/chips/loja-1")).json()
    assert (shown["owner_jid"], shown["owner_number"], shown["number_mismatch"]) == (
        "5511900000001@s.whatsapp.net", "+5511900000001", False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("accept", "png"),
    [
        ("", False),
        ("image/png", True),
        ("application/json", False),
        ("image/png, application/json", True),
        ("image/png;q=0, application/json", False),
        ("application/json, image/png;q=0.5", False),
        ("image/png;q=0.9, */*;q=0.8", True),
        ("*/*", False),
        ("IMAGE/PNG; Q=1", True),
        ("image/png;q=nan", False),
    ],
)
def test_the_png_is_sent_when_accept_ranks_it_first(accept: str, png: bool) -> None:
    from evochips.api.params import wants_png

    assert wants_png(accept) is png
