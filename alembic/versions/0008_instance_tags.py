"""a tag per Evolution instance a chip was given, which that instance's webhooks carry

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chips") as batch:
        batch.add_column(sa.Column("instance_tag", sa.String(32)))
        batch.create_index("uq_chips_instance_tag", ["instance_tag"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("chips") as batch:
        batch.drop_index("uq_chips_instance_tag")
        batch.drop_column("instance_tag")
