"""Read-only questions people ask of the fleet and its audit trail."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

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


async def list_chips(db: Database, *, include_deleted: bool = False) -> list[dict[str, Any]]:
    query = select(Chip).order_by(Chip.created_at, Chip.id)
    if not include_deleted:
        query = query.where(Chip.deleted_at.is_(None))
    async with db.read() as session:
        chips = (await session.scalars(query)).all()
    return [chip_dict(chip) for chip in chips]


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
    async with db.read() as session:
        rows = (
            await session.scalars(
                select(ChipTransition)
                .where(ChipTransition.chip_id == chip_id)
                .order_by(ChipTransition.seq)
            )
        ).all()
    return [{name: getattr(row, name) for name in TRANSITION_FIELDS} for row in rows]


def chip_dict(chip: Chip) -> dict[str, Any]:
    """A chip's public fields; the QR and pairing code are reported as present or not."""
    data = {name: getattr(chip, name) for name in CHIP_FIELDS}
    data["has_qr_code"] = chip.evolution_qr_code is not None
    return data
