"""Persistence: models, the engine and its transactions, and migrations."""

from evochips.db.engine import DEFAULT_URL, Database, DatabaseUnavailable, log_after_commit
from evochips.db.models import (
    Base,
    Chip,
    ChipTransition,
    IdempotencyKey,
    Lease,
    WebhookEventRow,
)

__all__ = [
    "DEFAULT_URL",
    "Base",
    "Chip",
    "ChipTransition",
    "Database",
    "DatabaseUnavailable",
    "IdempotencyKey",
    "Lease",
    "WebhookEventRow",
    "log_after_commit",
]
