"""Evolution webhook deliveries, read into our terms.

Evolution sends no event id and no signature, spells event names two ways, and puts
secrets (the instance token in ``apikey``, QR codes) in its bodies. This module turns a
decoded body into a :class:`WebhookEvent`: the normalised event name, a dedupe key built
from content, the body with secrets removed, and the :class:`Signal` for our state
machine, if the event carries one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from evochips.statemachine import Trigger

HANDLED_EVENTS = frozenset(
    {"CONNECTION_UPDATE", "QRCODE_UPDATED", "LOGOUT_INSTANCE", "REMOVE_INSTANCE"}
)
REDACTED = "[redacted]"
_SECRET_KEYS = frozenset({"apikey", "base64", "code", "pairingCode", "token", "hash", "jwt_key"})

# Close reasons after which Evolution v2 does not reconnect by itself and a new QR is
# needed (reference section 3.4); 403 means WhatsApp banned the number.
_LOGGED_OUT_REASONS = frozenset({401, 402, 406})
_BANNED_REASON = 403


def normalise_event_name(name: str) -> str:
    """``connection.update``, ``connection-update`` and ``CONNECTION_UPDATE`` are one event."""
    return name.strip().replace(".", "_").replace("-", "_").upper()


@dataclass(frozen=True)
class QrImage:
    base64: str | None
    code: str | None
    pairing_code: str | None


@dataclass(frozen=True)
class Signal:
    """What an event tells the state machine, with the facts it carries."""

    trigger: Trigger
    status_reason: int | None = None
    wuid: str | None = None
    profile_name: str | None = None
    qr: QrImage | None = None


@dataclass(frozen=True)
class WebhookEvent:
    event: str
    instance: str | None
    date_time: datetime | None
    dedupe_key: str
    stored_body: dict[str, Any] | None
    signal: Signal | None
    ignore_reason: str | None

    @property
    def handled(self) -> bool:
        return self.event in HANDLED_EVENTS


def read_event(body: Any, suffix: str | None = None) -> WebhookEvent:
    """Read a decoded webhook body; ``suffix`` is the by-events URL suffix, if any.

    Never raises: a body we cannot use becomes an event with an ``ignore_reason``.
    """
    envelope = body if isinstance(body, dict) else {}
    raw_event = envelope.get("event")
    if isinstance(raw_event, str) and raw_event.strip():
        event = normalise_event_name(raw_event)
    elif suffix:
        event = normalise_event_name(suffix)
    else:
        event = ""
    instance = envelope.get("instance")
    instance = instance if isinstance(instance, str) and instance else None
    data = envelope.get("data")
    date_time = _parse_date_time(envelope.get("date_time"))

    signal, reason = _signal(event, data)
    if not isinstance(body, dict):
        reason = "the body is not a JSON object"
    elif not event:
        reason = "the body names no event"
    elif instance is None and event in HANDLED_EVENTS:
        signal, reason = None, "the body names no instance"
    return WebhookEvent(
        event=event or "UNKNOWN",
        instance=instance,
        date_time=date_time,
        dedupe_key=_dedupe_key(instance, event, envelope.get("date_time"), data),
        stored_body=redact(envelope) if event in HANDLED_EVENTS else None,
        signal=signal,
        ignore_reason=reason,
    )


def redact(value: Any) -> Any:
    """A copy of ``value`` with tokens, API keys and QR codes replaced."""
    if isinstance(value, dict):
        return {
            key: (REDACTED if key in _SECRET_KEYS and item is not None else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def _signal(event: str, data: Any) -> tuple[Signal | None, str | None]:
    if event not in HANDLED_EVENTS:
        return None, "an event evochips does not handle"
    if event == "LOGOUT_INSTANCE":
        return Signal(Trigger.LOGGED_OUT), None
    if event == "REMOVE_INSTANCE":
        return Signal(Trigger.REMOVED), None
    if not isinstance(data, dict):
        return None, "the event has no data object"
    if event == "QRCODE_UPDATED":
        return _qr_signal(data)
    return _connection_signal(data)


def _qr_signal(data: dict[str, Any]) -> tuple[Signal | None, str | None]:
    qrcode = data.get("qrcode")
    if isinstance(qrcode, dict):
        qr = QrImage(
            base64=_text(qrcode.get("base64")),
            code=_text(qrcode.get("code")),
            pairing_code=_text(qrcode.get("pairingCode")),
        )
        if qr.base64 or qr.code or qr.pairing_code:
            return Signal(Trigger.QR_UPDATED, qr=qr), None
        return None, "the QR event carries no QR"
    # The QR-limit variant: {"message": "QR code limit reached...", "statusCode": 500}.
    if "message" in data or "statusCode" in data:
        return Signal(Trigger.QR_REFUSED, status_reason=_int(data.get("statusCode"))), None
    return None, "the QR event carries no QR"


def _connection_signal(data: dict[str, Any]) -> tuple[Signal | None, str | None]:
    state = data.get("state")
    reason = _int(data.get("statusReason"))
    wuid = _text(data.get("wuid"))
    profile_name = _text(data.get("profileName"))
    if state == "open":
        trigger = Trigger.CONNECTED
    elif state == "connecting":
        trigger = Trigger.CONNECTING
    elif state == "refused":
        trigger = Trigger.QR_REFUSED
    elif state == "close" and reason in _LOGGED_OUT_REASONS:
        trigger = Trigger.LOGGED_OUT
    elif state == "close" and reason == _BANNED_REASON:
        trigger = Trigger.BANNED
    elif state == "close":
        trigger = Trigger.DISCONNECTED
    else:
        return None, "the connection event has no known state"
    return Signal(trigger, status_reason=reason, wuid=wuid, profile_name=profile_name), None


def _dedupe_key(instance: str | None, event: str, date_time: Any, data: Any) -> str:
    """A hash of what identifies a delivery; ``destination`` and ``apikey`` are left out
    because the same event reaches us through the instance and the global webhook."""
    canonical = json.dumps(
        [instance, event, date_time, data], sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _parse_date_time(value: Any) -> datetime | None:
    """Evolution's ``date_time`` is server-local wall time labelled ``Z``; it is kept as a
    naive value and only ever compared with other ``date_time`` values."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=None)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
