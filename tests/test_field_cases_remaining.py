"""Field cases B02, B06, B08, B14 and B23, each step asserted as its README says a chip
service should behave, in evochips' own names.

The field cases' states map onto evochips like this: ``created`` is ``pending/close``,
``gone`` is ``deleted``, and ``stuck``, ``unstable`` and ``misconfigured`` are flags on the
chip (``stuck_since``, ``unstable_since``, ``misconfigured``), not states, so a flagged
chip keeps its status and connection. Where a step does not apply, the reason is next to
it.
"""

from __future__ import annotations

import copy
import json
import logging
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from evochips import lifecycle
from evochips.db import Chip, Database
from evochips.db.models import utcnow
from evochips.evolution.shapes import WebhookTarget
from evochips.manager import InstanceManager, normalise_phone
from evochips.reconcile import Reconciler, ReconcileSettings
from tests.chips import given_chip
from tests.fake_evolution import FakeEvolution, FakeInstance
from tests.field_cases import (
    age_history,
    answering,
    deliver,
    listed,
    listed_by_cli,
    recording,
    routed,
    sample,
    step,
    steps_of,
    via_api,
)
from tests.helpers import assert_history_consistent, chip_named, evolution_with, transitions

HOOK = WebhookTarget("http://evochips.test/webhooks/evolution")
INSTANCE_ID = "00000000-0000-4000-8000-000000000001"


def _later(webhook: dict[str, Any], by: timedelta) -> dict[str, Any]:
    """The same webhook, emitted ``by`` later (so it is a new event, not a copy)."""
    later = copy.deepcopy(webhook)
    at = datetime.fromisoformat(later["body"]["date_time"].removesuffix("Z")) + by
    later["body"]["date_time"] = at.isoformat(timespec="milliseconds") + "Z"
    return later


def _lines(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


# -- B02: the connection flaps -------------------------------------------------------------


async def test_b02_a_flapping_chip_is_flagged_once_and_its_history_kept_whole(
    db: Database,
    database_url: str,
    receiver: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="evochips.lifecycle")
    chip = await given_chip(db, "chip-01", "active", "open")
    before = len(await transitions(db, chip.id))
    started = utcnow()

    for n, webhook in enumerate(steps_of("B02"), start=1):
        response = await deliver(receiver, webhook)
        assert response.status_code == 200 and response.json()["outcome"] == "applied"
        now = await chip_named(db, "chip-01")
        assert now.connection_state == webhook["expect"]["chip_state"]
        # The third close within 60 s (step 7) raises the flag; the rest keep it up.
        assert (now.unstable_since is not None) == (n >= 7), n
        if "unstable" in webhook["expect"].get("flags", []):
            assert now.unstable_since is not None

    # Every change is a row (the status stays: 440 is a close Evolution recovers from),
    # and the row of the third close is the one "flapping detected" marker.
    rows = (await transitions(db, chip.id))[before:]
    assert [f"{r.from_connection}->{r.to_connection}" for r in rows] == [
        webhook["expect"]["transition"] for webhook in steps_of("B02")
    ]
    assert {(r.from_status, r.to_status, r.source) for r in rows} == {
        ("active", "active", "webhook")
    }
    assert [n for n, row in enumerate(rows, start=1) if row.meta.get("unstable")] == [7]
    await assert_history_consistent(db, chip.id)
    # Four drops from open (three closes and the v2-style connecting), windowed from the
    # first close by Evolution's date_time; the flag itself carries our own time.
    chip = await chip_named(db, "chip-01")
    assert (chip.drops, chip.drops_since) == (4, datetime(2024, 8, 13, 19, 41, 47, 900000))
    assert chip.unstable_since is not None and started <= chip.unstable_since <= utcnow()
    # One line for the operator, not one per event; and the receiver calls no restart or
    # connect back (it has no Evolution client to call them with).
    assert len(_lines(caplog, "is unstable")) == 1

    shown = await via_api(db, "chip-01")
    assert shown["unstable"] is True and shown["unstable_since"] is not None
    row, line = await listed_by_cli(database_url, "chip-01")
    assert row["unstable"] is True and row["unstable_since"] is not None
    assert "unstable" in line.split()


async def test_b02_the_flag_comes_down_when_the_connection_holds_or_someone_acts(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    """The field case leaves clearing to the service: a reconciliation pass takes the flag
    down once the chip has stayed open, with no change, for EVOCHIPS_UNSTABLE_CLEAR_AFTER
    (our clock); a reconnect or a logout takes it down at once."""
    chip = await given_chip(db, "chip-01", "active", "open")
    fake = FakeEvolution()
    fake.instances["chip-01"] = FakeInstance(name="chip-01", token="T", state="open")
    await lifecycle.remember_instance(db, chip.id, fake.instances["chip-01"].instance_id)
    three_cycles = steps_of("B02")[:9]  # they end open again

    async def flap(hours: int) -> None:
        for webhook in three_cycles:
            assert (await deliver(receiver, _later(webhook, timedelta(hours=hours)))).is_success
        assert (await chip_named(db, "chip-01")).unstable_since is not None

    await flap(0)
    client = evolution_with(fake.handle)
    assert (await Reconciler(db, client, HOOK).run()).findings == [], "not steady for long"
    assert (await chip_named(db, "chip-01")).unstable_since is not None
    steady = ReconcileSettings(unstable_clear_after=timedelta(0))
    report = await Reconciler(db, client, HOOK, steady).run()
    assert [(f.kind, f.action) for f in report.findings] == [("stable_again", "cleared")]
    chip = await chip_named(db, "chip-01")
    assert (chip.unstable_since, chip.drops, chip.drops_since) == (None, 0, None)

    await flap(1)
    _, restarted = steps_of("B12")[2:]  # restart of an open instance answers its state
    manager = InstanceManager(db, evolution_with(answering(restarted)[1]), HOOK)
    assert (await manager.reconectar_instancia("chip-01", chip.id))["sucesso"] is True
    chip = await chip_named(db, "chip-01")
    assert (chip.unstable_since, chip.drops) == (None, 0)
    lowered = (await transitions(db, chip.id))[-1]
    assert (lowered.trigger, lowered.source) == ("steady_again", "command")

    await flap(2)
    logout = step(200, sample("v2-logout-success"))
    manager = InstanceManager(db, evolution_with(answering(logout)[1]), HOOK)
    assert (await manager.desconectar_instancia("chip-01", chip.id))["sucesso"] is True
    chip = await chip_named(db, "chip-01")
    assert (chip.status, chip.unstable_since, chip.drops) == ("pending", None, 0)
    await assert_history_consistent(db, chip.id)


# -- B06: no QR ever comes -----------------------------------------------------------------


async def test_b06_a_chip_that_never_gets_a_qr_is_flagged_stuck_by_the_watchdog(
    db: Database, database_url: str
) -> None:
    no_qr, still_connecting, watchdog = steps_of("B06")
    chip = await given_chip(db, "chip-01", "pending", "connecting")
    await lifecycle.remember_instance(db, chip.id, INSTANCE_ID)
    listing = step(200, [listed("chip-01", "connecting", INSTANCE_ID)])
    calls, handler = routed({
        "GET /instance/fetchInstances": [listing] * 3,
        "GET /instance/connect/chip-01": [no_qr, watchdog, step(200, sample("v2-connect-qrcode"))],
        "GET /instance/connectionState/chip-01": [still_connecting],
        "DELETE /instance/logout/chip-01": [step(200, sample("v2-logout-success"))],
    })  # fmt: skip
    evolution = evolution_with(handler)
    manager = InstanceManager(db, evolution, HOOK)
    watchdog_pass = Reconciler(
        db, evolution, HOOK, ReconcileSettings(stuck_after=timedelta(minutes=5))
    )

    # Step 1, a minute into connecting: {"count":0} is "no QR yet", and not stuck yet.
    await age_history(db, chip.id, timedelta(minutes=no_qr["given"]["connecting_since_minutes"]))
    assert await manager.obter_qr_code("chip-01") == {
        "sucesso": True, "qr_code": None, "code": None, "connected": False,
    }  # fmt: skip
    assert (await watchdog_pass.run()).findings == []

    # Step 2: Evolution says it is connecting, as the chip does.
    assert await manager.verificar_conexao("chip-01") == {
        "sucesso": True, "state": "connecting", "connected": False,
    }  # fmt: skip

    # Step 3, six minutes in and still no QR: the watchdog flags it, and says so in the
    # history with a row that moves nothing.
    await age_history(db, chip.id, timedelta(minutes=watchdog["given"]["connecting_since_minutes"]))
    assert (await manager.obter_qr_code("chip-01"))["qr_code"] is None
    report = await watchdog_pass.run()
    assert [(f.kind, f.action) for f in report.findings] == [("stuck", "flagged")]
    chip = await chip_named(db, "chip-01")
    assert chip.stuck_since is not None
    assert (chip.status, chip.connection_state, chip.evolution_qr_code) == (
        "pending", "connecting", None,
    )  # fmt: skip
    flagged = (await transitions(db, chip.id))[-1]
    assert (flagged.trigger, flagged.source) == ("flagged_stuck", "reconcile")
    assert (flagged.from_status, flagged.from_connection) == ("pending", "connecting")
    assert (flagged.to_status, flagged.to_connection) == ("pending", "connecting")
    assert "no QR" in flagged.meta["reason"] and "logout" in flagged.meta["remedy"]
    await assert_history_consistent(db, chip.id)
    assert (await watchdog_pass.run()).findings == [], "flagged once, not every pass"

    # Operators see it, in the API and in `chips list`.
    assert (await via_api(db, "chip-01"))["stuck_since"] is not None
    row, line = await listed_by_cli(database_url, "chip-01")
    assert row["stuck_since"] is not None and "stuck" in line.split()

    # The remedy, logout and connect, is a row each, and the QR it brings unflags the chip.
    assert (await manager.desconectar_instancia("chip-01", chip.id))["sucesso"] is True
    assert (await manager.obter_qr_code("chip-01"))["qr_code"] is not None
    remedy = (await transitions(db, chip.id))[-2:]
    assert [(r.trigger, r.source) for r in remedy] == [
        ("logged_out", "command"), ("qr_updated", "command"),
    ]  # fmt: skip
    assert (await chip_named(db, "chip-01")).stuck_since is None
    await assert_history_consistent(db, chip.id)
    assert calls.count("GET /instance/fetchInstances") == 3


# -- B08: an instance that says "open" with nothing paired ---------------------------------


async def test_b08_an_instance_that_is_not_baileys_is_flagged_and_never_taken_as_open(
    db: Database, database_url: str
) -> None:
    created_open, listed_open, bad_integration, not_connected = steps_of("B08")
    manager = InstanceManager(db, evolution_with(answering(created_open)[1]), HOOK)

    result = await manager.criar_instancia("chip-01", "5511900000001")

    # Created, but as an EVOLUTION channel instance: flagged, and not moved to open,
    # since only a connection.update open with a wuid pairs a chip.
    assert result["sucesso"] is True
    chip = await chip_named(db, "chip-01")
    assert (chip.status, chip.connection_state, chip.owner_jid) == ("pending", "close", None)
    assert chip.misconfigured is not None and "'EVOLUTION'" in chip.misconfigured
    assert chip.evolution_instance_id == INSTANCE_ID

    # Step 2: Evolution lists it open with no owner. A pass follows none of that, and
    # flags a chip it had not flagged yet (chip-02, listed the same way).
    chip_2 = await given_chip(db, "chip-02", "pending", "close", telefone="5511900000002")
    await lifecycle.remember_instance(db, chip_2.id, "00000000-0000-4000-8000-000000000002")
    listing = copy.deepcopy(listed_open)
    row_2 = {**listing["response"]["body"][0], "name": "chip-02"}
    listing["response"]["body"].append({**row_2, "id": "00000000-0000-4000-8000-000000000002"})
    calls, handler = answering(listing)
    report = await Reconciler(db, evolution_with(handler), HOOK).run()
    assert [(f.instance_name, f.kind, f.action) for f in report.findings] == [
        ("chip-02", "misconfigured", "flagged"),
    ]  # fmt: skip
    assert calls == ["GET /instance/fetchInstances"], "its state is not even asked"
    for name in ("chip-01", "chip-02"):
        listed_chip = await chip_named(db, name)
        assert (listed_chip.connection_state, listed_chip.misconfigured is not None) == (
            "close", True,
        )  # fmt: skip

    assert "'EVOLUTION'" in (await via_api(db, "chip-01"))["misconfigured"]
    row, line = await listed_by_cli(database_url, "chip-01")
    assert row["misconfigured"] is not None and "misconfigured" in line.split()

    # Step 3: a lower-case integration is refused; a permanent error, not retried.
    calls, handler = answering(bad_integration)
    manager = InstanceManager(db, evolution_with(handler), HOOK)
    refused = await manager.criar_instancia("chip-09", "5511900000009")
    assert refused["sucesso"] is False and "Invalid integration" in refused["error"]
    assert refused["error_code"] == "evolution_rejected" and len(calls) == 1
    assert (await chip_named(db, "chip-09")).status == "deleted"

    # Step 4: logout of an instance that is not connected is an idempotent success.
    stale = await given_chip(db, "chip-10", "warming", "open")
    manager = InstanceManager(db, evolution_with(answering(not_connected)[1]), HOOK)
    logged_out = await manager.desconectar_instancia("chip-10", stale.id)
    assert logged_out["sucesso"] is True and "not connected" in logged_out["message"]
    assert (await chip_named(db, "chip-10")).connection_state == "close"
    assert (await transitions(db, stale.id))[-1].meta == {"evolution": "not_connected"}


# -- B14: Evolution removes an instance by itself ------------------------------------------


async def test_b14_an_instance_removed_by_evolution_deletes_its_chip(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    """A polled 404 is left for reconciliation to act on rather than deleting the chip
    from the poll itself: deleting is final (the chip takes no command afterwards), so it
    is decided in one place, by a pass that reads the whole list and asks again by name
    before it deletes anything, within its budget and under its lease."""
    removed, polled_404 = steps_of("B14")
    await given_chip(db, "chip-01", "pending", "close")

    response = await deliver(receiver, removed)

    assert response.status_code == 200 and response.json()["outcome"] == "applied"
    chip = await chip_named(db, "chip-01")
    assert chip.status == "deleted" and chip.deleted_at is not None
    row = (await transitions(db, chip.id))[-1]
    assert (row.trigger, row.source, row.from_status, row.to_status) == (
        "removed", "webhook", "pending", "deleted",
    )  # fmt: skip
    assert row.meta["reason"] == lifecycle.REMOVED_BY_EVOLUTION

    # Step 2: the removal webhook was missed. A poll meets Evolution's own 404 and says
    # so, instance_missing, without touching the chip...
    chip_3 = await given_chip(db, "chip-03", "pending", "close")
    await lifecycle.remember_instance(db, chip_3.id, "00000000-0000-4000-8000-000000000003")
    manager = InstanceManager(db, evolution_with(answering(polled_404)[1]), HOOK)
    polled = await manager.verificar_conexao("chip-03")
    assert polled["sucesso"] is False and polled["error_code"] == "instance_missing"
    assert "does not exist" in polled["error"]
    assert (await chip_named(db, "chip-03")).status == "pending"

    # ... and the next pass, against an Evolution that lists no chip-03 and answers 404
    # for it by name, deletes the chip, with its reason; nothing is created again.
    fake = FakeEvolution()
    report = await Reconciler(db, evolution_with(fake.handle), HOOK).run()
    assert [(f.instance_name, f.kind, f.action) for f in report.findings] == [
        ("chip-03", "instance_missing", "deleted"),
    ]  # fmt: skip
    chip_3 = await chip_named(db, "chip-03")
    assert chip_3.status == "deleted" and chip_3.deleted_at is not None
    row = (await transitions(db, chip_3.id))[-1]
    assert (row.trigger, row.source, row.from_status, row.to_status) == (
        "removed", "reconcile", "pending", "deleted",
    )  # fmt: skip
    assert row.meta["reason"] == "the instance is missing from Evolution"
    assert [(method, path) for method, path, _ in fake.calls] == [
        ("GET", "/instance/fetchInstances"), ("GET", "/instance/fetchInstances"),
    ]  # fmt: skip
    await assert_history_consistent(db, chip_3.id)


# -- B23: the paired number, with or without Brazil's ninth digit --------------------------


async def test_b23_the_paired_number_is_stored_and_compared_without_the_ninth_digit(
    db: Database,
    database_url: str,
    receiver: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="evochips.lifecycle")
    without_ninth, with_device = steps_of("B23")[:2]
    for webhook in (without_ninth, with_device):
        given = webhook["given"]
        telefone = normalise_phone(given["chip_expected_number"])
        await given_chip(db, webhook["body"]["instance"], "pending", "connecting", telefone)

    for webhook in (without_ninth, with_device):
        assert (await deliver(receiver, webhook)).status_code == 200
        chip = await chip_named(db, webhook["body"]["instance"])
        assert (chip.status, chip.connection_state) == ("warming", "open")
        # The JID is kept as WhatsApp gave it, and the number in E.164 beside it.
        assert chip.owner_jid == webhook["body"]["data"]["wuid"]
        assert chip.owner_number == webhook["expect"]["stored"]["phone_e164"]
        assert chip.number_mismatch is False
    assert _lines(caplog, "not its registered number") == []

    async def paired(name: str, telefone: str) -> Chip:
        """The number of ``with_device`` pairs with chip ``name``, registered as ``telefone``."""
        await given_chip(db, name, "pending", "connecting", telefone=telefone)
        webhook = copy.deepcopy(with_device)
        webhook["body"]["instance"] = webhook["body"]["data"]["instance"] = name
        assert (await deliver(receiver, webhook)).status_code == 200
        return await chip_named(db, name)

    # Beside them, a number that really is another one is flagged, and said once.
    chip = await paired("chip-07", "5511900000007")
    assert (chip.owner_number, chip.number_mismatch) == ("+5511900000005", True)
    assert len(_lines(caplog, "not its registered number")) == 1

    shown = await via_api(db, "chip-07")
    assert (shown["owner_number"], shown["number_mismatch"]) == ("+5511900000005", True)
    assert (await via_api(db, "chip-01"))["number_mismatch"] is False

    row, line = await listed_by_cli(database_url, "chip-07")
    assert row["number_mismatch"] is True and "number_mismatch" in line.split()
    assert "+5511900000005" in line.split()

    # A chip adopted from an instance made elsewhere has no registered number: whatever
    # pairs is not a mismatch.
    chip = await paired("chip-08", "")
    assert (chip.owner_number, chip.number_mismatch) == ("+5511900000005", False)


async def test_b23_create_sends_no_number_so_no_formatted_one_is_refused(db: Database) -> None:
    """Steps 3 and 4 are about create's ``number``, which asks Evolution for a pairing
    code. evochips pairs by QR and never sends ``number`` (see ``create_body`` in
    evochips/evolution/shapes.py), so it cannot cause step 3's refusal; what is asserted
    is what it does with each answer all the same."""
    _, _, formatted_number, created = steps_of("B23")

    # Step 3: should Evolution refuse a create with a list of lists for its message, the
    # failure reads as one sentence and no chip is left.
    manager = InstanceManager(db, evolution_with(answering(formatted_number)[1]), HOOK)
    refused = await manager.criar_instancia("chip-06", "+55 11 90000-0006")
    assert refused["sucesso"] is False and refused["error_code"] == "evolution_rejected"
    assert 'number does not match pattern "^\\\\d+[\\\\.@\\\\w-]+"' in refused["error"]
    assert (await chip_named(db, "chip-06")).status == "deleted"

    # Step 4: the create goes out without ``number`` (the phone stays in evochips, as
    # digits), and its answer is a chip waiting for its first QR.
    requests, handler = recording(created)
    manager = InstanceManager(db, evolution_with(handler), HOOK)
    result = await manager.criar_instancia("chip-06", "+55 11 90000-0006")
    sent = json.loads(requests[0].content)
    assert "number" not in sent and sent["integration"] == "WHATSAPP-BAILEYS"
    assert result["sucesso"] is True
    assert result["qr_code"] == created["response"]["body"]["qrcode"]["base64"]
    chip = await chip_named(db, "chip-06")
    assert (chip.status, chip.connection_state, chip.telefone) == (
        "pending", "connecting", "5511900000006",
    )  # fmt: skip
    assert chip.evolution_instance_id == "00000000-0000-4000-8000-000000000006"
