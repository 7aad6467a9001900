"""count repeated no-op deliveries on one row

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("repeats", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("last_received_at", sa.DateTime(timezone=True)))
    op.create_index("ix_webhook_events_chip_id_id", "webhook_events", ["chip_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_chip_id_id", table_name="webhook_events")
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("last_received_at")
        batch.drop_column("repeats")
