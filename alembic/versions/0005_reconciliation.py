"""reconciliation: a lease so one replica runs it, and stuck chips

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )
    with op.batch_alter_table("chips") as batch:
        batch.add_column(sa.Column("stuck_since", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("chips") as batch:
        batch.drop_column("stuck_since")
    op.drop_table("leases")
