"""Every webhook sample from the Evolution reference, delivered over HTTP to the receiver."""

from __future__ import annotations

import httpx
import pytest

from evochips.db import Database, WebhookEventRow
from evochips.evolution.events import HANDLED_EVENTS, normalise_event_name
from tests.chips import given_chip
from tests.conftest import SAMPLES, load_json
from tests.helpers import assert_history_consistent, chip_named, count, transitions

# sample, the chip before (status, connection), the outcome, the chip after
CASES = [
    ("v2-webhook-connection-update-connecting", ("pending", "close"), "applied",
     ("pending", "connecting")),
    ("v2-webhook-connection-update-open", ("pending", "connecting"), "applied",
     ("warming", "open")),
    ("v2-webhook-connection-update-close-401", ("active", "open"), "applied",
     ("pending", "close")),
    ("v2-webhook-connection-update-refused", ("pending", "connecting"), "applied",
     ("pending", "refused")),
    ("v2-webhook-global-connection-update-connecting", ("pending", "close"), "applied",
     ("pending", "connecting")),
    ("v2-webhook-logout-instance", ("warming", "open"), "applied", ("pending", "close")),
    ("v2-webhook-remove-instance", ("ready", "open"), "applied", ("deleted", "close")),
    ("v2-webhook-qrcode-updated", ("pending", "connecting"), "applied",
     ("pending", "connecting")),
    ("v2-webhook-qrcode-updated-pairing-code", ("pending", "close"), "applied",
     ("pending", "connecting")),
    ("v2-webhook-status-instance-closed", ("warming", "open"), "applied", ("pending", "close")),
    ("v2-webhook-instance-create", ("pending", "close"), "ignored", ("pending", "close")),
    ("v2-webhook-instance-delete", ("pending", "close"), "ignored", ("pending", "close")),
    ("v1-webhook-connection-update-connecting", ("pending", "close"), "applied",
     ("pending", "connecting")),
    ("v1-webhook-connection-update-open", ("pending", "connecting"), "applied",
     ("warming", "open")),
    ("v1-webhook-connection-update-close-401", ("degraded", "open"), "applied",
     ("pending", "close")),
    ("v1-webhook-qrcode-updated", ("pending", "connecting"), "applied",
     ("pending", "connecting")),
    ("v1-webhook-qrcode-updated-limit-reached", ("pending", "connecting"), "applied",
     ("pending", "refused")),
    ("v1-webhook-global-instance-create", ("pending", "close"), "ignored", ("pending", "close")),
    ("v1-webhook-global-instance-delete", ("pending", "close"), "ignored", ("pending", "close")),
]  # fmt: skip


@pytest.mark.parametrize(("sample", "before", "outcome", "after"), CASES)
async def test_webhook_sample_moves_chip(
    db: Database,
    receiver: httpx.AsyncClient,
    sample: str,
    before: tuple[str, str],
    outcome: str,
    after: tuple[str, str],
) -> None:
    body = load_json(SAMPLES / f"{sample}.json")
    chip = await given_chip(db, body["instance"], *before)
    rows_before = len(await transitions(db, chip.id))

    response = await receiver.post("/webhooks/evolution", json=body)

    assert response.status_code == 200
    assert response.json()["outcome"] == outcome
    chip = await chip_named(db, body["instance"])
    assert (chip.status, chip.connection_state) == after
    moved = after != before
    assert len(await transitions(db, chip.id)) == rows_before + moved
    await assert_history_consistent(db, chip.id)
    # Events evochips does not handle (instance.create, ...) are answered, not stored.
    handled = normalise_event_name(body["event"]) in HANDLED_EVENTS
    assert await count(db, WebhookEventRow) == (1 if handled else 0)


def test_every_webhook_sample_is_covered() -> None:
    samples = {path.stem for path in SAMPLES.glob("v[12]-webhook-*.json")}
    assert samples == {case[0] for case in CASES}


async def test_open_records_owner_and_profile(db: Database, receiver: httpx.AsyncClient) -> None:
    body = load_json(SAMPLES / "v2-webhook-connection-update-open.json")
    await given_chip(db, "chip-0001", "pending", "connecting")

    await receiver.post("/webhooks/evolution", json=body)

    chip = await chip_named(db, "chip-0001")
    assert chip.owner_jid == "5511900000001@s.whatsapp.net"
    assert chip.profile_name == "Chip 0001"
    assert chip.evolution_connected is True
    assert chip.status_reason == 200


async def test_qr_event_stores_latest_qr(db: Database, receiver: httpx.AsyncClient) -> None:
    body = load_json(SAMPLES / "v2-webhook-qrcode-updated-pairing-code.json")
    await given_chip(db, "chip-0002", "pending", "close")

    await receiver.post("/webhooks/evolution", json=body)

    chip = await chip_named(db, "chip-0002")
    assert chip.evolution_qr_code == body["data"]["qrcode"]["base64"]
    assert chip.evolution_pairing_code == "K7QM4XZ2"


async def test_qr_limit_clears_stored_qr(db: Database, receiver: httpx.AsyncClient) -> None:
    await given_chip(db, "chip-0002", "pending", "close")
    await receiver.post(
        "/webhooks/evolution",
        json=load_json(SAMPLES / "v2-webhook-qrcode-updated-pairing-code.json"),
    )

    await receiver.post(
        "/webhooks/evolution", json=load_json(SAMPLES / "v2-webhook-connection-update-refused.json")
    )

    chip = await chip_named(db, "chip-0002")
    assert chip.connection_state == "refused"
    assert chip.evolution_qr_code is None and chip.evolution_pairing_code is None


async def test_remove_instance_keeps_history(db: Database, receiver: httpx.AsyncClient) -> None:
    chip = await given_chip(db, "chip-0001", "active", "open")

    await receiver.post(
        "/webhooks/evolution", json=load_json(SAMPLES / "v2-webhook-remove-instance.json")
    )

    chip = await chip_named(db, "chip-0001")
    assert chip.status == "deleted" and chip.deleted_at is not None
    history = await transitions(db, chip.id)
    assert [row.trigger for row in history] == [
        "registered", "connected", "promote", "activate", "removed",
    ]  # fmt: skip
