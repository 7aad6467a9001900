"""Field cases B02, B06, B08, B14 and B23: what evochips does today, and, where a case
asks for something evochips does not have yet, the reason next to the assertion.

Not built yet, and so not asserted: an ``unstable`` flag after repeated closes (B02), a
watchdog that marks a chip ``stuck`` when no QR comes (B06), a ``misconfigured`` flag
for a non-Baileys instance (B08), turning a polled 404 into ``gone`` (B14, which is
reconciliation's job), and comparing the paired number with the registered one (B23).
"""

from __future__ import annotations

import httpx

from evochips.db import Database
from evochips.evolution.shapes import WebhookTarget
from evochips.manager import InstanceManager
from tests.chips import given_chip
from tests.field_cases import answering, deliver, steps_of
from tests.helpers import assert_history_consistent, chip_named, evolution_with
from tests.helpers import steps as history

HOOK = WebhookTarget("http://evochips.test/webhooks/evolution")


async def test_b02_a_flapping_connection_is_recorded_whole_and_calls_nothing(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    chip = await given_chip(db, "chip-01", "active", "open")
    for step in steps_of("B02"):
        response = await deliver(receiver, step)
        assert response.status_code == 200 and response.json()["outcome"] == "applied"
        expected = step["expect"]["chip_state"]
        assert (await chip_named(db, "chip-01")).connection_state == expected
    # Every change is in the audit (3 cycles of close, connecting, open, then connecting),
    # the status stays active (440 is a close Evolution recovers from), and the receiver
    # never calls Evolution back: it has no client to call it with.
    changes = (await history(db, "chip-01"))[4:]
    assert len(changes) == 10 and all(s.endswith("active->active") for s in changes)
    await assert_history_consistent(db, chip.id)


async def test_b06_count_zero_is_no_qr_and_the_chip_keeps_waiting(db: Database) -> None:
    no_qr, still_connecting, _watchdog = steps_of("B06")
    await given_chip(db, "chip-01", "pending", "connecting")
    _, handler = answering(no_qr, still_connecting)
    manager = InstanceManager(db, evolution_with(handler), HOOK)

    qr = await manager.obter_qr_code("chip-01")
    state = await manager.verificar_conexao("chip-01")

    assert qr == {"sucesso": True, "qr_code": None, "code": None, "connected": False}
    assert state == {"sucesso": True, "state": "connecting", "connected": False}
    chip = await chip_named(db, "chip-01")
    assert (chip.status, chip.connection_state, chip.evolution_qr_code) == (
        "pending", "connecting", None,
    )  # fmt: skip


async def test_b08_evolution_saying_open_is_not_a_pairing(db: Database) -> None:
    created_open, listed_open, bad_integration, not_connected = steps_of("B08")
    manager = InstanceManager(db, evolution_with(answering(created_open)[1]), HOOK)

    result = await manager.criar_instancia("chip-01", "5511900000001")

    # Only a connection.update open (with a wuid) pairs a chip: a create answer or a
    # listing that says "open" moves nothing.
    assert result["sucesso"] is True
    chip = await chip_named(db, "chip-01")
    assert (chip.status, chip.connection_state, chip.owner_jid) == ("pending", "close", None)
    assert listed_open["response"]["body"][0]["ownerJid"] is None

    manager = InstanceManager(db, evolution_with(answering(bad_integration)[1]), HOOK)
    refused = await manager.criar_instancia("chip-09", "5511900000009")
    assert refused["sucesso"] is False and "Invalid integration" in refused["error"]
    assert (await chip_named(db, "chip-09")).status == "deleted"

    stale = await given_chip(db, "chip-10", "warming", "open")
    manager = InstanceManager(db, evolution_with(answering(not_connected)[1]), HOOK)
    logged_out = await manager.desconectar_instancia("chip-10", stale.id)
    assert logged_out["sucesso"] is True
    assert (await chip_named(db, "chip-10")).connection_state == "close"


async def test_b14_an_instance_removed_by_evolution_deletes_its_chip(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    removed, polled_404 = steps_of("B14")
    await given_chip(db, "chip-01", "pending", "close")

    response = await deliver(receiver, removed)

    assert response.status_code == 200
    chip = await chip_named(db, "chip-01")
    assert chip.status == "deleted" and chip.deleted_at is not None
    assert (await history(db, "chip-01"))[-1] == "removed:pending->deleted"

    # A polled 404 is reported, and the chip left for reconciliation to judge.
    await given_chip(db, "chip-03", "pending", "close")
    manager = InstanceManager(db, evolution_with(answering(polled_404)[1]), HOOK)
    result = await manager.verificar_conexao("chip-03")
    assert result["sucesso"] is False and "does not exist" in result["error"]
    assert (await chip_named(db, "chip-03")).status == "pending"


async def test_b23_the_paired_number_is_kept_as_whatsapp_gives_it(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    without_ninth, with_device = steps_of("B23")[:2]
    await given_chip(db, "chip-01", "pending", "connecting", telefone="5547990000001")
    await given_chip(db, "chip-05", "pending", "connecting", telefone="5511900000005")

    for step in (without_ninth, with_device):
        assert (await deliver(receiver, step)).status_code == 200

    assert (await chip_named(db, "chip-01")).owner_jid == "554790000001@s.whatsapp.net"
    assert (await chip_named(db, "chip-05")).owner_jid == "5511900000005:12@s.whatsapp.net"
    assert (await chip_named(db, "chip-01")).telefone == "5547990000001"
