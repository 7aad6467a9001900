"""SQL the write paths run, built once: building a SQLAlchemy statement costs more than
running it on the hottest writes (a webhook's chip update and history row)."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import bindparam, func, insert, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from evochips.db.models import Chip, ChipTransition

CHIPS = Chip.metadata.tables[Chip.__tablename__]
HISTORY = ChipTransition.metadata.tables[ChipTransition.__tablename__]
HISTORY_COLUMNS = ("from_status", "to_status", "from_connection", "to_connection", "trigger",
                   "source", "status_reason", "metadata", "webhook_event_id",
                   "created_at")  # fmt: skip

# An arbitrary constant naming the PostgreSQL advisory lock that orders history rows.
HISTORY_ORDER_LOCK = 0x65766F63


@functools.cache
def delivery_applied(delivery: Any, columns: tuple[str, ...], recorded: bool) -> Any:
    """The statement of ``lifecycle.apply_with_delivery`` for a chip update that sets
    ``columns``; built once for each such set, since building it costs more than running
    it."""
    stored = delivery.cte("delivery")
    updated = (
        update(CHIPS)
        .where(
            CHIPS.c.id == bindparam("chip_id"),
            CHIPS.c.version == bindparam("chip_version"),
            select(stored.c.id).exists(),
        )
        .values(
            {column: bindparam(f"s_{column}", type_=CHIPS.c[column].type) for column in columns}
        )
        .returning(*CHIPS.c)
        .cte("updated")
    )
    statement = select(stored.c.id.label("delivery_id"), *updated.c).select_from(
        stored.outerjoin(updated, true())
    )
    if not recorded:
        return statement
    names = [name for name in HISTORY_COLUMNS if name != "webhook_event_id"]
    values = [bindparam(f"h_{name}", type_=HISTORY.c[name].type) for name in names]
    turn = select(func.pg_advisory_xact_lock(HISTORY_ORDER_LOCK)).subquery("turn")
    source = select(updated.c.id, _next_seq(updated.c.id), *values, stored.c.id).select_from(
        updated.join(stored, true()).join(turn, true())
    )
    history = insert(HISTORY).from_select(["chip_id", "seq", *names, "webhook_event_id"], source)
    return statement.add_cte(history.cte("history"))


def chip_update(chip: Chip, values: dict[str, Any]) -> Any:
    """The UPDATE that sets ``values`` on ``chip`` if it still has the version it was read
    with."""
    return (
        update(CHIPS).where(CHIPS.c.id == chip.id, CHIPS.c.version == chip.version).values(**values)
    )


def _next_seq(chip_id: Any) -> Any:
    """One past the chip's last history ``seq`` (the chip is locked, so no other writer
    can take it)."""
    return (
        select(func.coalesce(func.max(HISTORY.c.seq), 0) + 1)
        .where(HISTORY.c.chip_id == chip_id)
        .scalar_subquery()
    )


def _append_history_statement(*, take_turn: bool) -> Any:
    """The history row's INSERT, its values bound by name; built once. With ``take_turn``
    (PostgreSQL) the same statement first waits for the history-order lock (see
    ``take_history_turn``), which saves a round trip on every transition."""
    chip = bindparam("chip", type_=HISTORY.c.chip_id.type)
    if not take_turn:
        return insert(HISTORY).values(
            chip_id=chip,
            seq=_next_seq(chip),
            **{name: bindparam(name) for name in HISTORY_COLUMNS},
        )
    # The row's id is drawn from its sequence only once the lock's one row is produced.
    turn = select(func.pg_advisory_xact_lock(HISTORY_ORDER_LOCK)).subquery("turn")
    values = [bindparam(name, type_=HISTORY.c[name].type) for name in HISTORY_COLUMNS]
    row = select(chip, _next_seq(chip), *values).select_from(turn)
    return insert(HISTORY).from_select(["chip_id", "seq", *HISTORY_COLUMNS], row)


APPEND_HISTORY = {
    "postgresql": _append_history_statement(take_turn=True),
    "sqlite": _append_history_statement(take_turn=False),
}


async def take_history_turn(session: AsyncSession) -> None:
    """History ids must follow commit order, or a reader paging the fleet-wide feed by id
    could pass an id whose row commits later. On PostgreSQL writers take turns from here
    to their commit (a few milliseconds); SQLite has a single writer already."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(select(func.pg_advisory_xact_lock(HISTORY_ORDER_LOCK)))
