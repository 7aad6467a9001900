"""count deliveries since a chip's baseline, to bound what a replay reads

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chips") as batch:
        batch.add_column(
            sa.Column("baseline_deliveries", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("chips") as batch:
        batch.drop_column("baseline_deliveries")
