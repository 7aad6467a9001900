"""Arrival order does not matter: whatever order Evolution's deliveries for one chip come
in, the chip ends where in-order delivery leaves it, and at no point is it anywhere else
than in-order delivery of what has arrived so far would have put it.

"In order" means Evolution's ``date_time`` order. Each example registers fresh chips in
the same database, so one chip per ordering is compared, all fed the same bodies.
"""

from __future__ import annotations

import copy
import itertools
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evochips import inbox, lifecycle
from evochips.db import Chip, Database
from evochips.lifecycle import Source
from evochips.statemachine import Trigger
from tests.chips import given_chip
from tests.conftest import SAMPLES, load_json
from tests.helpers import assert_history_consistent, chip_named


def _sample(name: str, **data: Any) -> dict[str, Any]:
    body: dict[str, Any] = load_json(SAMPLES / f"v2-webhook-{name}.json")
    if data:
        body["data"] = {**body["data"], **data}
    return body


KINDS = {
    "connecting": _sample("connection-update-connecting"),
    "open": _sample("connection-update-open"),
    "close-428": _sample("connection-update-close-401", statusReason=428),
    "close-401": _sample("connection-update-close-401"),
    "close-403": _sample("connection-update-close-401", statusReason=403),
    "refused": _sample("connection-update-refused"),
    "qrcode": _sample("qrcode-updated"),
    "status-closed": _sample("status-instance-closed"),
    "logout": _sample("logout-instance"),
    "remove": _sample("remove-instance"),
}
STARTS = [("pending", "close"), ("pending", "connecting"), ("warming", "open"), ("active", "open")]
T0 = datetime(2025, 10, 21, 12, 0, 0)
names = itertools.count()

episodes = st.lists(st.sampled_from(sorted(KINDS)), min_size=3, max_size=6).flatmap(
    lambda kinds: st.tuples(st.just(kinds), st.permutations(range(len(kinds))))
)
ORDER = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _body(kind: str, position: int, instance: str) -> dict[str, Any]:
    """The ``position``-th event of an episode, a second after the one before; every QR is
    a different one, so the test can tell which one a chip shows."""
    body = copy.deepcopy(KINDS[kind])
    body["instance"] = instance
    body["date_time"] = (T0 + timedelta(seconds=position)).isoformat() + ".000Z"
    if isinstance(body["data"], dict) and "instance" in body["data"]:
        body["data"]["instance"] = instance
    if kind == "qrcode":
        qr = {"code": f"2@qr-{position}", "base64": f"data:image/png;base64,UVItJ{position}=="}
        body["data"]["qrcode"].update(instance=instance, **qr)
    return body


def _seen(chip: Chip) -> tuple[Any, ...]:
    return (
        chip.status,
        chip.connection_state,
        chip.status_reason,
        chip.evolution_qr_code,
        chip.deleted_at is None,
    )


async def _fed_in_order(
    db: Database, receiver: httpx.AsyncClient, start: tuple[str, str], events: list[tuple[int, str]]
) -> tuple[Any, ...]:
    """A fresh chip in ``start``, fed ``events`` sorted by position: the reference."""
    instance = f"in-order-{next(names)}"
    await given_chip(db, instance, *start)
    for position, kind in sorted(events):
        response = await receiver.post("/webhooks/evolution", json=_body(kind, position, instance))
        assert response.status_code == 200
        assert response.json()["outcome"] in {"applied", "ignored"}
    return _seen(await chip_named(db, instance))


@ORDER
@given(episode=episodes, start=st.sampled_from(STARTS))
async def test_any_arrival_order_ends_where_in_order_delivery_ends(
    db: Database,
    receiver: httpx.AsyncClient,
    episode: tuple[list[str], list[int]],
    start: tuple[str, str],
) -> None:
    kinds, arrival = episode
    instance = f"shuffled-{next(names)}"
    chip = await given_chip(db, instance, *start)
    arrived: list[tuple[int, str]] = []

    for position in arrival:
        late = any(earlier > position for earlier, _ in arrived)
        arrived.append((position, kinds[position]))
        body = _body(kinds[position], position, instance)
        response = await receiver.post("/webhooks/evolution", json=body)

        assert response.status_code == 200
        now = _seen(await chip_named(db, instance))
        if late:
            assert response.json()["outcome"] == "stale"
        assert now == await _fed_in_order(db, receiver, start, arrived), (
            f"after {[kind for _, kind in arrived]} arrived in this order"
        )
    await assert_history_consistent(db, chip.id)


async def test_a_late_open_still_counts_as_the_first_pairing(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    """The smallest case that shows why late events are replayed, not dropped: the close
    (428, Evolution reconnects by itself) overtakes the open that paired the chip."""
    await given_chip(db, "chip-0001", "pending", "connecting")
    close = await receiver.post("/webhooks/evolution", json=_body("close-428", 2, "chip-0001"))
    open_ = await receiver.post("/webhooks/evolution", json=_body("open", 1, "chip-0001"))

    assert (close.json()["outcome"], open_.json()["outcome"]) == ("applied", "stale")
    chip = await chip_named(db, "chip-0001")
    assert (chip.status, chip.connection_state) == ("warming", "close")
    assert chip.owner_jid == KINDS["open"]["data"]["wuid"]
    await assert_history_consistent(db, chip.id)


@pytest.mark.parametrize("date_time", [None, "not a date", 1e308])
async def test_an_event_without_a_usable_date_is_kept_and_never_applied(
    db: Database, receiver: httpx.AsyncClient, date_time: Any
) -> None:
    """Evolution dates every event. One without a date cannot be placed among the others:
    were it applied, a later replay would put it after every dated event, so an old
    ``connecting`` would outrank the newest ``open``."""
    await given_chip(db, "chip-0001", "pending", "close")
    undated = _body("connecting", 0, "chip-0001")
    undated.pop("date_time")
    if date_time is not None:
        undated["date_time"] = date_time
    kept = await receiver.post("/webhooks/evolution", json=undated)
    await receiver.post("/webhooks/evolution", json=_body("open", 10, "chip-0001"))
    late = await receiver.post("/webhooks/evolution", json=_body("close-428", 5, "chip-0001"))

    assert kept.status_code == 200 and kept.json()["outcome"] == "ignored"
    assert "date_time" in kept.json()["detail"]
    assert late.json()["outcome"] == "stale"
    chip = await chip_named(db, "chip-0001")
    assert (chip.status, chip.connection_state) == ("warming", "open")
    await assert_history_consistent(db, chip.id)


async def test_an_event_older_than_a_command_is_recorded_and_changes_nothing(
    db: Database, receiver: httpx.AsyncClient
) -> None:
    """A command carries no Evolution time, so nothing before it can be replayed across
    it: the event is kept as stale and the chip stays where the command left it."""
    chip = await given_chip(db, "chip-0001", "pending", "connecting")
    await receiver.post("/webhooks/evolution", json=_body("open", 5, "chip-0001"))
    await lifecycle.fire(db, chip.id, Trigger.PROMOTE, Source.COMMAND)

    response = await receiver.post("/webhooks/evolution", json=_body("logout", 4, "chip-0001"))

    assert response.json()["outcome"] == "stale"
    chip = await chip_named(db, "chip-0001")
    assert (chip.status, chip.connection_state) == ("ready", "open")


async def test_a_replay_reads_a_bounded_window(
    db: Database, receiver: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``MAX_REPLAY`` deliveries the baseline moves up to the chip's state, so a
    flapping chip cannot make each late event replay its whole past; an event older than
    the moved baseline is recorded as stale and changes nothing."""
    monkeypatch.setattr(inbox, "MAX_REPLAY", 3)
    await given_chip(db, "chip-0001", "pending", "connecting")
    for position, kind in zip([10, 12, 14, 16], ["open", "close-428", "connecting", "close-428"],
                              strict=True):  # fmt: skip
        body = _body(kind, position, "chip-0001")
        assert (await receiver.post("/webhooks/evolution", json=body)).json()[
            "outcome"
        ] == "applied"
    chip = await chip_named(db, "chip-0001")
    assert (chip.baseline_status, chip.baseline_connection) == ("warming", "connecting")

    before = await receiver.post("/webhooks/evolution", json=_body("logout", 11, "chip-0001"))
    assert before.json()["outcome"] == "stale"
    assert (await chip_named(db, "chip-0001")).status == "warming"

    inside = await receiver.post("/webhooks/evolution", json=_body("logout", 15, "chip-0001"))
    assert inside.json()["outcome"] == "stale"
    chip = await chip_named(db, "chip-0001")
    assert (chip.status, chip.connection_state) == ("pending", "close")
    await assert_history_consistent(db, chip.id)
