"""The chip lifecycle as one table.

A chip has two dimensions: its lifecycle ``status`` (ours) and its ``connection_state``
(Evolution's). Every change to either goes through :func:`decide`, which asks one shared
``transitions`` machine whether the trigger is allowed from the chip's current status and
where it leads. The machine is a pure decision table: it holds no chips, runs no callbacks
and does no I/O, so it is safe to share between concurrent requests. Persisting the
decision is the caller's job (see ``evochips.lifecycle``).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from transitions import Machine, MachineError

logging.getLogger("transitions").setLevel(logging.WARNING)


class ChipStatus(enum.StrEnum):
    PENDING = "pending"
    WARMING = "warming"
    READY = "ready"
    ACTIVE = "active"
    DEGRADED = "degraded"
    BANNED = "banned"
    DELETED = "deleted"


class ConnectionState(enum.StrEnum):
    CLOSE = "close"
    CONNECTING = "connecting"
    OPEN = "open"
    REFUSED = "refused"


class Trigger(enum.StrEnum):
    # Registration, by command.
    REGISTERED = "registered"
    REJECTED = "rejected"
    # Signals from Evolution, by webhook, poll or a command's answer.
    CONNECTING = "connecting"
    QR_UPDATED = "qr_updated"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    LOGGED_OUT = "logged_out"
    BANNED = "banned"
    QR_REFUSED = "qr_refused"
    REMOVED = "removed"
    # Findings of reconciliation, recorded though they move neither status nor connection.
    FLAGGED_STUCK = "flagged_stuck"
    FLAGGED_MISCONFIGURED = "flagged_misconfigured"
    STEADY_AGAIN = "steady_again"
    INSTANCE_FOUND = "instance_found"
    # Lifecycle, by the backend.
    PROMOTE = "promote"
    ACTIVATE = "activate"
    DEGRADE = "degrade"
    RESTORE = "restore"


P, W, R, A, D, B, X = (
    ChipStatus.PENDING,
    ChipStatus.WARMING,
    ChipStatus.READY,
    ChipStatus.ACTIVE,
    ChipStatus.DEGRADED,
    ChipStatus.BANNED,
    ChipStatus.DELETED,
)
PAIRED = [W, R, A, D]
LIVE = [P, *PAIRED, B]
STAY = None

# fmt: off
# trigger                   from                to       connection state after
TABLE: list[tuple[Trigger, list[ChipStatus], ChipStatus | None, ConnectionState | None]] = [
    (Trigger.REGISTERED,    [X],                P,       ConnectionState.CLOSE),
    (Trigger.REJECTED,      [P],                X,       ConnectionState.CLOSE),
    (Trigger.CONNECTING,    LIVE,               STAY,    ConnectionState.CONNECTING),
    (Trigger.QR_UPDATED,    LIVE,               STAY,    ConnectionState.CONNECTING),
    (Trigger.CONNECTED,     [P],                W,       ConnectionState.OPEN),
    (Trigger.CONNECTED,     [*PAIRED, B],       STAY,    ConnectionState.OPEN),
    (Trigger.DISCONNECTED,  LIVE,               STAY,    ConnectionState.CLOSE),
    (Trigger.LOGGED_OUT,    [P, *PAIRED],       P,       ConnectionState.CLOSE),
    (Trigger.LOGGED_OUT,    [B],                STAY,    ConnectionState.CLOSE),
    (Trigger.BANNED,        LIVE,               B,       ConnectionState.CLOSE),
    (Trigger.QR_REFUSED,    LIVE,               STAY,    ConnectionState.REFUSED),
    (Trigger.REMOVED,       LIVE,               X,       ConnectionState.CLOSE),
    (Trigger.REMOVED,       [X],                STAY,    None),
    (Trigger.FLAGGED_STUCK, [P],                STAY,    None),
    (Trigger.FLAGGED_MISCONFIGURED, LIVE,       STAY,    None),
    (Trigger.STEADY_AGAIN,  LIVE,               STAY,    None),
    (Trigger.INSTANCE_FOUND, LIVE,              STAY,    None),
    (Trigger.PROMOTE,       [W],                R,       None),
    (Trigger.ACTIVATE,      [R],                A,       None),
    (Trigger.DEGRADE,       [A],                D,       None),
    (Trigger.RESTORE,       [D],                A,       None),
]
# fmt: on
"""Each row: a trigger, the statuses it may fire from, the status it leads to (``STAY`` keeps
the current one) and the connection state it leaves behind (``None`` leaves it as it was).
A brand-new chip needs no decision: its first history row goes from nothing to ``pending``.
``REGISTERED`` re-attaches a new instance to a chip whose old one was deleted.
The last three rows' kind move nothing: they record what reconciliation found and set
right (see ``evochips.reconcile``): a chip waiting too long for a QR (``FLAGGED_STUCK``), an
instance that is not a WhatsApp one (``FLAGGED_MISCONFIGURED``), an unstable chip open and
quiet long enough to lose the flag (``STEADY_AGAIN``), and the instance of a create whose
answer was lost (``INSTANCE_FOUND``)."""

LIFECYCLE_TRIGGERS = (Trigger.PROMOTE, Trigger.ACTIVATE, Trigger.DEGRADE, Trigger.RESTORE)
# Triggers that leave status and connection as they are but are history all the same.
NOTED_TRIGGERS = frozenset(
    {Trigger.FLAGGED_STUCK, Trigger.FLAGGED_MISCONFIGURED, Trigger.STEADY_AGAIN,
     Trigger.INSTANCE_FOUND}
)  # fmt: skip

_MACHINE = Machine(
    model=None,
    states=ChipStatus,
    transitions=[
        {"trigger": trigger.value, "source": sources, "dest": dest}
        for trigger, sources, dest, _ in TABLE
    ],
    initial=None,
    auto_transitions=False,
    send_event=True,
)
_CONNECTION_AFTER = {
    (trigger, source): after for trigger, sources, _, after in TABLE for source in sources
}


class InvalidTransition(Exception):
    """The table has no row for this trigger from the chip's current status."""

    def __init__(self, chip: str, trigger: Trigger, status: ChipStatus) -> None:
        choices = (
            lifecycle_triggers_from(status)
            if trigger in LIFECYCLE_TRIGGERS
            else allowed_triggers(status)
        )
        allowed = ", ".join(choices) or "none"
        super().__init__(
            f"chip {chip!r} cannot take trigger {trigger.value!r} from status "
            f"{status.value!r} (allowed: {allowed})"
        )
        self.chip = chip
        self.trigger = trigger
        self.status = status


@dataclass(frozen=True)
class Decision:
    """Where a trigger leads a chip; ``changed`` tells whether anything moved, and
    ``recorded`` whether it makes a history row."""

    trigger: Trigger
    from_status: ChipStatus
    to_status: ChipStatus
    from_connection: ConnectionState
    to_connection: ConnectionState

    @property
    def changed(self) -> bool:
        return (self.from_status, self.from_connection) != (self.to_status, self.to_connection)

    @property
    def recorded(self) -> bool:
        return self.changed or self.trigger in NOTED_TRIGGERS


@dataclass
class _Model:
    state: ChipStatus


def decide(
    chip: str, trigger: Trigger, status: ChipStatus, connection: ConnectionState
) -> Decision:
    """Return what ``trigger`` does to a chip in ``status``/``connection``.

    Raises :class:`InvalidTransition` when the table does not allow it.
    """
    model = _Model(status)
    try:
        _MACHINE.events[trigger.value].trigger(model)
    except MachineError as exc:
        raise InvalidTransition(chip, trigger, status) from exc
    after = _CONNECTION_AFTER[(trigger, status)]
    return Decision(
        trigger=trigger,
        from_status=status,
        to_status=ChipStatus(model.state),
        from_connection=connection,
        to_connection=connection if after is None else after,
    )


def allowed_triggers(status: ChipStatus) -> list[str]:
    """Triggers the table allows from ``status``, in table order."""
    return [t.value for t in Trigger if (t, status) in _CONNECTION_AFTER]


def lifecycle_triggers_from(status: ChipStatus) -> list[str]:
    """The lifecycle triggers a backend may issue for a chip in ``status``."""
    return [t.value for t in LIFECYCLE_TRIGGERS if (t, status) in _CONNECTION_AFTER]
