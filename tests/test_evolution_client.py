"""Every Evolution response sample, served to the client and classified."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from evochips.evolution.client import EvolutionClient
from evochips.evolution.errors import (
    EvolutionProtocolError,
    EvolutionRejected,
    EvolutionTimeout,
    EvolutionUnauthorized,
    EvolutionUnavailable,
    InstanceNameInUse,
    InstanceNotFound,
)
from evochips.evolution.shapes import (
    DeleteOutcome,
    InstanceInfo,
    InstanceState,
    LogoutOutcome,
    QrCode,
    WebhookInfo,
    WebhookTarget,
    create_body,
    webhook_body,
)
from tests.conftest import SAMPLES, load_json
from tests.helpers import evolution_with, json_response

HOOK = WebhookTarget("https://chips.example.com/hooks/evolution", {"x-evochips-token": "s"})
Call = Callable[[EvolutionClient], Awaitable[Any]]


def _status_of(sample: str) -> int:
    found = re.search(r"-(\d{3})(?:-|$)", sample)
    return int(found.group(1)) if found else 200


def _qr(sample: str) -> QrCode:
    body = load_json(SAMPLES / f"{sample}.json")
    body = body.get("qrcode", body)
    return QrCode(body.get("base64"), body.get("code"), body.get("pairingCode"), body["count"])


CONNECT: Call = lambda c: c.connect("chip-0001")  # noqa: E731
STATE: Call = lambda c: c.connection_state("chip-0001")  # noqa: E731
CREATE: Call = lambda c: c.create_instance("chip-0001", HOOK)  # noqa: E731
RESTART: Call = lambda c: c.restart("chip-0001")  # noqa: E731
LOGOUT: Call = lambda c: c.logout("chip-0001")  # noqa: E731
DELETE: Call = lambda c: c.delete("chip-0001")  # noqa: E731
FETCH: Call = lambda c: c.fetch_instance("chip-0001")  # noqa: E731
FIND_HOOK: Call = lambda c: c.find_webhook("chip-0001")  # noqa: E731
SET_HOOK: Call = lambda c: c.set_webhook("chip-0001", HOOK)  # noqa: E731

OPEN = InstanceState("open")
ALPHA_V2 = InstanceInfo("chip-0001", "5f2b8c1e-3d4a-4b6f-9a7e-1c2d3e4f5a6b", "open",
                        "5511900000001@s.whatsapp.net", integration="WHATSAPP-BAILEYS")  # fmt: skip
V2_HOOK = WebhookInfo("https://chips.example.com/hooks/evolution", True, (
    "QRCODE_UPDATED", "CONNECTION_UPDATE", "STATUS_INSTANCE", "LOGOUT_INSTANCE",
    "REMOVE_INSTANCE", "INSTANCE_CREATE", "INSTANCE_DELETE",
))  # fmt: skip
V1_HOOK = WebhookInfo("https://chips.example.com/hooks/evolution", True,
                      ("QRCODE_UPDATED", "CONNECTION_UPDATE"))  # fmt: skip

# sample, API version, call, expected value or (exception type, words in its message)
CASES: list[tuple[str, int, Call, Any]] = [
    ("v1-connect-already-open", 1, CONNECT, OPEN),
    ("v1-connect-qrcode", 1, CONNECT, _qr("v1-connect-qrcode")),
    ("v1-connection-state-open", 1, STATE, "open"),
    ("v1-create-201", 1, CREATE, "created:5f2b8c1e-3d4a-4b6f-9a7e-1c2d3e4f5a6b:created:qr"),
    ("v1-create-400-token-already-exists", 1, CREATE, (EvolutionRejected, "Token already")),
    ("v1-create-400-webhook-object-rejected", 1, CREATE,
     (EvolutionRejected, "webhook is not of a type(s) string")),
    ("v1-create-403-name-in-use", 1, CREATE, (InstanceNameInUse, "already in use")),
    ("v1-delete-400-needs-disconnect", 1, DELETE, (EvolutionRejected, "disconnected")),
    ("v1-delete-404", 1, DELETE, DeleteOutcome.ABSENT),
    ("v1-delete-success", 1, DELETE, DeleteOutcome.DELETED),
    ("v1-error-401-unauthorized", 1, STATE, (EvolutionUnauthorized, "EVOLUTION_API_KEY")),
    ("v1-fetch-instances", 1, FETCH,
     InstanceInfo("chip-0001", "5f2b8c1e-3d4a-4b6f-9a7e-1c2d3e4f5a6b", "open",
                  "5511900000001@s.whatsapp.net")),
    ("v1-find-webhook", 1, FIND_HOOK, V1_HOOK),
    ("v1-find-webhook-not-set", 1, FIND_HOOK, None),
    ("v1-logout-400-not-connected", 1, LOGOUT, LogoutOutcome.NOT_CONNECTED),
    ("v1-logout-success", 1, LOGOUT, LogoutOutcome.LOGGED_OUT),
    # What a v1 server says when it is mistaken for v2: a missing route, not a missing instance.
    ("v1-restart-post-404", 2, RESTART, (EvolutionRejected, "Cannot POST")),
    ("v1-restart-put", 1, RESTART, OPEN),
    ("v1-set-webhook-201", 1, SET_HOOK, V1_HOOK),
    ("v2-connect-already-open", 2, CONNECT, OPEN),
    ("v2-connect-pairing-code", 2, CONNECT, _qr("v2-connect-pairing-code")),
    ("v2-connect-qrcode", 2, CONNECT, _qr("v2-connect-qrcode")),
    ("v2-connect-qrcode-not-ready", 2, CONNECT, QrCode(count=0)),
    ("v2-connection-state-404", 2, STATE, (InstanceNotFound, "does not exist")),
    ("v2-connection-state-close", 2, STATE, "close"),
    ("v2-connection-state-connecting", 2, STATE, "connecting"),
    ("v2-connection-state-open", 2, STATE, "open"),
    ("v2-create-201", 2, CREATE, "created:5f2b8c1e-3d4a-4b6f-9a7e-1c2d3e4f5a6b:connecting:qr"),
    ("v2-create-201-no-qrcode-requested", 2, CREATE,
     "created:a9d4e6f1-2b3c-4d5e-8f70-112233445566:close:none"),
    ("v2-create-201-qrcode-not-ready", 2, CREATE,
     "created:a9d4e6f1-2b3c-4d5e-8f70-112233445566:connecting:count0"),
    ("v2-create-400-invalid-integration", 2, CREATE, (EvolutionRejected, "Invalid integration")),
    ("v2-create-400-webhook-without-events", 2, CREATE, (EvolutionRejected, "reading 'length'")),
    ("v2-create-403-name-in-use", 2, CREATE, (InstanceNameInUse, "already in use")),
    ("v2-delete-404", 2, DELETE, DeleteOutcome.ABSENT),
    ("v2-delete-success", 2, DELETE, DeleteOutcome.DELETED),
    ("v2-error-401-unauthorized", 2, CONNECT, (EvolutionUnauthorized, "401")),
    ("v2-fetch-instances", 2, FETCH, ALPHA_V2),
    ("v2-fetch-instances-404", 2, FETCH, None),
    ("v2-find-webhook", 2, FIND_HOOK, V2_HOOK),
    ("v2-find-webhook-not-set", 2, FIND_HOOK, None),
    ("v2-logout-400-not-connected", 2, LOGOUT, LogoutOutcome.NOT_CONNECTED),
    ("v2-logout-success", 2, LOGOUT, LogoutOutcome.LOGGED_OUT),
    ("v2-restart-post-open", 2, RESTART, OPEN),
    ("v2-restart-put-404", 1, RESTART, (EvolutionRejected, "Cannot PUT")),
    ("v2-set-webhook-201", 2, SET_HOOK, V2_HOOK),
    ("v2-set-webhook-201-empty-events-means-all", 2, SET_HOOK,
     WebhookInfo(HOOK.url, True, tuple(
         load_json(SAMPLES / "v2-set-webhook-201-empty-events-means-all.json")["events"]))),
    ("v2-set-webhook-400-missing-webhook", 2, SET_HOOK,
     (EvolutionRejected, "requires property")),
    ("v2-set-webhook-500-enabled-without-events", 2, SET_HOOK,
     (EvolutionRejected, "reading 'length'")),
]  # fmt: skip
REQUEST_SAMPLES = {"v1-create-request", "v2-create-request", "v1-set-webhook-request",
                   "v2-set-webhook-request"}  # fmt: skip


def _summary(value: Any) -> Any:
    """Created instances are compared by the facts that matter."""
    if hasattr(value, "instance_id") and hasattr(value, "qr"):
        qr = value.qr
        shown = "none" if qr is None else ("qr" if qr.ready else f"count{qr.count}")
        return f"created:{value.instance_id}:{value.status}:{shown}"
    return value


@pytest.mark.parametrize(("sample", "version", "call", "expected"), CASES)
async def test_response_sample_is_classified(
    sample: str, version: int, call: Call, expected: Any
) -> None:
    raw = (SAMPLES / f"{sample}.json").read_bytes()
    status = _status_of(sample)
    client = evolution_with(
        lambda request: httpx.Response(
            status, content=raw, headers={"content-type": "application/json; charset=utf-8"}
        ),
        api_version=version,
    )
    async with client:
        if isinstance(expected, tuple):
            kind, words = expected
            with pytest.raises(kind) as caught:
                await call(client)
            assert words in str(caught.value)
            assert type(caught.value) is kind
        else:
            assert _summary(await call(client)) == expected


def test_every_response_sample_is_covered() -> None:
    responses = {p.stem for p in SAMPLES.glob("v[12]-*.json")} - {
        p.stem for p in SAMPLES.glob("v[12]-webhook-*.json")
    }
    assert responses == {case[0] for case in CASES} | REQUEST_SAMPLES


@pytest.mark.parametrize(
    ("version", "sample", "build"),
    [
        (2, "v2-create-request", lambda v: create_body(v, "chip-0001", HOOK)),
        (1, "v1-create-request", lambda v: create_body(v, "chip-0001", HOOK)),
        (2, "v2-set-webhook-request", lambda v: webhook_body(v, HOOK)),
        (1, "v1-set-webhook-request", lambda v: webhook_body(v, HOOK)),
    ],
)
def test_request_bodies_have_the_reference_shape(
    version: int, sample: str, build: Callable[[int], dict[str, Any]]
) -> None:
    reference = _shape(load_json(SAMPLES / f"{sample}.json"))
    ours = _shape(build(version))
    assert reference - ours == set()
    # v1's webhook/set takes an optional "enabled" the reference request leaves out.
    assert ours - reference <= {"enabled"}


def _shape(body: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in body.items():
        keys.add(prefix + key)
        if isinstance(value, dict) and key != "headers":
            keys |= _shape(value, f"{prefix}{key}.")
    return keys


async def test_create_sends_global_key_webhook_and_our_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response(201, load_json(SAMPLES / "v2-create-201.json"))

    async with evolution_with(handler) as client:
        await client.create_instance("chip-0001", HOOK)

    body = json.loads(seen[0].content)
    assert seen[0].headers["apikey"] == "test-global-key"
    assert body["integration"] == "WHATSAPP-BAILEYS" and body["qrcode"] is True
    assert body["webhook"]["headers"] == {"x-evochips-token": "s"}
    assert "CONNECTION_UPDATE" in body["webhook"]["events"]


@pytest.mark.parametrize(("root", "expected"), [("1.8.2", 1), ("2.3.6", 2), ("2.2.3", 2)])
async def test_version_is_detected_once_from_root(root: str, expected: int) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.url.path == "/":
            return json_response(200, {"status": 200, "version": root})
        return json_response(200, {"instance": {"instanceName": "chip-0001", "state": "open"}})

    async with evolution_with(handler, api_version=None) as client:
        await client.restart("chip-0001")
        await client.restart("chip-0001")
        assert await client.api_version() == expected

    restart = f"{'PUT' if expected == 1 else 'POST'} /instance/restart/chip-0001"
    assert calls == ["GET /", restart, restart]


@pytest.mark.parametrize(
    ("status", "content", "kind", "words"),
    [
        (200, b'{"error":true,"message":"[object Object]"}', EvolutionProtocolError, "object"),
        (200, b"", EvolutionProtocolError, "empty"),
        (200, b"<html>oops</html>", EvolutionProtocolError, "not JSON"),
        (502, b"<html>Bad Gateway</html>", EvolutionRejected, "502"),
        (200, b"[1, 2]", EvolutionProtocolError, "not a JSON object"),
    ],
)
async def test_untrustworthy_answers_are_errors(
    status: int, content: bytes, kind: type[Exception], words: str
) -> None:
    async with evolution_with(lambda r: httpx.Response(status, content=content)) as client:
        with pytest.raises(kind) as caught:
            await client.connect("chip-0001")
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.ConnectError("refused"), EvolutionUnavailable),
        (httpx.ReadTimeout("slow"), EvolutionTimeout),
        (httpx.ConnectTimeout("slow"), EvolutionTimeout),
    ],
)
async def test_transport_failures_are_unavailable(error: Exception, kind: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    async with evolution_with(handler) as client:
        with pytest.raises(kind) as caught:
            await client.connection_state("chip-0001")
    assert caught.value.retryable  # type: ignore[attr-defined]


def test_create_waits_long_enough_for_evolutions_five_second_sleep() -> None:
    from evochips.evolution.client import CREATE_TIMEOUT, DEFAULT_TIMEOUT

    assert CREATE_TIMEOUT.read is not None and CREATE_TIMEOUT.read >= 30
    assert all(
        value is not None
        for value in (DEFAULT_TIMEOUT.connect, DEFAULT_TIMEOUT.read, DEFAULT_TIMEOUT.pool)
    )


async def test_reads_are_retried_until_they_pass() -> None:
    answers = [json_response(503, {"status": 503}), httpx.ConnectError("refused")]
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        answer = answers.pop(0) if answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer or json_response(200, {"instance": {"instanceName": "x", "state": "open"}})

    async with evolution_with(handler, read_attempts=3) as client:
        assert await client.connection_state("x") == "open"
    assert calls == ["GET", "GET", "GET"]


@pytest.mark.parametrize(
    ("call", "status", "body"),
    [
        (LOGOUT, 500, {"status": 500, "response": {"message": ["Error: Connection Closed"]}}),
        (STATE, 404, load_json(SAMPLES / "v2-connection-state-404.json")),
        (STATE, 401, load_json(SAMPLES / "v2-error-401-unauthorized.json")),
    ],
)
async def test_changes_and_final_answers_are_not_retried(
    call: Call, status: int, body: Any
) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return json_response(status, body)

    async with evolution_with(handler, read_attempts=3) as client:
        with pytest.raises(EvolutionRejected):
            await call(client)
    assert len(calls) == 1


async def test_reads_give_up_after_the_last_attempt() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        raise httpx.ConnectError("refused")

    async with evolution_with(handler, read_attempts=3) as client:
        with pytest.raises(EvolutionUnavailable):
            await client.connection_state("x")
    assert len(calls) == 3


def test_v1_is_given_the_url_that_carries_the_secret() -> None:
    hook = WebhookTarget("http://e/webhooks/evolution", {"x-evochips-token": "s"},
                         headerless_url="http://e/webhooks/evolution/k/s")  # fmt: skip
    assert create_body(1, "chip-0001", hook)["webhook"] == "http://e/webhooks/evolution/k/s"
    assert webhook_body(1, hook)["url"] == "http://e/webhooks/evolution/k/s"
    v2 = create_body(2, "chip-0001", hook)["webhook"]
    assert (v2["url"], v2["headers"]) == ("http://e/webhooks/evolution", {"x-evochips-token": "s"})


@pytest.mark.parametrize(
    ("call", "content"),
    [
        (CONNECT, b"[" * 100_000 + b"]" * 100_000),
        (LOGOUT, b"[]"),
        (DELETE, b'"ok"'),
    ],
    ids=["deep-json", "logout-list", "delete-string"],
)
async def test_answers_of_the_wrong_shape_are_protocol_errors(call: Call, content: bytes) -> None:
    async with evolution_with(lambda r: httpx.Response(200, content=content)) as client:
        with pytest.raises(EvolutionProtocolError):
            await call(client)


async def test_a_trickling_answer_ends_at_the_call_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("evochips.evolution.client.CALL_DEADLINE_SECONDS", 0.2)

    class Trickle(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(5)
            return json_response(200, {})

    client = EvolutionClient("http://e.test", "k", api_version=2, transport=Trickle(),
                             read_attempts=1)  # fmt: skip
    async with client:
        with pytest.raises(EvolutionTimeout):
            await client.connection_state("chip-0001")
