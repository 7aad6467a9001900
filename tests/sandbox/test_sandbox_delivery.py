"""How the sandbox delivers webhooks and shows QR codes: what a backend tested against it
relies on (retries, headers, JWT, by-events URLs, the global webhook, readable QRs)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
import zxingcpp
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from evochips.sandbox import SandboxConfig, create_sandbox

KEY = "sandbox-test-key"
HOOK = "http://sink.test/hook"


@dataclass
class Sink:
    """A webhook receiver that answers from a script and remembers what it got."""

    answers: list[int] = field(default_factory=list)
    received: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def take(request: Request) -> Response:
            body = await request.json()
            self.received.append((request.url.path, dict(request.headers), body))
            return Response(status_code=self.answers.pop(0) if self.answers else 200)

        return Starlette(routes=[Route("/{path:path}", take, methods=["POST"])])

    def events(self) -> list[str]:
        return [body["event"] for _, _, body in self.received]


@dataclass
class Rig:
    sink: Sink
    api: httpx.AsyncClient
    sandbox: Starlette

    async def settle(self) -> None:
        await asyncio.sleep(0.05)
        await self.sandbox.state.world.deliverer.drain()


async def _rig(**config: Any) -> AsyncIterator[Rig]:
    sink = Sink()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=sink.app()))
    sandbox = create_sandbox(SandboxConfig(global_key=KEY, time_scale=0.001, **config), http)
    transport = httpx.ASGITransport(app=sandbox)
    async with httpx.AsyncClient(transport=transport, base_url="http://evolution.test",
                                 headers={"apikey": KEY}) as api:  # fmt: skip
        yield Rig(sink, api, sandbox)
    await sandbox.state.world.aclose()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async for made in _rig():
        yield made


def _create(name: str, **webhook: Any) -> dict[str, Any]:
    hook = {"url": HOOK, "byEvents": False, "base64": False,
            "events": ["QRCODE_UPDATED", "CONNECTION_UPDATE", "STATUS_INSTANCE",
                       "LOGOUT_INSTANCE", "REMOVE_INSTANCE"]} | webhook  # fmt: skip
    return {"instanceName": name, "integration": "WHATSAPP-BAILEYS", "qrcode": True,
            "webhook": hook}  # fmt: skip


async def test_a_failed_delivery_is_retried_until_it_lands(rig: Rig) -> None:
    rig.sink.answers = [500, 503]
    await rig.api.post("/instance/create", json=_create("a", events=["CONNECTION_UPDATE"]))
    await rig.settle()

    (delivery,) = rig.sandbox.state.world.deliverer.deliveries
    assert delivery.attempts == [500, 503, 200] and delivery.delivered


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_no_retry_after_an_answer_evolution_treats_as_final(rig: Rig, status: int) -> None:
    rig.sink.answers = [status]
    await rig.api.post("/instance/create", json=_create("a", events=["CONNECTION_UPDATE"]))
    await rig.settle()

    (delivery,) = rig.sandbox.state.world.deliverer.deliveries
    assert delivery.attempts == [status] and not delivery.delivered


async def test_v1_tries_once() -> None:
    async for rig in _rig(version=1):
        rig.sink.answers = [500]
        body = {"instanceName": "a", "qrcode": True, "token": "T", "webhook": HOOK,
                "events": ["CONNECTION_UPDATE"]}  # fmt: skip
        await rig.api.post("/instance/create", json=body)
        await rig.settle()
        (delivery,) = rig.sandbox.state.world.deliverer.deliveries
        assert delivery.attempts == [500]


async def test_headers_jwt_and_by_events_suffix(rig: Rig) -> None:
    headers = {"x-evochips-token": "secret-1", "jwt_key": "jwt-secret-0123456789abcdef0123456"}
    await rig.api.post("/instance/create", json=_create("a", byEvents=True, headers=headers))
    await rig.settle()

    path, received, body = rig.sink.received[0]
    assert path == "/hook/connection-update" and body["event"] == "connection.update"
    assert received["x-evochips-token"] == "secret-1" and "jwt_key" not in received
    claims = jwt.decode(received["authorization"].removeprefix("Bearer "),
                        headers["jwt_key"], algorithms=["HS256"])  # fmt: skip
    assert claims["exp"] - claims["iat"] == 600 and claims["app"] == "evolution"
    assert body["destination"] == HOOK, "destination is the base URL, without the suffix"


async def test_global_webhook_gets_no_custom_headers_and_no_per_instance_events() -> None:
    async for rig in _rig(global_webhook_url="http://sink.test/global"):
        created = _create("a", headers={"x-evochips-token": "secret-1"})
        await rig.api.post("/instance/create", json=created)
        await rig.settle()
        await rig.api.post("/_sandbox/instances/a/qr-limit")
        await rig.api.delete("/instance/delete/a")
        await rig.settle()

        global_ = [(h, b) for p, h, b in rig.sink.received if p == "/global"]
        assert global_ and all("x-evochips-token" not in h for h, _ in global_)
        assert {b["event"] for _, b in global_} >= {
            "connection.update",
            "qrcode.updated",
            "instance.create",
            "instance.delete",
        }
        assert not {b["event"] for _, b in global_} & {
            "remove.instance",
            "logout.instance",
            "status.instance",
        }


async def test_envelope_is_evolutions(rig: Rig) -> None:
    await rig.api.post("/instance/create", json=_create("a", events=["CONNECTION_UPDATE"]))
    await rig.settle()
    body = rig.sink.received[0][2]
    assert list(body) == ["event", "instance", "data", "destination", "date_time",
                          "server_url", "apikey"]  # fmt: skip
    assert body["date_time"].endswith("Z") and "sender" not in body


async def test_qr_codes_are_real_rotate_and_count_up(rig: Rig) -> None:
    await rig.api.post("/instance/create", json=_create("a"))
    await asyncio.sleep(0.3)  # several 45 ms "minutes"
    answer = (await rig.api.get("/instance/connect/a")).json()

    png = base64.b64decode(answer["base64"].split(",", 1)[1])
    (decoded,) = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert decoded.text == answer["code"] and answer["code"].startswith("2@")
    assert answer["count"] > 1
    shown = [b["data"]["qrcode"]["code"] for _, _, b in rig.sink.received
             if b["event"] == "qrcode.updated"]  # fmt: skip
    assert len(set(shown)) == len(shown) > 1


async def test_sender_appears_once_the_number_has_been_open(rig: Rig) -> None:
    await rig.api.post("/instance/create", json=_create("a"))
    await asyncio.sleep(0.05)
    await rig.api.post("/_sandbox/instances/a/scan")
    await asyncio.sleep(0.05)
    await rig.settle()
    connection = [b for _, _, b in rig.sink.received if b["event"] == "connection.update"]
    assert "sender" not in connection[0] and connection[-1]["data"]["state"] == "open"
    assert connection[-1]["sender"] == connection[-1]["data"]["wuid"]


async def test_date_time_is_sao_paulo_wall_time_labelled_utc(rig: Rig) -> None:
    await rig.api.post("/instance/create", json=_create("a", events=["CONNECTION_UPDATE"]))
    await rig.settle()
    labelled = datetime.fromisoformat(rig.sink.received[0][2]["date_time"])
    behind = datetime.now(UTC) - labelled
    # São Paulo has kept UTC-3 all year since 2019: the "UTC" label is three hours early.
    assert timedelta(hours=3) - timedelta(minutes=1) < behind < timedelta(hours=3, minutes=1)
