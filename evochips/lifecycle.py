"""Applying the state machine to stored chips, one short transaction at a time.

Every change to a chip, from a command, a poll or a webhook (see ``evochips.inbox``),
goes through :func:`apply_decision`:
the chip row is locked, the machine decides, the chip is updated with a version
compare-and-set, and a history row is appended with the next per-chip sequence number.
No network call happens while a transaction here is open.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from evochips.db import (
    Chip,
    ChipTransition,
    Database,
    WebhookEventRow,
    log_after_commit,
    statements,
)
from evochips.db.models import utcnow
from evochips.evolution.events import QrImage
from evochips.phones import owner_number, same_number
from evochips.statemachine import (
    ChipStatus,
    ConnectionState,
    Decision,
    Trigger,
    decide,
)

logger = logging.getLogger(__name__)


# A connection that drops from open this many times within the window, by Evolution's
# date_time, is flapping (two sockets replacing each other, 440, loop close/connecting/
# open; reference section 2.5).
FLAP_DROPS = 3
FLAP_WINDOW = timedelta(seconds=60)
# What a chip whose connection is steady again, or whose number was just logged out or
# reconnected by hand, goes back to.
STEADY: dict[str, Any] = {"unstable_since": None, "drops": 0, "drops_since": None}
# What a chip re-attached to a new instance forgets about the old one.
_FRESH: dict[str, Any] = {
    **STEADY,
    "stuck_since": None,
    "misconfigured": None,
    "owner_number": None,
    "number_mismatch": False,
}
REMOVED_BY_EVOLUTION = "Evolution removed the instance (remove.instance)"


class Source(enum.StrEnum):
    COMMAND = "command"
    WEBHOOK = "webhook"
    POLL = "poll"
    RECONCILE = "reconcile"


class ChipNotFound(LookupError):
    pass


class ChipDeleted(ChipNotFound):
    """The name belongs to a deleted chip, which takes no command until created again."""


class RegistrationConflict(Exception):
    """The instance name or chip id is already taken by a live chip."""


class ChipMoved(Exception):
    """A conditional change found the chip changed since the caller read it."""


async def touch(db: Database, chip: Chip) -> None:
    """Mark a chip as being worked on (a create retried, say) so that a decision taken on
    an older reading of it, such as reconciliation's, does not go through; raises ChipMoved
    if it has changed since ``chip`` was read."""
    now = utcnow()
    async with db.write() as session:
        touched = await session.execute(
            update(Chip)
            .where(Chip.id == chip.id, Chip.version == chip.version)
            .values(version=chip.version + 1, command_started_at=now, updated_at=now)
        )
        if touched.rowcount != 1:  # type: ignore[attr-defined]
            raise ChipMoved(f"chip {chip.id} changed while a command was starting")


class ConcurrentChange(Exception):
    """The chip changed under us although we held its lock; should never happen."""


@dataclass(frozen=True)
class Facts:
    """What arrived with a trigger besides the trigger itself."""

    status_reason: int | None = None
    wuid: str | None = None
    profile_name: str | None = None
    qr: QrImage | None = None
    evolution_date_time: datetime | None = None
    note: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Applied:
    chip: Chip
    decision: Decision


async def register(
    db: Database,
    instance_name: str,
    telefone: str,
    chip_id: str | None = None,
    *,
    source: Source = Source.COMMAND,
) -> Chip:
    """Write a new ``pending`` chip, or re-attach a deleted chip to a new instance.

    Raises RegistrationConflict when the name belongs to a live chip or ``chip_id`` is live.
    """
    try:
        async with db.write() as session:
            if await _live_chip(session, instance_name) is not None:
                raise RegistrationConflict(f"instance name {instance_name!r} is already in use")
            await _check_unambiguous(session, instance_name, chip_id)
            existing = await lock_chip(session, Chip.id == chip_id) if chip_id else None
            floor = await _last_seen(session, instance_name)
            if existing is None:
                return await _insert_chip(
                    session, chip_id or str(uuid.uuid4()), instance_name, telefone, floor, source
                )
            if existing.status != ChipStatus.DELETED:
                raise RegistrationConflict(
                    f"chip {existing.id} already has instance {existing.instance_name!r} "
                    f"(status {existing.status})"
                )
            decision = decide_for(existing, Trigger.REGISTERED)
            note = {"instance_name": instance_name, "previous_instance": existing.instance_name}
            reset = {
                "instance_name": instance_name,
                "instance_tag": new_instance_tag(),
                "telefone": telefone,
                "deleted_at": None,
                "evolution_instance_id": None,
                "evolution_date_time": floor,
                "status_reason": None,
                "owner_jid": None,
                "profile_name": None,
            }
            chip = await apply_decision(
                session, existing, decision, source, Facts(note=note), None, reset
            )
            return chip
    except IntegrityError as exc:
        # Two registrations raced past the checks above; the unique indexes decided.
        raise RegistrationConflict(
            f"instance name {instance_name!r} or chip id is already registered"
        ) from exc


async def fire(
    db: Database,
    chip_id: str,
    trigger: Trigger,
    source: Source,
    facts: Facts | None = None,
    changes: dict[str, Any] | None = None,
    *,
    expected_version: int | None = None,
) -> Applied:
    """Apply ``trigger`` to a chip by id; raises ChipNotFound or InvalidTransition, and
    ChipMoved if ``expected_version`` is given and the chip has changed since."""
    async with db.write() as session:
        chip = await _locked(session, chip_id)
        if expected_version is not None and chip.version != expected_version:
            raise ChipMoved(f"chip {chip_id} changed since it was read")
        decision = decide_for(chip, trigger)
        chip = await apply_decision(
            session, chip, decision, source, facts or Facts(), None, changes
        )
        return Applied(chip, decision)


async def offer_qr(db: Database, chip_id: str, qr: QrImage, source: Source) -> bool:
    """Store a QR that a command's answer carried, unless the chip has opened since:
    a webhook may have reported the scan while the command was waiting for its answer.
    Returns whether the QR was stored."""
    async with db.write() as session:
        chip = await _locked(session, chip_id)
        if chip.connection_state == ConnectionState.OPEN:
            return False
        decision = decide_for(chip, Trigger.QR_UPDATED)
        await apply_decision(session, chip, decision, source, Facts(qr=qr), None)
        return True


def new_instance_tag() -> str:
    return uuid.uuid4().hex


def decide_for(chip: Chip, trigger: Trigger) -> Decision:
    """What ``trigger`` does to a stored chip; raises InvalidTransition."""
    return decide(
        chip.instance_name,
        trigger,
        ChipStatus(chip.status),
        ConnectionState(chip.connection_state),
    )


async def _locked(session: AsyncSession, chip_id: str) -> Chip:
    chip = await lock_chip(session, Chip.id == chip_id)
    if chip is None:
        raise ChipNotFound(f"no chip with id {chip_id}")
    return chip


async def apply_decision(
    session: AsyncSession,
    chip: Chip,
    decision: Decision,
    source: Source,
    facts: Facts,
    webhook_event_id: int | None,
    changes: dict[str, Any] | None = None,
) -> Chip:
    """Write a decision: update the locked chip and, if anything moved (or the trigger is
    one that is recorded anyway), append history."""
    plan = _plan(chip, decision, source, facts, changes)
    # A Core UPDATE: the ORM's bulk-update path costs more than the statement itself on
    # this, the hottest write; the locked ``chip`` takes the stored row as returned.
    result = await session.execute(
        statements.chip_update(chip, plan.values).returning(*statements.CHIPS.c)
    )
    row = result.one_or_none()
    _took(session, chip, None if row is None else row._mapping, plan)
    if decision.recorded:
        await _append_history(
            session, chip.id, decision, source, plan.facts, webhook_event_id, plan.now
        )
    return chip


async def apply_with_delivery(
    session: AsyncSession,
    chip: Chip,
    decision: Decision,
    facts: Facts,
    delivery: Any,
    delivery_values: dict[str, Any],
    changes: dict[str, Any] | None = None,
) -> int | None:
    """PostgreSQL only: store a webhook's delivery, update the locked chip and append its
    history in one statement, one round trip where :func:`apply_decision` and the
    delivery's own INSERT take three. ``delivery`` is that INSERT, built once, taking
    ``delivery_values`` as parameters named ``d_<column>`` and doing nothing on conflict;
    when it inserts nothing (a copy of a delivery stored before) nothing else is written
    either. Returns the delivery's id, or None."""
    plan = _plan(chip, decision, Source.WEBHOOK, facts, changes)
    columns = tuple(sorted(plan.values))
    statement = statements.delivery_applied(delivery, columns, decision.recorded)
    parameters = {
        "chip_id": chip.id,
        "chip_version": chip.version,
        **{f"s_{column}": plan.values[column] for column in columns},
        **{f"d_{column}": value for column, value in delivery_values.items()},
    }
    if decision.recorded:
        row = _history_values(chip.id, decision, Source.WEBHOOK, plan.facts, plan.now)
        parameters.update({f"h_{name}": value for name, value in row.items()})
    result = (await session.execute(statement, parameters)).one_or_none()
    if result is None:
        return None
    stored = result._asdict()
    delivery_id = stored.pop("delivery_id")
    # The chip's columns are NULL when its update matched nothing (outer join).
    _took(session, chip, stored if stored["id"] is not None else None, plan)
    return int(delivery_id)


@dataclass(frozen=True)
class _Plan:
    decision: Decision
    source: Source
    facts: Facts
    values: dict[str, Any]
    flags_before: tuple[bool, bool]
    now: datetime


def _plan(
    chip: Chip, decision: Decision, source: Source, facts: Facts, changes: dict[str, Any] | None
) -> _Plan:
    """What writing ``decision`` sets on the chip, and the facts its history row keeps."""
    now = utcnow()
    values: dict[str, Any] = {
        "status": decision.to_status.value,
        "connection_state": decision.to_connection.value,
        "evolution_connected": decision.to_connection is ConnectionState.OPEN,
        "version": chip.version + 1,
        "updated_at": now,
        **qr_values(qr_effect(decision), facts.qr),
    }
    if facts.status_reason is not None:
        values["status_reason"] = facts.status_reason
    if decision.trigger is Trigger.CONNECTED:
        values["owner_jid"] = facts.wuid or chip.owner_jid
        values["profile_name"] = facts.profile_name or chip.profile_name
        values.update(_paired_number(chip, facts.wuid))
    if decision.trigger is Trigger.REGISTERED:
        values.update(_FRESH)
    if facts.evolution_date_time is not None and not is_stale(
        facts.evolution_date_time, chip.evolution_date_time
    ):
        values["evolution_date_time"] = facts.evolution_date_time
    if decision.to_status is ChipStatus.DELETED and chip.deleted_at is None:
        values["deleted_at"] = now
    if chip.stuck_since is not None and _unsticks(decision, facts):
        values["stuck_since"] = None
    note: dict[str, Any] = {}
    if source is Source.WEBHOOK:
        drops, note = _drops(chip, decision, facts, now)
        values.update(drops)
        if decision.trigger is Trigger.REMOVED and "reason" not in facts.note:
            note["reason"] = REMOVED_BY_EVOLUTION
    values.update(changes or {})
    if decision.changed and source is not Source.WEBHOOK:
        values.update(_baseline(chip, values))
    if note:
        facts = replace(facts, note={**facts.note, **note})
    # Read before the update: it refreshes ``chip`` itself.
    return _Plan(decision, source, facts, values, _flags(chip), now)


def _took(session: AsyncSession, chip: Chip, stored: Mapping[Any, Any] | None, plan: _Plan) -> None:
    """Refresh ``chip`` from the columns its update returned, and log what the write did
    once it commits; raises ConcurrentChange if the update matched nothing (None)."""
    if stored is None:
        raise ConcurrentChange(f"chip {chip.id} changed while locked")
    for column, value in stored.items():
        set_committed_value(chip, column, value)
    decision = plan.decision
    if decision.recorded:
        log_after_commit(
            session,
            logger,
            "chip %r %s: %s/%s -> %s/%s (%s)",
            chip.instance_name,
            decision.trigger.value,
            decision.from_status.value,
            decision.from_connection.value,
            decision.to_status.value,
            decision.to_connection.value,
            plan.source.value,
        )
    _log_new_flags(session, plan.flags_before, chip)


def _drops(
    chip: Chip, decision: Decision, facts: Facts, now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Count a drop from ``open`` (a close, or a bare ``connecting``: v2.3 sends no close
    for a transient drop), windowed by Evolution's date_time, never by our clock; the drop
    that makes the chip unstable marks its history row. Returns the chip's new values and
    the note for the row. A drop without a date_time cannot be placed, so is not counted."""
    dropped = (
        decision.from_connection is ConnectionState.OPEN
        and decision.to_connection is not ConnectionState.OPEN
    )
    at = facts.evolution_date_time
    if not dropped or at is None:
        return {}, {}
    if chip.drops_since is None or at - chip.drops_since > FLAP_WINDOW:
        values: dict[str, Any] = {"drops": 1, "drops_since": at}
    else:
        values = {"drops": chip.drops + 1}
    if values["drops"] < FLAP_DROPS or chip.unstable_since is not None:
        return values, {}
    return {**values, "unstable_since": now}, {"unstable": True}


def _paired_number(chip: Chip, wuid: str | None) -> dict[str, Any]:
    """The number WhatsApp paired, from its JID, and whether it is not the registered one."""
    number = owner_number(wuid)
    if number is None:
        return {}
    # An adopted instance's chip has no registered number to differ from.
    mismatch = bool(chip.telefone) and not same_number(number, chip.telefone)
    return {"owner_number": number, "number_mismatch": mismatch}


def _flags(chip: Chip) -> tuple[bool, bool]:
    return chip.unstable_since is not None, chip.number_mismatch


def _log_new_flags(session: AsyncSession, before: tuple[bool, bool], after: Chip) -> None:
    """One line when a flag goes up, not one per event that keeps it up."""
    was_unstable, was_mismatched = before
    if not was_unstable and after.unstable_since is not None:
        log_after_commit(
            session,
            logger,
            "chip %r is unstable: its connection dropped %d times within %d s",
            after.instance_name,
            after.drops,
            FLAP_WINDOW.seconds,
        )
    if after.number_mismatch and not was_mismatched:
        log_after_commit(
            session,
            logger,
            "chip %r paired %s, not its registered number",
            after.instance_name,
            after.owner_number,
        )


class QrEffect(enum.Enum):
    SHOW = "show"
    SPEND = "spend"


def qr_effect(decision: Decision) -> QrEffect | None:
    """What a decision does to the stored QR: the chip shows the latest one while it waits
    for a scan, and none after; None leaves it as it is."""
    if decision.trigger is Trigger.QR_UPDATED:
        return QrEffect.SHOW
    # Scanned, refused, or no longer wanted: the shown QR is spent.
    if decision.to_connection in (ConnectionState.OPEN, ConnectionState.REFUSED):
        return QrEffect.SPEND
    if decision.to_status in (ChipStatus.BANNED, ChipStatus.DELETED):
        return QrEffect.SPEND
    # A logout ends the session the QR belonged to; a new one brings a new QR.
    if decision.trigger is Trigger.LOGGED_OUT:
        return QrEffect.SPEND
    return None


def qr_values(effect: QrEffect | None, qr: QrImage | None) -> dict[str, Any]:
    if effect is QrEffect.SHOW and qr is not None:
        return {"evolution_qr_code": qr.base64, "evolution_pairing_code": qr.pairing_code}
    if effect is QrEffect.SPEND:
        return {"evolution_qr_code": None, "evolution_pairing_code": None}
    return {}


def _unsticks(decision: Decision, facts: Facts) -> bool:
    """A stuck chip (see ``evochips.reconcile``) moves again once a QR comes, it opens, or
    it leaves ``pending``."""
    shows_qr = qr_effect(decision) is QrEffect.SHOW and facts.qr is not None
    opened = decision.to_connection is ConnectionState.OPEN
    return shows_qr or opened or decision.to_status is not ChipStatus.PENDING


async def _append_history(
    session: AsyncSession,
    chip_id: str,
    decision: Decision,
    source: Source,
    facts: Facts,
    webhook_event_id: int | None,
    now: datetime,
) -> None:
    row = _history_values(chip_id, decision, source, facts, now)
    await session.execute(
        statements.APPEND_HISTORY[session.get_bind().dialect.name],
        {**row, "webhook_event_id": webhook_event_id},
    )


def _history_values(
    chip_id: str, decision: Decision, source: Source, facts: Facts, now: datetime
) -> dict[str, Any]:
    """A history row's values, but for ``seq`` and the delivery it came from."""
    return {
        "chip": chip_id,
        "from_status": decision.from_status.value,
        "to_status": decision.to_status.value,
        "from_connection": decision.from_connection.value,
        "to_connection": decision.to_connection.value,
        "trigger": decision.trigger.value,
        "source": source.value,
        "status_reason": facts.status_reason,
        "metadata": _metadata(facts),
        "created_at": now,
    }


def _baseline(chip: Chip, values: dict[str, Any]) -> dict[str, Any]:
    """A change evochips made itself becomes the point late webhooks are replayed from:
    it has no Evolution date_time to be ordered by, so it is not replayed itself."""
    last_event = (
        select(func.coalesce(func.max(WebhookEventRow.id), 0))
        .where(WebhookEventRow.chip_id == chip.id)
        .scalar_subquery()
    )
    return {
        "baseline_status": values["status"],
        "baseline_connection": values["connection_state"],
        "baseline_status_reason": values.get("status_reason", chip.status_reason),
        "baseline_date_time": values.get("evolution_date_time", chip.evolution_date_time),
        "baseline_event_id": last_event,
        "baseline_deliveries": 0,
    }


def _metadata(facts: Facts) -> dict[str, Any]:
    """Small, secret-free context for a history row: never tokens, keys or QR codes."""
    meta: dict[str, Any] = dict(facts.note)
    if facts.wuid:
        meta["wuid"] = facts.wuid
    if facts.evolution_date_time is not None:
        meta["evolution_date_time"] = facts.evolution_date_time.isoformat()
    return meta


async def _insert_chip(
    session: AsyncSession,
    chip_id: str,
    instance_name: str,
    telefone: str,
    evolution_date_time: datetime | None,
    source: Source,
) -> Chip:
    now = utcnow()
    chip = Chip(
        id=chip_id,
        telefone=telefone,
        instance_name=instance_name,
        instance_tag=new_instance_tag(),
        status=ChipStatus.PENDING.value,
        connection_state=ConnectionState.CLOSE.value,
        evolution_connected=False,
        evolution_date_time=evolution_date_time,
        baseline_status=ChipStatus.PENDING.value,
        baseline_connection=ConnectionState.CLOSE.value,
        baseline_event_id=0,
        baseline_date_time=evolution_date_time,
        version=1,
        command_started_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(chip)
    await statements.take_history_turn(session)
    session.add(
        ChipTransition(
            chip_id=chip_id,
            seq=1,
            from_status=None,
            to_status=ChipStatus.PENDING.value,
            from_connection=None,
            to_connection=ConnectionState.CLOSE.value,
            trigger=Trigger.REGISTERED.value,
            source=source.value,
            meta={"instance_name": instance_name},
            created_at=now,
        )
    )
    await session.flush()
    log_after_commit(session, logger, "chip %r registered: -> pending/close", instance_name)
    return chip


async def _last_seen(session: AsyncSession, instance_name: str) -> datetime | None:
    """The newest Evolution ``date_time`` ever received for this name. A chip that takes
    over a name starts from it, so a late or retried event from an earlier instance of
    that name is stale instead of moving the new chip."""
    return await session.scalar(
        select(func.max(WebhookEventRow.date_time)).where(
            WebhookEventRow.instance_name == instance_name
        )
    )


async def _check_unambiguous(
    session: AsyncSession, instance_name: str, chip_id: str | None
) -> None:
    """A chip is found by its id or by its instance name, so neither may be another
    chip's other one: a chip id that is some chip's name would make that name find two."""
    names_a_chip = Chip.id == instance_name
    if chip_id is not None:
        names_a_chip |= (Chip.instance_name == chip_id) & (Chip.id != chip_id)
    clash = await session.scalar(select(Chip.id).where(names_a_chip).limit(1))
    if clash is None:
        return
    if chip_id is None:
        raise RegistrationConflict(
            f"instance name {instance_name!r} is the id of chip {clash}; pick a name that "
            "names nothing else"
        )
    raise RegistrationConflict(
        f"chip id {chip_id!r} or instance name {instance_name!r} is another chip's name or "
        "id; pick one that names nothing else"
    )


async def lock_chip(session: AsyncSession, condition: Any) -> Chip | None:
    # FOR UPDATE serialises writers per chip on PostgreSQL; SQLite drops the clause and
    # relies on the BEGIN IMMEDIATE every write transaction starts with.
    result = await session.execute(select(Chip).where(condition).with_for_update())
    return result.scalar_one_or_none()


async def _live_chip(session: AsyncSession, instance_name: str) -> Chip | None:
    return await session.scalar(_LIVE_CHIP, {"instance": instance_name})


def is_live(instance_name: Any) -> Any:
    """Where the chip of ``instance_name`` (a value, or a bound parameter) is not deleted."""
    return (Chip.instance_name == instance_name) & Chip.deleted_at.is_(None)


# Built once: every command and poll starts here.
_LIVE_CHIP = select(Chip).where(is_live(bindparam("instance", type_=Chip.instance_name.type)))


def is_stale(candidate: datetime | None, last_applied: datetime | None) -> bool:
    """Strictly older than the last applied event; equal times are not stale because
    Evolution emits several events in the same millisecond."""
    return candidate is not None and last_applied is not None and candidate < last_applied


async def remember_instance(db: Database, chip_id: str, instance_id: str | None) -> None:
    """Store Evolution's id for the chip's instance; not a state change, so no history."""
    if instance_id is None:
        return
    async with db.write() as session:
        await session.execute(
            update(Chip)
            .where(Chip.id == chip_id)
            .values(
                evolution_instance_id=instance_id, version=Chip.version + 1, updated_at=utcnow()
            )
        )


async def flag_misconfigured(db: Database, chip_id: str, reason: str) -> None:
    """Say why the chip's instance cannot work as a WhatsApp number; not a state change."""
    async with db.write() as session:
        await session.execute(
            update(Chip)
            .where(Chip.id == chip_id)
            .values(misconfigured=reason[:255], version=Chip.version + 1, updated_at=utcnow())
        )


async def clear_unstable(db: Database, chip_id: str, expected_version: int | None = None) -> bool:
    """Take the unstable flag down and forget the drops counted so far; with
    ``expected_version``, only if the chip has not changed since. Returns whether it did."""
    where = [Chip.id == chip_id]
    if expected_version is not None:
        where.append(Chip.version == expected_version)
    async with db.write() as session:
        cleared = await session.execute(
            update(Chip)
            .where(*where)
            .values(**STEADY, version=Chip.version + 1, updated_at=utcnow())
        )
    return bool(cleared.rowcount)  # type: ignore[attr-defined]


async def find_chip(db: Database, instance_name: str, *, include_deleted: bool = False) -> Chip:
    """The live chip with this instance name (or, if asked, the latest deleted one)."""
    async with db.read() as session:
        chip = await _live_chip(session, instance_name)
        if chip is None:
            deleted = await session.scalar(
                select(Chip)
                .where(Chip.instance_name == instance_name)
                .order_by(Chip.deleted_at.desc())
                .limit(1)
            )
    if chip is not None:
        return chip
    if deleted is None:
        raise ChipNotFound(f"no chip has instance {instance_name!r}")
    if not include_deleted:
        raise ChipDeleted(
            f"chip {deleted.id} for instance {instance_name!r} is deleted; it takes no "
            "command until it is created again"
        )
    return deleted
