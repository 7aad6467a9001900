"""The chip state machine: statuses, triggers and the table that links them."""

from evochips.statemachine.machine import (
    LIFECYCLE_TRIGGERS,
    PAIRED,
    ChipStatus,
    ConnectionState,
    Decision,
    InvalidTransition,
    Trigger,
    allowed_triggers,
    decide,
    lifecycle_triggers_from,
)

__all__ = [
    "LIFECYCLE_TRIGGERS",
    "PAIRED",
    "ChipStatus",
    "ConnectionState",
    "Decision",
    "InvalidTransition",
    "Trigger",
    "allowed_triggers",
    "decide",
    "lifecycle_triggers_from",
]
