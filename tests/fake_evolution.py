"""A stateful stand-in for an Evolution API 2.3 server, built from real recordings.

Bodies come from the transcripts of a real server (``evolution-live/``), with the recorded
instance name swapped for the requested one; what the offline recording could not show
(a QR that is ready, an open connection) comes from the reference samples. The same fake
serves an ``httpx.MockTransport`` and, through :meth:`FakeEvolution.asgi`, a real uvicorn
server on loopback.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import LIVE, SAMPLES, load_json

GLOBAL_KEY = "test-global-key"
RECORDED_NAME = "alpha"


def recorded(number: str) -> tuple[int, str]:
    """Status and body of live response ``number`` (e.g. ``"04"``)."""
    (path,) = LIVE.glob(f"{number}-*.response.txt")
    head, _, body = path.read_text().partition("\n\n")
    status = int(head.split()[1])
    return status, body.strip()


def _named(body: str, old: str, new: str) -> str:
    return body.replace(f'"{old}"', f'"{new}"').replace(f'\\"{old}\\"', f'\\"{new}\\"')


@dataclass
class FakeInstance:
    name: str
    token: str
    instance_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "connecting"
    qr_count: int = 0
    webhook_url: str | None = None
    disconnection_reason: int | None = None
    disconnection_at: str | None = None  # real UTC, as Evolution stores it


@dataclass
class FakeEvolution:
    qr_ready: bool = True
    instances: dict[str, FakeInstance] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)

    # -- playing the phone -------------------------------------------------------------

    def scan(self, name: str) -> None:
        self.instances[name].state = "open"

    # -- transports ----------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        status, answer = self.answer(
            request.method, request.url.path, request.headers, body, request.url.params
        )
        return httpx.Response(
            status, content=answer.encode(), headers={"content-type": "application/json"}
        )

    def asgi(self) -> Starlette:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            body = json.loads(raw) if raw else None
            status, answer = self.answer(
                request.method, request.url.path, request.headers, body, request.query_params
            )
            return Response(answer, status_code=status, media_type="application/json")

        methods = ["GET", "POST", "PUT", "DELETE"]
        return Starlette(routes=[Route("/{path:path}", endpoint, methods=methods)])

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- the server's behaviour ----------------------------------------------------------

    def answer(
        self, method: str, path: str, headers: Any, body: Any, query: Any = None
    ) -> tuple[int, str]:
        query = query or {}
        self.calls.append((method, path, body))
        if path == "/":
            return recorded("01")
        if (method, path) == ("POST", "/instance/create"):
            return self._create(headers, body)
        if (method, path) == ("GET", "/instance/fetchInstances"):
            return self._fetch(query.get("instanceName"))
        if method == "GET" and path.startswith("/webhook/find/"):
            return self._find_webhook(path.rsplit("/", 1)[-1])
        if method == "POST" and path.startswith("/webhook/set/"):
            return self._set_webhook(path.rsplit("/", 1)[-1], body)
        match = re.fullmatch(r"/instance/(\w+)/([^/]+)", path)
        if match is None:
            return 404, json.dumps(_error(404, "Not Found", [f"Cannot {method} {path}"]))
        action, name = match.groups()
        instance = self.instances.get(name)
        if instance is None:  # existence is checked before the key (reference section 1)
            status, text = recorded("23")
            return status, _named(text, "doesnotexist", name)
        if headers.get("apikey") not in (GLOBAL_KEY, instance.token):
            return recorded("29")
        handler = {
            ("GET", "connect"): self._connect,
            ("GET", "connectionState"): self._state,
            ("POST", "restart"): self._restart,
            ("DELETE", "logout"): self._logout,
            ("DELETE", "delete"): self._delete,
        }.get((method, action))
        if handler is None:
            return 404, json.dumps(_error(404, "Not Found", [f"Cannot {method} {path}"]))
        return handler(instance)

    def _create(self, headers: Any, body: dict[str, Any]) -> tuple[int, str]:
        name = body.get("instanceName")
        if name in self.instances:  # name in use is checked before the key
            status, text = recorded("14")
            return status, _named(text, RECORDED_NAME, name)
        if headers.get("apikey") != GLOBAL_KEY:
            return recorded("03")
        instance = FakeInstance(
            name=name,
            token=body.get("token") or str(uuid.uuid4()).upper(),
            webhook_url=(body.get("webhook") or {}).get("url"),
        )
        self.instances[name] = instance
        status, text = recorded("04")
        answer = json.loads(_named(text, RECORDED_NAME, name))
        answer["instance"]["instanceId"] = instance.instance_id
        answer["instance"]["status"] = "connecting"
        answer["hash"] = instance.token
        answer["webhook"]["webhookUrl"] = body["webhook"]["url"]
        answer["qrcode"] = self._next_qr(instance)
        return status, json.dumps(answer)

    def _fetch(self, name: str | None) -> tuple[int, str]:
        chosen = [i for i in self.instances.values() if name in (None, i.name)]
        if name is not None and not chosen:
            status, text = recorded("28")
            return status, _named(text, "doesnotexist", name)
        template = load_json(SAMPLES / "v2-fetch-instances.json")[0]
        rows = [
            {**template, "id": i.instance_id, "name": i.name, "connectionStatus": i.state,
             "ownerJid": None, "token": i.token,
             "disconnectionReasonCode": i.disconnection_reason,
             "disconnectionAt": i.disconnection_at}
            for i in chosen
        ]  # fmt: skip
        return 200, json.dumps(rows)

    def _find_webhook(self, name: str) -> tuple[int, str]:
        instance = self.instances.get(name)
        if instance is None:
            status, text = recorded("23")
            return status, _named(text, "doesnotexist", name)
        status, text = recorded("13")
        answer = json.loads(text)
        answer.update(url=instance.webhook_url, instanceId=instance.instance_id)
        return status, json.dumps(answer)

    def _set_webhook(self, name: str, body: Any) -> tuple[int, str]:
        """v2's set: ``{"webhook": {...}}`` in, 201 with the stored webhook out."""
        instance = self.instances.get(name)
        if instance is None:
            status, text = recorded("23")
            return status, _named(text, "doesnotexist", name)
        instance.webhook_url = body["webhook"]["url"]
        _, text = recorded("13")
        answer = json.loads(text)
        answer.update(url=instance.webhook_url, instanceId=instance.instance_id)
        return 201, json.dumps(answer)

    def _connect(self, instance: FakeInstance) -> tuple[int, str]:
        if instance.state == "open":
            return self._state(instance)
        instance.state = "connecting"
        return 200, json.dumps(self._next_qr(instance))

    def _state(self, instance: FakeInstance) -> tuple[int, str]:
        state = {"instanceName": instance.name, "state": instance.state}
        return 200, json.dumps({"instance": state})

    def _restart(self, instance: FakeInstance) -> tuple[int, str]:
        if instance.state == "close":
            # A closed instance cannot be restarted: Evolution hides the error in HTTP 200.
            return 200, json.dumps({"error": True, "message": "[object Object]"})
        if instance.state == "open":
            return self._state(instance)
        return recorded("30")

    def _logout(self, instance: FakeInstance) -> tuple[int, str]:
        if instance.state == "close":
            status, text = recorded("32")
            return status, _named(text, RECORDED_NAME, instance.name)
        instance.state = "close"
        # An API logout ends the socket with 401, which Evolution stores (reference 3.4).
        instance.disconnection_reason = 401
        return recorded("53")

    def _delete(self, instance: FakeInstance) -> tuple[int, str]:
        del self.instances[instance.name]
        return recorded("35")

    def _next_qr(self, instance: FakeInstance) -> dict[str, Any]:
        if not self.qr_ready:
            return {"count": 0}
        instance.qr_count += 1
        sample = load_json(SAMPLES / "v2-connect-qrcode.json")
        # Each QR Evolution shows is a new one; the count is cumulative.
        sample["code"] = f"2@{instance.name}-{instance.qr_count}," + sample["code"].split(",", 1)[1]
        sample["base64"] = "data:image/png;base64," + _png_1x1(instance.qr_count)
        sample["count"] = instance.qr_count
        return sample


def _png_1x1(shade: int) -> str:
    """A valid one-pixel PNG whose colour depends on ``shade``, so every QR image differs."""
    pixel = bytes([0, shade % 256, (shade // 256) % 256, 200])
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    png += chunk(b"IDAT", zlib.compress(pixel)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def _error(status: int, reason: str, message: list[str]) -> dict[str, Any]:
    return {"status": status, "error": reason, "response": {"message": message}}
