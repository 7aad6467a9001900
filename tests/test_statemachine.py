"""The decision table: every (trigger, status) pair is either allowed or refused."""

from __future__ import annotations

import pytest

from evochips.statemachine import (
    ChipStatus,
    ConnectionState,
    InvalidTransition,
    Trigger,
    allowed_triggers,
    decide,
)
from evochips.statemachine.machine import TABLE

CLOSE = ConnectionState.CLOSE
PAIRED = [ChipStatus.WARMING, ChipStatus.READY, ChipStatus.ACTIVE, ChipStatus.DEGRADED]


SIGNALS = {"connecting", "qr_updated", "connected", "disconnected", "logged_out", "banned",
           "qr_refused", "removed"}  # fmt: skip
# What reconciliation records on any live chip, moving nothing.
FINDINGS = {"flagged_misconfigured", "steady_again", "instance_found"}
LIVE = SIGNALS | FINDINGS
# Written out by hand, not derived from the table, so a wrong row fails here.
ALLOWED = {
    ChipStatus.PENDING: LIVE | {"rejected", "flagged_stuck"},
    ChipStatus.WARMING: LIVE | {"promote"},
    ChipStatus.READY: LIVE | {"activate"},
    ChipStatus.ACTIVE: LIVE | {"degrade"},
    ChipStatus.DEGRADED: LIVE | {"restore"},
    ChipStatus.BANNED: LIVE,
    ChipStatus.DELETED: {"registered", "removed"},
}


@pytest.mark.parametrize("trigger", list(Trigger))
@pytest.mark.parametrize("status", list(ChipStatus))
def test_every_pair_is_decided_or_refused(trigger: Trigger, status: ChipStatus) -> None:
    if trigger.value in ALLOWED[status]:
        assert decide("chip", trigger, status, CLOSE).from_status is status
    else:
        with pytest.raises(InvalidTransition):
            decide("chip", trigger, status, CLOSE)
    assert set(allowed_triggers(status)) == ALLOWED[status]


def test_table_has_no_trigger_twice_from_one_status() -> None:
    seen = [(trigger, source) for trigger, sources, _, _ in TABLE for source in sources]
    assert len(seen) == len(set(seen))


def test_first_open_starts_warming() -> None:
    decision = decide("chip", Trigger.CONNECTED, ChipStatus.PENDING, ConnectionState.CONNECTING)
    assert decision.to_status is ChipStatus.WARMING
    assert decision.to_connection is ConnectionState.OPEN


@pytest.mark.parametrize("status", PAIRED)
def test_open_keeps_a_paired_chip_where_it_is(status: ChipStatus) -> None:
    decision = decide("chip", Trigger.CONNECTED, status, ConnectionState.CONNECTING)
    assert decision.to_status is status


@pytest.mark.parametrize("status", [ChipStatus.PENDING, *PAIRED])
def test_connecting_never_changes_status(status: ChipStatus) -> None:
    decision = decide("chip", Trigger.CONNECTING, status, CLOSE)
    assert (decision.to_status, decision.to_connection) == (status, ConnectionState.CONNECTING)


@pytest.mark.parametrize("status", PAIRED)
def test_logout_needs_a_new_qr(status: ChipStatus) -> None:
    decision = decide("chip", Trigger.LOGGED_OUT, status, ConnectionState.OPEN)
    assert (decision.to_status, decision.to_connection) == (ChipStatus.PENDING, CLOSE)


@pytest.mark.parametrize("status", [ChipStatus.PENDING, *PAIRED])
def test_ban_from_anywhere_alive(status: ChipStatus) -> None:
    assert decide("chip", Trigger.BANNED, status, CLOSE).to_status is ChipStatus.BANNED


def test_lifecycle_walk() -> None:
    status = ChipStatus.WARMING
    for trigger, expected in [
        (Trigger.PROMOTE, ChipStatus.READY),
        (Trigger.ACTIVATE, ChipStatus.ACTIVE),
        (Trigger.DEGRADE, ChipStatus.DEGRADED),
        (Trigger.RESTORE, ChipStatus.ACTIVE),
    ]:
        status = decide("chip", trigger, status, ConnectionState.OPEN).to_status
        assert status is expected


def test_refusal_names_chip_trigger_and_status() -> None:
    with pytest.raises(InvalidTransition) as caught:
        decide("chip-0001", Trigger.ACTIVATE, ChipStatus.PENDING, CLOSE)
    message = str(caught.value)
    assert "chip-0001" in message and "activate" in message and "pending" in message


def test_deleted_chip_ignores_evolution_signals() -> None:
    for trigger in (Trigger.CONNECTED, Trigger.CONNECTING, Trigger.LOGGED_OUT):
        with pytest.raises(InvalidTransition):
            decide("chip", trigger, ChipStatus.DELETED, CLOSE)


def test_same_state_is_not_a_change() -> None:
    decision = decide("chip", Trigger.CONNECTING, ChipStatus.PENDING, ConnectionState.CONNECTING)
    assert not decision.changed


def test_a_stuck_flag_moves_nothing_but_is_recorded() -> None:
    flagged = decide("chip", Trigger.FLAGGED_STUCK, ChipStatus.PENDING, ConnectionState.CONNECTING)
    assert (flagged.to_status, flagged.to_connection) == (
        ChipStatus.PENDING, ConnectionState.CONNECTING,
    )  # fmt: skip
    assert not flagged.changed and flagged.recorded
    same = decide("chip", Trigger.CONNECTING, ChipStatus.PENDING, ConnectionState.CONNECTING)
    assert not same.recorded


@pytest.mark.parametrize("trigger", sorted(FINDINGS | {"flagged_stuck"}))
def test_a_finding_moves_nothing_but_is_history(trigger: str) -> None:
    decision = decide("chip", Trigger(trigger), ChipStatus.PENDING, ConnectionState.CONNECTING)
    assert (decision.to_status, decision.to_connection) == (
        ChipStatus.PENDING,
        ConnectionState.CONNECTING,
    )
    assert not decision.changed and decision.recorded
