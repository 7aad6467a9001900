"""flags a chip can carry besides its status, and copies counted instead of stored

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("copies", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("chips") as batch:
        batch.add_column(sa.Column("unstable_since", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("drops", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("drops_since", sa.DateTime(timezone=False)))
        batch.add_column(sa.Column("misconfigured", sa.String(255)))
        batch.add_column(sa.Column("owner_number", sa.String(20)))
        batch.add_column(
            sa.Column("number_mismatch", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("chips") as batch:
        for column in (
            "number_mismatch",
            "owner_number",
            "misconfigured",
            "drops_since",
            "drops",
            "unstable_since",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("copies")
