"""chips, their transition history, and webhook deliveries

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Utc = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "chips",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("telefone", sa.String(20), nullable=False),
        sa.Column("instance_name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("connection_state", sa.String(16), nullable=False),
        sa.Column("evolution_connected", sa.Boolean(), nullable=False),
        sa.Column("evolution_instance_id", sa.String(64)),
        sa.Column("evolution_qr_code", sa.Text()),
        sa.Column("evolution_pairing_code", sa.String(32)),
        sa.Column("status_reason", sa.Integer()),
        sa.Column("owner_jid", sa.String(128)),
        sa.Column("profile_name", sa.String(255)),
        sa.Column("evolution_date_time", sa.DateTime(timezone=False)),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", Utc, nullable=False),
        sa.Column("updated_at", Utc, nullable=False),
        sa.Column("deleted_at", Utc),
        sa.PrimaryKeyConstraint("id", name="pk_chips"),
    )
    op.create_index("ix_chips_instance_name", "chips", ["instance_name"])
    op.create_index("ix_chips_status", "chips", ["status"])
    op.create_index(
        "uq_chips_live_instance_name",
        "chips",
        ["instance_name"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )

    op.create_table(
        "webhook_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("dedupe_key", sa.String(64), nullable=False),
        sa.Column("instance_name", sa.String(255)),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("date_time", sa.DateTime(timezone=False)),
        sa.Column("received_at", Utc, nullable=False),
        sa.Column("body", Json),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(255)),
        sa.Column("chip_id", sa.String(36)),
        sa.ForeignKeyConstraint(
            ["chip_id"],
            ["chips.id"],
            name="fk_webhook_events_chip_id_chips",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_events"),
    )
    op.create_index("ix_webhook_events_instance_name", "webhook_events", ["instance_name"])
    op.create_index("ix_webhook_events_received_at", "webhook_events", ["received_at"])
    op.create_index(
        "uq_webhook_events_first_delivery",
        "webhook_events",
        ["dedupe_key"],
        unique=True,
        sqlite_where=sa.text("outcome NOT IN ('duplicate', 'unmatched')"),
        postgresql_where=sa.text("outcome NOT IN ('duplicate', 'unmatched')"),
    )

    op.create_table(
        "chip_transitions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("chip_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("from_status", sa.String(16)),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("from_connection", sa.String(16)),
        sa.Column("to_connection", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Integer()),
        sa.Column("metadata", Json, nullable=False),
        sa.Column("webhook_event_id", BigId),
        sa.Column("created_at", Utc, nullable=False),
        sa.ForeignKeyConstraint(
            ["chip_id"],
            ["chips.id"],
            name="fk_chip_transitions_chip_id_chips",
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["webhook_event_id"],
            ["webhook_events.id"],
            name="fk_chip_transitions_webhook_event_id_webhook_events",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_chip_transitions"),
        sa.UniqueConstraint("chip_id", "seq", name="uq_chip_transitions_chip_id_seq"),
    )
    op.create_index("ix_chip_transitions_created_at", "chip_transitions", ["created_at"])


def downgrade() -> None:
    op.drop_table("chip_transitions")
    op.drop_table("webhook_events")
    op.drop_table("chips")
