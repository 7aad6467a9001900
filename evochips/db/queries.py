"""Read-only questions people ask of the fleet and its audit trail.

Lists come in pages ordered by a key that never changes (keyset pagination): a page
starts strictly after the last row of the one before, so rows inserted meanwhile never
make a page repeat or skip a row that was already there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, select, tuple_

from evochips.db.engine import Database
from evochips.db.models import Chip, ChipTransition

CHIP_FIELDS = (
    "id",
    "instance_name",
    "telefone",
    "status",
    "connection_state",
    "evolution_connected",
    "evolution_instance_id",
    "status_reason",
    "owner_jid",
    "profile_name",
    "evolution_date_time",
    "stuck_since",
    "unstable_since",
    "drops",
    "drops_since",
    "misconfigured",
    "owner_number",
    "number_mismatch",
    "version",
    "created_at",
    "updated_at",
    "deleted_at",
)
TRANSITION_FIELDS = (
    "seq",
    "created_at",
    "trigger",
    "source",
    "from_status",
    "to_status",
    "from_connection",
    "to_connection",
    "status_reason",
    "webhook_event_id",
    "meta",
)
FEED_FIELDS = ("id", "chip_id", *TRANSITION_FIELDS)

K = TypeVar("K")


@dataclass(frozen=True)
class Page(Generic[K]):
    """Rows, and the key of the last one (to ask for the next page with)."""

    rows: list[dict[str, Any]]
    last: K | None
    has_more: bool


@dataclass(frozen=True)
class ChipFilter:
    status: str | None = None
    connection_state: str | None = None
    connected: bool | None = None
    include_deleted: bool = False


@dataclass(frozen=True)
class TransitionFilter:
    since: datetime | None = None
    until: datetime | None = None
    source: str | None = None
    trigger: str | None = None
    status: str | None = None


async def list_chips(db: Database, *, include_deleted: bool = False) -> list[dict[str, Any]]:
    query = select(Chip).order_by(Chip.created_at, Chip.id)
    if not include_deleted:
        query = query.where(Chip.deleted_at.is_(None))
    async with db.read() as session:
        chips = (await session.scalars(query)).all()
    return [chip_dict(chip) for chip in chips]


async def chips_page(
    db: Database, where: ChipFilter, after: tuple[datetime, str] | None, limit: int
) -> Page[tuple[datetime, str]]:
    """Chips in creation order (then id), after the chip whose key is ``after``."""
    query = select(Chip).order_by(Chip.created_at, Chip.id)
    if not where.include_deleted and where.status != "deleted":
        query = query.where(Chip.deleted_at.is_(None))
    if where.status is not None:
        query = query.where(Chip.status == where.status)
    if where.connection_state is not None:
        query = query.where(Chip.connection_state == where.connection_state)
    if where.connected is not None:
        query = query.where(Chip.evolution_connected.is_(where.connected))
    if after is not None:
        query = query.where(tuple_(Chip.created_at, Chip.id) > tuple_(*after))
    chips = await _page(db, query, limit)
    shown = chips[:limit]
    last = (shown[-1].created_at, shown[-1].id) if shown else after
    return Page([chip_dict(chip) for chip in shown], last, len(chips) > limit)


async def find(db: Database, name_or_id: str) -> Chip | None:
    """A chip by instance name (the live one first, else the latest deleted) or by id."""
    async with db.read() as session:
        by_name = await session.scalar(
            select(Chip)
            .where(Chip.instance_name == name_or_id)
            .order_by(Chip.deleted_at.is_not(None), Chip.deleted_at.desc())
            .limit(1)
        )
        return by_name or await session.get(Chip, name_or_id)


async def history(db: Database, chip_id: str) -> list[dict[str, Any]]:
    page = await history_page(db, chip_id, after_seq=0, limit=None)
    return page.rows


async def history_page(db: Database, chip_id: str, after_seq: int, limit: int | None) -> Page[int]:
    """A chip's transitions, oldest first, after sequence number ``after_seq``."""
    query = (
        select(ChipTransition)
        .where(ChipTransition.chip_id == chip_id, ChipTransition.seq > after_seq)
        .order_by(ChipTransition.seq)
    )
    rows = await _page(db, query, limit)
    shown = rows if limit is None else rows[:limit]
    last = shown[-1].seq if shown else after_seq
    more = limit is not None and len(rows) > limit
    return Page([_fields(row, TRANSITION_FIELDS) for row in shown], last, more)


async def transitions_page(
    db: Database, where: TransitionFilter, after_id: int, limit: int
) -> Page[int]:
    """The fleet's transitions in the order they were committed (see
    ``lifecycle._append_history``), after ``after_id``."""
    query = select(ChipTransition).where(ChipTransition.id > after_id).order_by(ChipTransition.id)
    if where.since is not None:
        query = query.where(ChipTransition.created_at >= where.since)
    if where.until is not None:
        query = query.where(ChipTransition.created_at < where.until)
    if where.source is not None:
        query = query.where(ChipTransition.source == where.source)
    if where.trigger is not None:
        query = query.where(ChipTransition.trigger == where.trigger)
    if where.status is not None:
        query = query.where(ChipTransition.to_status == where.status)
    rows = await _page(db, query, limit)
    shown = rows[:limit]
    last = shown[-1].id if shown else after_id
    return Page([_fields(row, FEED_FIELDS) for row in shown], last, len(rows) > limit)


def chip_dict(chip: Chip) -> dict[str, Any]:
    """A chip's public fields; the QR and pairing code are reported as present or not."""
    data = _fields(chip, CHIP_FIELDS)
    data["has_qr_code"] = chip.evolution_qr_code is not None
    data["unstable"] = chip.unstable_since is not None
    return data


def flags(chip: dict[str, Any]) -> list[str]:
    """The names of the flags a chip (as :func:`chip_dict` gives it) has up."""
    raised = {
        "stuck": chip["stuck_since"] is not None,
        "unstable": chip["unstable"],
        "misconfigured": chip["misconfigured"] is not None,
        "number_mismatch": chip["number_mismatch"],
    }
    return [name for name, up in raised.items() if up]


async def _page(db: Database, query: Select[Any], limit: int | None) -> list[Any]:
    """One more row than asked for, which tells whether another page follows."""
    if limit is not None:
        query = query.limit(limit + 1)
    async with db.read() as session:
        return list((await session.scalars(query)).all())


def _fields(row: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}
