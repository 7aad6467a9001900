"""keep what late deliveries need to be replayed in order

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("trigger", sa.String(32)))
        batch.add_column(sa.Column("status_reason", sa.Integer()))
    with op.batch_alter_table("chips") as batch:
        batch.add_column(sa.Column("baseline_status", sa.String(16)))
        batch.add_column(sa.Column("baseline_connection", sa.String(16)))
        batch.add_column(sa.Column("baseline_status_reason", sa.Integer()))
        batch.add_column(
            sa.Column("baseline_event_id", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("baseline_date_time", sa.DateTime(timezone=False)))
    # Existing chips start from where they are: earlier deliveries carry no trigger and
    # are never replayed.
    op.execute(
        "UPDATE chips SET baseline_status = status, baseline_connection = connection_state,"
        " baseline_status_reason = status_reason, baseline_date_time = evolution_date_time,"
        " baseline_event_id = COALESCE((SELECT MAX(id) FROM webhook_events"
        " WHERE webhook_events.chip_id = chips.id), 0)"
    )
    with op.batch_alter_table("chips") as batch:
        batch.alter_column("baseline_status", existing_type=sa.String(16), nullable=False)
        batch.alter_column("baseline_connection", existing_type=sa.String(16), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("chips") as batch:
        for column in (
            "baseline_date_time",
            "baseline_event_id",
            "baseline_status_reason",
            "baseline_connection",
            "baseline_status",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("status_reason")
        batch.drop_column("trigger")
