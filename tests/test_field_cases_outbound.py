"""Field cases about Evolution's answers to commands: B12, B18, B20 and B21.

B19 (asyncpg behind pgbouncer in transaction mode) cannot run here: there is no pooler
on this machine. SQLAlchemy's asyncpg dialect takes ``?prepared_statement_cache_size=0``
in EVOCHIPS_DATABASE_URL for it, as the README says.
"""

from __future__ import annotations

import pytest

from evochips.db import Database
from evochips.evolution.errors import EvolutionRejected
from evochips.evolution.shapes import WebhookTarget
from evochips.manager import InstanceManager
from tests.chips import given_chip
from tests.field_cases import answer, answering, steps_of
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
    assert (await chip_named(db, "chip-01")).status == "warming", "the chip is not gone"
    assert post_404["expect"]["client_outcome"] == "route_not_found"

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


@pytest.mark.parametrize("index", range(4))
async def test_b20_evolution_down_or_slow_changes_no_chip(db: Database, index: int) -> None:
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
