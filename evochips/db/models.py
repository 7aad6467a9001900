"""Tables: chips, their transition history, and every webhook delivery received."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only autoincrements INTEGER PRIMARY KEY, not BIGINT.
BigId = BigInteger().with_variant(Integer, "sqlite")
# A Python None is stored as SQL NULL, not as the JSON value null.
Json = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC timestamp on every backend (SQLite stores it without an offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Deliveries that own their dedupe key. A duplicate does not, and neither does an
# unmatched one: the same event must still apply when it is delivered again after its
# chip has been registered.
KEY_OWNERS = "outcome NOT IN ('duplicate', 'unmatched')"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Chip(Base):
    __tablename__ = "chips"
    __table_args__ = (
        # A deleted chip keeps its name for the record; a new chip may reuse it.
        Index(
            "uq_chips_live_instance_name",
            "instance_name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index("ix_chips_instance_name", "instance_name"),
        Index("ix_chips_status", "status"),
        Index("uq_chips_instance_tag", "instance_tag", unique=True),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    telefone: Mapped[str] = mapped_column(String(20))
    instance_name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    connection_state: Mapped[str] = mapped_column(String(16))
    evolution_connected: Mapped[bool] = mapped_column(Boolean, default=False)
    evolution_instance_id: Mapped[str | None] = mapped_column(String(64))
    # Drawn afresh each time the chip is given an instance, and sent by that instance with
    # every webhook: its late events then never touch a later instance of the same name.
    instance_tag: Mapped[str | None] = mapped_column(String(32))
    evolution_qr_code: Mapped[str | None] = mapped_column(Text)
    evolution_pairing_code: Mapped[str | None] = mapped_column(String(32))
    status_reason: Mapped[int | None] = mapped_column(Integer)
    owner_jid: Mapped[str | None] = mapped_column(String(128))
    profile_name: Mapped[str | None] = mapped_column(String(255))
    # Evolution's date_time of the last applied event: server-local time labelled UTC, so
    # it is stored naive and compared only with other Evolution date_time values.
    evolution_date_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    # The chip as evochips itself last left it (registration, a command or a poll) and the
    # last delivery it had seen then. A late webhook is folded in by replaying, from this
    # baseline, every later delivery in Evolution's date_time order; one older than
    # ``baseline_date_time`` predates the baseline and is only recorded.
    baseline_status: Mapped[str] = mapped_column(String(16))
    baseline_connection: Mapped[str] = mapped_column(String(16))
    baseline_status_reason: Mapped[int | None] = mapped_column(Integer)
    baseline_event_id: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    baseline_date_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    # Deliveries received since the baseline; see evochips.inbox.MAX_REPLAY.
    baseline_deliveries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Set by reconciliation when a pending chip has waited too long without a QR (Evolution
    # can stay "connecting" with no QR for ever); cleared when a QR comes or the chip opens.
    stuck_since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Set (our clock) when the connection dropped from open three times within a minute of
    # Evolution's date_time; ``drops`` counts the drops since ``drops_since`` (Evolution's
    # date_time of the first in the window).
    unstable_since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    drops: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    drops_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    # Why the instance cannot work as a WhatsApp chip (a non-Baileys integration, say).
    misconfigured: Mapped[str | None] = mapped_column(String(255))
    # The paired number as E.164, from the owner JID, and whether it differs from
    # ``telefone`` by more than Brazil's ninth digit.
    owner_number: Mapped[str | None] = mapped_column(String(20))
    number_mismatch: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # When a command last started work on the chip (registration, a create retried): a
    # create not yet answered is left alone for a while after it, however many webhooks
    # (a QR every 45 s) touch the chip meanwhile.
    command_started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class WebhookEventRow(Base):
    __tablename__ = "webhook_events"
    __table_args__ = (
        # One delivery of an event owns its key; later copies are rows marked duplicate,
        # so the index is what makes "exactly one effect" hold under races.
        Index(
            "uq_webhook_events_first_delivery",
            "dedupe_key",
            unique=True,
            sqlite_where=text(KEY_OWNERS),
            postgresql_where=text(KEY_OWNERS),
        ),
        Index("ix_webhook_events_instance_name", "instance_name"),
        Index("ix_webhook_events_chip_id_id", "chip_id", "id"),
        Index("ix_webhook_events_received_at", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String(64))
    instance_name: Mapped[str | None] = mapped_column(String(255))
    event: Mapped[str] = mapped_column(String(64))
    date_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    body: Mapped[dict[str, Any] | None] = mapped_column(Json)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(String(255))
    # A delivery that changed nothing, repeated (a reconnect storm), is counted on the
    # first one's row instead of adding a row each time.
    repeats: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    last_received_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Byte-for-byte copies of this delivery received after it, counted here, not stored.
    copies: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    chip_id: Mapped[str | None] = mapped_column(ForeignKey("chips.id", ondelete="RESTRICT"))
    # What the delivery told the state machine, kept so that late deliveries can be
    # replayed in order without reading bodies again.
    trigger: Mapped[str | None] = mapped_column(String(32))
    status_reason: Mapped[int | None] = mapped_column(Integer)


class ChipTransition(Base):
    __tablename__ = "chip_transitions"
    __table_args__ = (
        UniqueConstraint("chip_id", "seq"),
        Index("ix_chip_transitions_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    chip_id: Mapped[str] = mapped_column(ForeignKey("chips.id", ondelete="RESTRICT"))
    seq: Mapped[int] = mapped_column(Integer)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    from_connection: Mapped[str | None] = mapped_column(String(16))
    to_connection: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", Json, default=dict)
    webhook_event_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("webhook_events.id", ondelete="RESTRICT")
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class IdempotencyKey(Base):
    """A request made with an ``Idempotency-Key``: the first one is answered and its answer
    kept, so a retry with the same key and body gets that answer instead of a second
    effect. ``status_code`` is None while the first request is still being answered."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Lease(Base):
    """A job only one replica may run at a time: whoever holds an unexpired lease runs it."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
