"""Evolution's webhook deliveries: each one stored, and applied to its chip at most once.

A delivery is applied in one transaction with its chip locked: a copy of one seen before
is recorded as ``duplicate``, one older than the last event applied to the chip as
``stale``, one the state machine refuses or evochips does not handle as ``ignored``, and
one for an instance no chip has (yet) as ``unmatched``. Only an ``applied`` delivery
changes the chip.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from sqlalchemy import insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from evochips.db import Chip, Database, WebhookEventRow, log_after_commit
from evochips.db.models import KEY_OWNERS, utcnow
from evochips.evolution.events import WebhookEvent
from evochips.lifecycle import (
    Facts,
    Source,
    apply_decision,
    decide_for,
    is_live,
    is_stale,
    lock_chip,
)
from evochips.statemachine import (
    Decision,
    InvalidTransition,
)

logger = logging.getLogger(__name__)

NO_CHANGE = "changed nothing"


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    IGNORED = "ignored"
    UNMATCHED = "unmatched"


@dataclass(frozen=True)
class WebhookResult:
    outcome: Outcome
    event_id: int
    chip_id: str | None = None
    decision: Decision | None = None
    detail: str | None = None


async def record_webhook(db: Database, event: WebhookEvent) -> WebhookResult:
    """Store a delivery and apply it to its chip if it is new, current and allowed."""
    signal = event.signal
    if signal is None or event.instance is None:
        async with db.write() as session:
            return await _store_event(session, event, Outcome.IGNORED, event.ignore_reason)

    async with db.write() as session:
        chip = await lock_chip(session, is_live(event.instance))
        if chip is None:
            outcome, detail = await _without_chip(session, event.instance)
            return await _store_event(session, event, outcome, detail)

        facts = Facts(
            status_reason=signal.status_reason,
            wuid=signal.wuid,
            profile_name=signal.profile_name,
            qr=signal.qr,
            evolution_date_time=event.date_time,
        )
        if is_stale(event.date_time, chip.evolution_date_time):
            return await _store_event(
                session,
                event,
                Outcome.STALE,
                "older than the last event applied to the chip",
                chip.id,
            )
        try:
            decision = decide_for(chip, signal.trigger)
        except InvalidTransition as exc:
            return await _store_event(session, event, Outcome.IGNORED, str(exc), chip.id)

        change_note: str | None = None
        if not decision.changed and signal.qr is None:
            repeated = await _count_repeat(session, chip.id, event)
            if repeated is not None:
                await apply_decision(session, chip, decision, Source.WEBHOOK, facts, None)
                return WebhookResult(Outcome.APPLIED, repeated, chip.id, decision, NO_CHANGE)
            change_note = NO_CHANGE
        result = await _store_event(session, event, Outcome.APPLIED, change_note, chip.id)
        if result.outcome is Outcome.APPLIED:
            await apply_decision(session, chip, decision, Source.WEBHOOK, facts, result.event_id)
            return WebhookResult(Outcome.APPLIED, result.event_id, chip.id, decision)
        return result


async def _count_repeat(session: AsyncSession, chip_id: str, event: WebhookEvent) -> int | None:
    """Count a delivery that changes nothing on the chip's last row, if that row is the
    same event, which changed nothing either; returns that row's id, or None."""
    last = (
        await session.execute(
            select(WebhookEventRow.id, WebhookEventRow.event, WebhookEventRow.detail)
            .where(WebhookEventRow.chip_id == chip_id)
            .order_by(WebhookEventRow.id.desc())
            .limit(1)
        )
    ).first()
    if last is None or (last.event, last.detail) != (event.event, NO_CHANGE):
        return None
    await session.execute(
        update(WebhookEventRow)
        .where(WebhookEventRow.id == last.id)
        .values(
            repeats=WebhookEventRow.repeats + 1,
            last_received_at=utcnow(),
            date_time=event.date_time,
        )
    )
    return int(last.id)


async def _store_event(
    session: AsyncSession,
    event: WebhookEvent,
    outcome: Outcome,
    detail: str | None,
    chip_id: str | None = None,
) -> WebhookResult:
    """Insert the delivery's row; a copy of a delivery that owns its key is ``duplicate``."""
    values = {
        "dedupe_key": event.dedupe_key,
        "instance_name": event.instance,
        "event": event.event,
        "date_time": event.date_time,
        "received_at": utcnow(),
        "body": event.stored_body,
        "outcome": outcome.value,
        "detail": (detail or "")[:255] or None,
        "chip_id": chip_id,
    }
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    first = (
        dialect.insert(WebhookEventRow)
        .values(**values)
        .on_conflict_do_nothing(
            index_elements=["dedupe_key"],
            # A literal, not a bound parameter: PostgreSQL matches the partial index by
            # its predicate, which a generic prepared plan cannot see through a parameter.
            index_where=text(KEY_OWNERS),
        )
        .returning(WebhookEventRow.id)
    )
    event_id = (await session.execute(first)).scalar_one_or_none()
    if event_id is None:
        outcome, detail = Outcome.DUPLICATE, "delivered before"
        values.update(outcome=outcome.value, detail=detail, body=None)
        copy = insert(WebhookEventRow).values(**values).returning(WebhookEventRow.id)
        event_id = (await session.execute(copy)).scalar_one()
    log_after_commit(
        session, logger, "webhook %s for %r: %s", event.event, event.instance, outcome.value
    )
    return WebhookResult(outcome, event_id, chip_id, None, detail)


async def _without_chip(session: AsyncSession, instance: str) -> tuple[Outcome, str]:
    deleted = await session.scalar(select(Chip.id).where(Chip.instance_name == instance).limit(1))
    if deleted is not None:
        return Outcome.IGNORED, f"chip {deleted} for instance {instance!r} is deleted"
    return Outcome.UNMATCHED, f"no chip has instance {instance!r}"
