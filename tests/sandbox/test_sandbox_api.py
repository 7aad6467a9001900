"""The sandbox against input meant to hurt it, and the checks Evolution makes that a
backend may rely on (found by trying the sandbox as a new user would)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from evochips.sandbox import SandboxConfig, create_sandbox

KEY = "sandbox-test-key"


async def _api(version: int = 2) -> AsyncIterator[httpx.AsyncClient]:
    sandbox = create_sandbox(SandboxConfig(global_key=KEY, time_scale=0.001, version=version))
    transport = httpx.ASGITransport(app=sandbox)
    async with httpx.AsyncClient(transport=transport, base_url="http://evolution.test",
                                 headers={"apikey": KEY}) as api:  # fmt: skip
        yield api
    await sandbox.state.world.aclose()


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    async for client in _api():
        yield client


@pytest.fixture
async def api_v1() -> AsyncIterator[httpx.AsyncClient]:
    async for client in _api(version=1):
        yield client


def _create(name: str, **extra: Any) -> dict[str, Any]:
    return {"instanceName": name, "integration": "WHATSAPP-BAILEYS", "qrcode": True} | extra


async def test_a_name_utf8_cannot_carry_is_answered_not_a_500(api: httpx.AsyncClient) -> None:
    created = await api.post("/instance/create", content=b'{"instanceName": "lone\\ud800", '
                             b'"integration": "WHATSAPP-BAILEYS"}')  # fmt: skip
    listed = await api.get("/instance/fetchInstances")
    assert created.status_code == 201 and created.json()["instance"]["instanceName"] == "lone\ud800"
    assert listed.status_code == 200


async def test_absurdly_nested_json_is_a_400(api: httpx.AsyncClient) -> None:
    response = await api.post("/instance/create", content=b"[" * 100_000 + b"]" * 100_000)
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("webhook", "message"),
    [
        ({"enabled": "yes", "url": "http://x"}, "webhook.enabled is not of a type(s) boolean"),
        ({"enabled": True, "url": 123, "events": []}, "webhook.url is not of a type(s) string"),
        ({"enabled": True, "url": "http://x", "headers": "x", "events": []},
         "webhook.headers is not of a type(s) object"),
        ({"enabled": True, "url": "http://x", "events": "QRCODE_UPDATED"},
         "webhook.events is not of a type(s) array"),
        ({"enabled": True, "url": "http://x", "events": ["BOGUS"]},
         "webhook.events[0] is not one of enum values"),
    ],
)  # fmt: skip
async def test_v2_webhook_set_checks_types(
    api: httpx.AsyncClient, webhook: dict[str, Any], message: str
) -> None:
    await api.post("/instance/create", json=_create("a", qrcode=False))
    response = await api.post("/webhook/set/a", json={"webhook": webhook})
    assert response.status_code == 400
    assert response.json()["response"]["message"][0][0].startswith(message)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"url": "notaurl", "events": ["QRCODE_UPDATED"]}, 400),
        ({"url": "http://x", "events": ["LOGOUT_INSTANCE"]}, 400),
        ({"url": "http://x", "events": ["QRCODE_UPDATED"]}, 201),
    ],
)
async def test_v1_webhook_set_checks_url_and_events(
    api_v1: httpx.AsyncClient, body: dict[str, Any], status: int
) -> None:
    await api_v1.post("/instance/create", json={"instanceName": "a", "token": "T"})
    assert (await api_v1.post("/webhook/set/a", json=body)).status_code == status


async def test_nested_header_values_are_sent_as_text(api: httpx.AsyncClient) -> None:
    hook = {"url": "http://x", "events": [], "headers": {"a": {"b": 1}, "n": 2}}
    response = await api.post("/instance/create", json=_create("a", webhook=hook))
    assert response.json()["webhook"]["webhookHeaders"] == {"a": '{"b": 1}', "n": "2"}


@pytest.mark.parametrize("status", [99, 1000, 200])
async def test_a_fault_status_must_be_an_error_status(api: httpx.AsyncClient, status: int) -> None:
    response = await api.post("/_sandbox/faults", json={"fail_times": 1, "fail_status": status})
    assert response.status_code == 400
    assert (await api.get("/")).status_code == 200


async def test_a_hang_ends_when_the_client_gives_up(api: httpx.AsyncClient) -> None:
    await api.post("/instance/create", json=_create("a", qrcode=False))
    await api.post("/_sandbox/faults", json={"hang_times": 1})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(api.get("/instance/connectionState/a"), 0.3)
    assert (await api.get("/instance/connectionState/a")).status_code == 200


async def test_fetch_instances_filters_by_id_and_number(api: httpx.AsyncClient) -> None:
    a = (await api.post("/instance/create", json=_create("a", qrcode=False))).json()
    await api.post("/instance/create", json=_create("b", qrcode=False, number="5511900000002"))

    by_id = await api.get(
        "/instance/fetchInstances", params={"instanceId": a["instance"]["instanceId"]}
    )
    by_number = await api.get("/instance/fetchInstances", params={"number": "5511900000002"})
    assert [row["name"] for row in by_id.json()] == ["a"]
    assert [row["name"] for row in by_number.json()] == ["b"]


async def test_one_qr_is_scanned_once(api: httpx.AsyncClient) -> None:
    await api.post("/instance/create", json=_create("a"))
    await asyncio.sleep(0.05)
    answers = await asyncio.gather(*(api.post("/_sandbox/instances/a/scan") for _ in range(5)))
    assert sorted(r.status_code for r in answers) == [200, 409, 409, 409, 409]


async def test_the_scanning_phone_can_be_named_and_its_number_is_the_owner(
    api: httpx.AsyncClient,
) -> None:
    for name in ("a", "b"):
        await api.post("/instance/create", json=_create(name))
    await asyncio.sleep(0.05)
    refused = await api.post("/_sandbox/instances/a/scan", params={"number": "55 11 9x"})
    scanned = await api.post("/_sandbox/instances/a/scan", params={"number": "+55 11 90000-0007"})
    await api.post("/_sandbox/instances/b/scan")
    await asyncio.sleep(0.05)

    assert refused.status_code == 400 and scanned.status_code == 200
    owners = {row["name"]: row["ownerJid"] for row in
              (await api.get("/instance/fetchInstances")).json()}  # fmt: skip
    assert owners["a"] == "5511900000007@s.whatsapp.net"
    assert owners["b"] is not None and owners["b"].endswith("@s.whatsapp.net")


async def test_restarts_one_on_another_bring_a_paired_number_back_open(
    api: httpx.AsyncClient,
) -> None:
    """The second restart finds the instance reconnecting from the first: it still holds
    the number's credentials, so it resumes again instead of showing QR codes."""
    await api.post("/instance/create", json=_create("a"))
    await asyncio.sleep(0.05)
    await api.post("/_sandbox/instances/a/scan")
    await asyncio.sleep(0.05)

    await asyncio.gather(*(api.post("/instance/restart/a") for _ in range(2)))
    await asyncio.sleep(0.05)

    shown = {i["instance"]: i for i in (await api.get("/_sandbox/instances")).json()}
    assert shown["a"]["state"] == "open"


async def test_instances_survive_a_restart_and_connect_again(tmp_path: Path) -> None:
    state = tmp_path / "sandbox.json"
    config = SandboxConfig(global_key=KEY, time_scale=0.001, state_file=state)
    hook = {"url": "http://x", "events": [], "headers": {"x-evochips-token": "s"}}

    first = create_sandbox(config)
    async with _lifespan(first), _client(first) as api:
        await api.post("/instance/create", json=_create("paired", webhook=hook))
        await api.post("/instance/create", json=_create("waiting"))
        await asyncio.sleep(0.05)
        await api.post("/_sandbox/instances/paired/scan")
        await asyncio.sleep(0.05)
        token = (await api.get("/instance/fetchInstances")).json()[0]["token"]

    second = create_sandbox(config)
    async with _lifespan(second), _client(second) as api:
        await asyncio.sleep(0.05)
        shown = {i["instance"]: i for i in (await api.get("/_sandbox/instances")).json()}
        found = await api.get("/webhook/find/paired", headers={"apikey": token})

    assert shown["paired"]["state"] == "open" and shown["paired"]["wuid"]
    assert shown["waiting"]["state"] == "connecting"
    assert found.status_code == 200 and found.json()["headers"] == hook["headers"]


async def test_a_sandbox_killed_without_warning_keeps_what_it_had_a_moment_before(
    tmp_path: Path,
) -> None:
    """The state file is written while the sandbox runs, not only when it stops: a
    ``kill -9`` must not make a restarted sandbox forget instances whose chips live on."""
    state = tmp_path / "sandbox.json"
    config = SandboxConfig(global_key=KEY, time_scale=0.001, state_file=state, save_every=0.02)
    sandbox = create_sandbox(config)
    async with _lifespan(sandbox), _client(sandbox) as api:
        await api.post("/instance/create", json=_create("paired"))
        await asyncio.sleep(0.05)
        await api.post("/_sandbox/instances/paired/scan")
        for _ in range(100):  # the scan opens the instance a moment later
            await asyncio.sleep(0.02)
            kept = json.loads(state.read_text()) if state.exists() else []
            if kept and kept[0]["paired"]:
                break
        # Read while it still runs: all a kill -9 would leave behind.
        assert [(row["name"], row["paired"]) for row in kept] == [("paired", True)]


@contextlib.asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    async with app.router.lifespan_context(app):
        yield


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="http://evolution.test", headers={"apikey": KEY})  # fmt: skip
