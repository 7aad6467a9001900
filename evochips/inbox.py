"""Evolution's webhook deliveries: each one stored, and applied to its chip at most once.

A delivery is applied in one transaction with its chip locked: a copy of one seen before
is recorded as ``duplicate``, one the state machine refuses or evochips does not handle as
``ignored``, and one for an instance no chip has (yet) as ``unmatched``.

Evolution delivers out of order, so a delivery older (by Evolution's ``date_time``) than
one already applied is ``stale``: it is not applied on top of the newer state but folded
in, by replaying the chip's deliveries since its baseline in ``date_time`` order. The
chip then ends where in-order delivery would have left it, whatever the arrival order.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from evochips.db import Chip, Database, WebhookEventRow, log_after_commit
from evochips.db.models import KEY_OWNERS, utcnow
from evochips.evolution.events import Signal, WebhookEvent
from evochips.lifecycle import (
    Facts,
    QrEffect,
    Source,
    apply_decision,
    apply_with_delivery,
    decide_for,
    is_stale,
    qr_effect,
    qr_values,
)
from evochips.statemachine import (
    ChipStatus,
    ConnectionState,
    Decision,
    InvalidTransition,
    Trigger,
    decide,
)

logger = logging.getLogger(__name__)

NO_CHANGE = "changed nothing"
MAX_REPLAY = 200
REPLAYED = "arrived after a newer event; replayed in Evolution's order"
FORMER_INSTANCE = "sent by an earlier instance of this name; changes nothing"


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    IGNORED = "ignored"
    UNMATCHED = "unmatched"


# Deliveries a replay goes through: a duplicate's original is among them already, and an
# ignored one is tried again because its place in the order may have changed.
_REPLAYABLE = [Outcome.APPLIED.value, Outcome.STALE.value, Outcome.IGNORED.value]


@dataclass(frozen=True)
class WebhookResult:
    outcome: Outcome
    event_id: int
    chip_id: str | None = None
    decision: Decision | None = None
    detail: str | None = None


async def record_webhook(db: Database, event: WebhookEvent) -> WebhookResult:
    """Store a delivery and apply it to its chip if it is new and allowed; a late one is
    folded in by replaying the chip's deliveries in Evolution's order."""
    signal = event.signal
    if signal is None or event.instance is None:
        async with db.write() as session:
            return await _store_event(session, event, Outcome.IGNORED, event.ignore_reason)

    async with db.write() as session:
        chip = await _lock_chip_for(session, event.instance, event.tag)
        if chip is None:
            detail = f"no chip has instance {event.instance!r}"
            return await _store_event(session, event, Outcome.UNMATCHED, detail)
        if event.tag is not None and chip.instance_tag not in (None, event.tag):
            return await _store_event(session, event, Outcome.STALE, FORMER_INSTANCE, chip.id)

        facts = Facts(
            status_reason=signal.status_reason,
            wuid=signal.wuid,
            profile_name=signal.profile_name,
            qr=signal.qr,
            evolution_date_time=event.date_time,
        )
        if is_stale(event.date_time, chip.evolution_date_time):
            return await _fold_late(session, chip, event, signal.trigger, facts)
        try:
            decision = decide_for(chip, signal.trigger)
        except InvalidTransition as exc:
            detail = str(exc)
            if chip.status == ChipStatus.DELETED:
                detail = f"chip {chip.id} for instance {event.instance!r} is deleted"
            if event.date_time is not None:
                # Refused, but received: an event older than this one is late all the same.
                await session.execute(
                    update(Chip)
                    .where(Chip.id == chip.id)
                    .values(evolution_date_time=event.date_time, version=Chip.version + 1)
                )
            return await _store_event(session, event, Outcome.IGNORED, detail, chip.id)

        change_note: str | None = None
        if _changes_nothing(chip, decision, signal):
            repeated = await _count_repeat(session, chip.id, event, signal)
            if repeated is not None:
                await apply_decision(session, chip, decision, Source.WEBHOOK, facts, None)
                return WebhookResult(Outcome.APPLIED, repeated, chip.id, decision, NO_CHANGE)
            change_note = NO_CHANGE
        if _in_one_statement(session, chip):
            return await _apply_in_one_statement(session, chip, event, decision, facts, change_note)
        result = await _store_event(session, event, Outcome.APPLIED, change_note, chip.id)
        if result.outcome is Outcome.APPLIED:
            changes = _counted(chip, decision, facts, result.event_id)
            await apply_decision(
                session, chip, decision, Source.WEBHOOK, facts, result.event_id, changes
            )
            return WebhookResult(Outcome.APPLIED, result.event_id, chip.id, decision)
        return result


def _in_one_statement(session: AsyncSession, chip: Chip) -> bool:
    """Whether the delivery, the chip's update and its history can be one statement: on
    PostgreSQL (SQLite has no writing CTEs), unless this delivery moves the baseline up,
    which needs the delivery's id before the chip's update."""
    postgresql = session.get_bind().dialect.name == "postgresql"
    return postgresql and chip.baseline_deliveries + 1 < MAX_REPLAY


async def _apply_in_one_statement(
    session: AsyncSession,
    chip: Chip,
    event: WebhookEvent,
    decision: Decision,
    facts: Facts,
    detail: str | None,
) -> WebhookResult:
    values = _delivery_values(event, Outcome.APPLIED, detail, chip.id)
    changes = {"baseline_deliveries": chip.baseline_deliveries + 1}
    event_id = await apply_with_delivery(
        session, chip, decision, facts, _FIRST_COPY_IN_A_STATEMENT, values, changes
    )
    if event_id is None:
        return await _counted_copy(session, event, chip.id)
    _log_delivery(session, event, Outcome.APPLIED)
    return WebhookResult(Outcome.APPLIED, event_id, chip.id, decision)


def _counted(chip: Chip, decision: Decision, facts: Facts, event_id: int) -> dict[str, Any]:
    """One more delivery a replay would go through; at ``MAX_REPLAY`` the baseline moves
    up to where this delivery leaves the chip, so a replay never reads more rows than that.
    (A late event older than the new baseline is then only recorded as stale.)"""
    if chip.baseline_deliveries + 1 < MAX_REPLAY:
        return {"baseline_deliveries": chip.baseline_deliveries + 1}
    reason = chip.status_reason if facts.status_reason is None else facts.status_reason
    return {
        "baseline_status": decision.to_status.value,
        "baseline_connection": decision.to_connection.value,
        "baseline_status_reason": reason,
        "baseline_event_id": event_id,
        "baseline_date_time": facts.evolution_date_time or chip.evolution_date_time,
        "baseline_deliveries": 0,
    }


async def _lock_chip_for(session: AsyncSession, instance: str, tag: str | None) -> Chip | None:
    """The chip whose instance sent the event: the one ``tag`` names, else the live chip
    with this instance name or, if none, the one deleted last (a late event for a removed
    instance still belongs to the chip it described)."""
    if tag is not None:
        tagged = await session.execute(_TAGGED_CHIP, {"instance": instance, "tag": tag})
        chip = tagged.scalar_one_or_none()
        if chip is not None:
            return chip
    result = await session.execute(_CHIP_FOR_INSTANCE, {"instance": instance})
    return result.scalar_one_or_none()


_TAGGED_CHIP = (
    select(Chip)
    .where(Chip.instance_tag == bindparam("tag"), Chip.instance_name == bindparam("instance"))
    .with_for_update()
)


_CHIP_FOR_INSTANCE = (
    select(Chip)
    .where(Chip.instance_name == bindparam("instance"))
    .order_by(Chip.deleted_at.desc().nulls_first())
    .limit(1)
    .with_for_update()
)


async def _fold_late(
    session: AsyncSession, chip: Chip, event: WebhookEvent, trigger: Trigger, facts: Facts
) -> WebhookResult:
    """A delivery older than one already applied: the chip becomes what it would be had
    the deliveries since its baseline arrived in Evolution's order, so a late event never
    takes a chip back to a state a newer event has already left."""
    if is_stale(event.date_time, chip.baseline_date_time):
        detail = "older than the last change evochips made to the chip"
        return await _store_event(session, event, Outcome.STALE, detail, chip.id)
    stored = await _store_event(session, event, Outcome.STALE, REPLAYED, chip.id)
    if stored.outcome is not Outcome.STALE:
        return stored
    window = await _since_baseline(session, chip)
    replay = _replay(chip, window)
    effect, shown_by = replay.qr
    if effect is QrEffect.SHOW and shown_by != stored.event_id:
        qr = {}  # the QR on show came from a delivery applied before, and is stored already
    else:
        qr = qr_values(effect, facts.qr)
    decision = Decision(
        trigger=trigger,
        from_status=ChipStatus(chip.status),
        to_status=replay.status,
        from_connection=ConnectionState(chip.connection_state),
        to_connection=replay.connection,
    )
    changes = {
        "baseline_deliveries": chip.baseline_deliveries + 1,
        "status_reason": replay.status_reason,
        "evolution_qr_code": chip.evolution_qr_code,
        "evolution_pairing_code": chip.evolution_pairing_code,
        **qr,
    }
    late = Facts(
        status_reason=facts.status_reason,
        wuid=facts.wuid,
        profile_name=facts.profile_name,
        evolution_date_time=facts.evolution_date_time,
        note={"late": True, "replayed": len(window)},
    )
    await apply_decision(session, chip, decision, Source.WEBHOOK, late, stored.event_id, changes)
    return WebhookResult(Outcome.STALE, stored.event_id, chip.id, decision, REPLAYED)


@dataclass(frozen=True)
class _Past:
    """A delivery as a replay needs it."""

    id: int
    trigger: Trigger
    status_reason: int | None


@dataclass(frozen=True)
class _Replay:
    status: ChipStatus
    connection: ConnectionState
    status_reason: int | None
    qr: tuple[QrEffect | None, int | None]


async def _since_baseline(session: AsyncSession, chip: Chip) -> list[_Past]:
    """The chip's deliveries since its baseline, in Evolution's order. Those without a
    date_time were applied as they came, so they sort after every dated one."""
    since = [WebhookEventRow.chip_id == chip.id, WebhookEventRow.id > chip.baseline_event_id]
    if chip.baseline_date_time is not None:
        floor = WebhookEventRow.date_time >= chip.baseline_date_time
        since.append(WebhookEventRow.date_time.is_(None) | floor)
    rows = await session.execute(
        select(WebhookEventRow.id, WebhookEventRow.trigger, WebhookEventRow.status_reason)
        .where(WebhookEventRow.outcome.in_(_REPLAYABLE), *since)
        .order_by(WebhookEventRow.date_time.asc().nulls_last(), WebhookEventRow.id)
    )
    return [_Past(row.id, Trigger(row.trigger), row.status_reason) for row in rows if row.trigger]


def _replay(chip: Chip, window: Sequence[_Past]) -> _Replay:
    status = ChipStatus(chip.baseline_status)
    connection = ConnectionState(chip.baseline_connection)
    status_reason = chip.baseline_status_reason
    qr: tuple[QrEffect | None, int | None] = (None, None)
    for row in window:
        try:
            step = decide(chip.instance_name, row.trigger, status, connection)
        except InvalidTransition:
            continue  # as it was when it arrived: a deleted chip takes no signal
        status, connection = step.to_status, step.to_connection
        if row.status_reason is not None:
            status_reason = row.status_reason
        effect = qr_effect(step)
        if effect is not None:
            qr = (effect, row.id)
    return _Replay(status, connection, status_reason, qr)


def _changes_nothing(chip: Chip, decision: Decision, signal: Signal) -> bool:
    if decision.changed or signal.qr is not None:
        return False
    return signal.status_reason is None or signal.status_reason == chip.status_reason


async def _count_repeat(
    session: AsyncSession, chip_id: str, event: WebhookEvent, signal: Signal
) -> int | None:
    """Count a delivery that changes nothing on the chip's last row, if that row is the
    same signal, which changed nothing either; returns that row's id, or None.

    The row keeps the newest ``date_time`` of the run. A replay then sees the run as its
    last member alone, which is enough: each repeat found the chip as the one before it
    left it, and applying a signal twice in a row does what applying it once does."""
    last = (await session.execute(_LAST_DELIVERY, {"chip": chip_id})).first()
    seen = (event.event, NO_CHANGE, signal.trigger.value, signal.status_reason)
    if last is None or tuple(last[1:]) != seen:
        return None
    values = {"row": last.id, "received": utcnow(), "date_time": event.date_time}
    await session.execute(_COUNT_REPEAT, values)
    return int(last.id)


_LAST_DELIVERY = (
    select(
        WebhookEventRow.id,
        WebhookEventRow.event,
        WebhookEventRow.detail,
        WebhookEventRow.trigger,
        WebhookEventRow.status_reason,
    )
    .where(WebhookEventRow.chip_id == bindparam("chip"))
    .order_by(WebhookEventRow.id.desc())
    .limit(1)
)
_COUNT_REPEAT = (
    update(WebhookEventRow)
    .where(WebhookEventRow.id == bindparam("row"))
    .values(
        repeats=WebhookEventRow.repeats + 1,
        last_received_at=bindparam("received", type_=WebhookEventRow.last_received_at.type),
        date_time=bindparam("date_time", type_=WebhookEventRow.date_time.type),
    )
)


async def _count_copy(session: AsyncSession, dedupe_key: str) -> int:
    """Add one to the copies of the delivery that owns ``dedupe_key``; returns its id.

    Evolution retries up to ten times and may send each event twice (instance and global
    webhook), so copies are counted, not stored: the table grows by deliveries that mean
    something, not by retries."""
    counted = await session.execute(
        update(WebhookEventRow)
        .where(WebhookEventRow.dedupe_key == dedupe_key, text(KEY_OWNERS))
        .values(copies=WebhookEventRow.copies + 1, last_received_at=utcnow())
        .returning(WebhookEventRow.id)
        .execution_options(synchronize_session=False)
    )
    return int(counted.scalar_one())


def _first_copy(dialect: Any) -> Any:
    """INSERT a delivery unless one that owns its key is stored; built once, since making
    the statement costs more than running it. The values come as parameters."""
    table = WebhookEventRow.__table__
    return (
        dialect.insert(table)
        .on_conflict_do_nothing(
            index_elements=["dedupe_key"],
            # A literal, not a bound parameter: PostgreSQL matches the partial index by
            # its predicate, which a generic prepared plan cannot see through a parameter.
            index_where=text(KEY_OWNERS),
        )
        .returning(table.c.id)
    )


_FIRST_COPY = {"postgresql": _first_copy(postgresql), "sqlite": _first_copy(sqlite)}
_DELIVERY_COLUMNS = ("dedupe_key", "instance_name", "event", "date_time", "received_at", "body",
                     "outcome", "detail", "chip_id", "trigger", "status_reason")  # fmt: skip


# The same, within a larger statement (``lifecycle.apply_with_delivery``): its parameters
# are prefixed, so as not to meet the chip's and the history's of the same names.
_EVENTS = WebhookEventRow.metadata.tables[WebhookEventRow.__tablename__]
_FIRST_COPY_IN_A_STATEMENT = _FIRST_COPY["postgresql"].values(
    {name: bindparam(f"d_{name}", type_=_EVENTS.c[name].type) for name in _DELIVERY_COLUMNS}
    # Column defaults are not filled in for an INSERT inside a CTE.
    | {"repeats": 1, "copies": 0}
)


async def _store_event(
    session: AsyncSession,
    event: WebhookEvent,
    outcome: Outcome,
    detail: str | None,
    chip_id: str | None = None,
) -> WebhookResult:
    """Insert the delivery's row; a copy of a delivery that owns its key is ``duplicate``
    and is counted on that delivery's row instead of stored."""
    first = _FIRST_COPY[session.get_bind().dialect.name]
    values = _delivery_values(event, outcome, detail, chip_id)
    event_id = (await session.execute(first, values)).scalar_one_or_none()
    if event_id is None:
        return await _counted_copy(session, event, chip_id)
    _log_delivery(session, event, outcome)
    return WebhookResult(outcome, event_id, chip_id, None, detail)


async def _counted_copy(
    session: AsyncSession, event: WebhookEvent, chip_id: str | None
) -> WebhookResult:
    event_id = await _count_copy(session, event.dedupe_key)
    _log_delivery(session, event, Outcome.DUPLICATE)
    return WebhookResult(Outcome.DUPLICATE, event_id, chip_id, None, "delivered before")


def _delivery_values(
    event: WebhookEvent, outcome: Outcome, detail: str | None, chip_id: str | None
) -> dict[str, Any]:
    return {
        "dedupe_key": event.dedupe_key,
        "instance_name": event.instance,
        "event": event.event,
        "date_time": event.date_time,
        "received_at": utcnow(),
        "body": event.stored_body,
        "outcome": outcome.value,
        "detail": (detail or "")[:255] or None,
        "chip_id": chip_id,
        "trigger": event.signal.trigger.value if event.signal else None,
        "status_reason": event.signal.status_reason if event.signal else None,
    }


def _log_delivery(session: AsyncSession, event: WebhookEvent, outcome: Outcome) -> None:
    log_after_commit(
        session, logger, "webhook %s for %r: %s", event.event, event.instance, outcome.value
    )
