"""when a command last started work on a chip, apart from when anything last changed it

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chips") as batch:
        batch.add_column(sa.Column("command_started_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("chips") as batch:
        batch.drop_column("command_started_at")
