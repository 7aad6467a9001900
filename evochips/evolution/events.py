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
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from evochips.evolution.shapes import iso_wall_time
from evochips.statemachine import Trigger

HANDLED_EVENTS = frozenset(
    {"CONNECTION_UPDATE", "QRCODE_UPDATED", "LOGOUT_INSTANCE", "REMOVE_INSTANCE", "STATUS_INSTANCE"}
)
# Every other event Evolution v1.8 or v2 sends: a "webhook by events" URL suffix naming
# one of these is enough to know a delivery is not evochips' business.
UNHANDLED_EVENTS = frozenset({
    "APPLICATION_STARTUP", "MESSAGES_SET", "MESSAGES_UPSERT", "MESSAGES_EDITED",
    "MESSAGES_UPDATE", "MESSAGES_DELETE", "SEND_MESSAGE", "SEND_MESSAGE_UPDATE",
    "CONTACTS_SET", "CONTACTS_UPSERT", "CONTACTS_UPDATE", "PRESENCE_UPDATE", "CHATS_SET",
    "CHATS_UPSERT", "CHATS_UPDATE", "CHATS_DELETE", "GROUPS_UPSERT", "GROUP_UPDATE",
    "GROUP_PARTICIPANTS_UPDATE", "LABELS_EDIT", "LABELS_ASSOCIATION", "CALL",
    "NEW_JWT_TOKEN", "TYPEBOT_START", "TYPEBOT_CHANGE_STATUS", "CHAMA_AI_ACTION",
    "INSTANCE_CREATE", "INSTANCE_DELETE",
})  # fmt: skip
REDACTED = "[redacted]"
UNNAMED = "UNKNOWN"  # the event of a body that names none
MAX_EVENT_LENGTH = 64
MAX_INSTANCE_LENGTH = 255
MAX_STATUS_CODE = 99_999
# Column sizes in evochips.db.models; a longer value is no value Evolution sends.
MAX_JID_LENGTH = 128
MAX_PROFILE_NAME_LENGTH = 255
MAX_PAIRING_CODE_LENGTH = 32
MAX_QR_LENGTH = 512 * 1024
_EVENT_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# The webhook secret in a URL path (see evochips.receiver.auth): /webhooks/evolution/k/<secret>
_PATH_SECRET = re.compile(r"(/webhooks/evolution/k/)[^/?#\s]*")
# Credentials in a URL's authority (``https://user:password@host``), wherever they are.
_URL_CREDENTIALS = re.compile(r"(\w://)[^/?#@\s]+@")
# Query parameters that carry keys or tokens (``?apikey=...``, ``&token=...``).
_QUERY_SECRET = re.compile(
    r"([?&](?:api_?key|token|access_token|secret|jwt|key|password)=)[^&#\s]*", re.IGNORECASE
)
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
    # The tag of the chip the sending instance was made for, from a header evochips asks
    # Evolution to send (``WebhookTarget.for_instance``); None when it came without one.
    tag: str | None = None


def read_event(body: Any, suffix: str | None = None, secrets: tuple[str, ...] = ()) -> WebhookEvent:
    """Read a decoded webhook body; ``suffix`` is the by-events URL suffix, if any, and
    ``secrets`` are values to blank out wherever they appear in the stored body.

    Never raises: a body we cannot use becomes an event with an ``ignore_reason``.
    """
    envelope = body if isinstance(body, dict) else {}
    by_url = suffix.rsplit("/", 1)[-1] if suffix else None
    event = _name(envelope.get("event")) or _name(by_url) or ""
    instance = _text(envelope.get("instance"), MAX_INSTANCE_LENGTH)
    data = envelope.get("data")
    # Server-local wall time labelled "Z" (reference section 3.1): kept naive, and only
    # ever compared with other events' date_time.
    date_time = iso_wall_time(envelope.get("date_time"))

    signal, reason = _signal(event, data)
    if not isinstance(body, dict):
        reason = "the body is not a JSON object"
    elif not event:
        reason = "the body names no event"
    elif instance is None and event in HANDLED_EVENTS:
        signal, reason = None, "the body names no instance"
    elif signal is not None and date_time is None:
        # Evolution dates every event; one without a date cannot be placed among the
        # others, and applied as it comes it would win every later replay.
        signal, reason = None, "the body has no usable date_time, so it cannot be ordered"
    identity = [instance, event, envelope.get("date_time"), data] if event else body
    return WebhookEvent(
        event=event or UNNAMED,
        instance=instance,
        date_time=date_time,
        dedupe_key=_dedupe_key(identity),
        stored_body=redact(envelope, secrets) if event in HANDLED_EVENTS else None,
        signal=signal,
        ignore_reason=reason,
    )


def skimmed_event(event: str, instance: str | None, digest: str) -> WebhookEvent:
    """An event evochips does not handle, known from the start of its body alone."""
    return WebhookEvent(
        event=event,
        instance=_text(instance, MAX_INSTANCE_LENGTH),
        date_time=None,
        dedupe_key=digest,
        stored_body=None,
        signal=None,
        ignore_reason="an event evochips does not handle",
    )


def redact(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """A copy of ``value`` with tokens, API keys, QR codes, credentials in URLs and the
    given ``secrets`` replaced, and with text a database cannot store (NUL, lone
    surrogates) replaced by U+FFFD."""
    if isinstance(value, dict):
        return {
            _storable(str(key)): (
                REDACTED if key in _SECRET_KEYS and item is not None else redact(item, secrets)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item, secrets) for item in value]
    if isinstance(value, str):
        if "/k/" in value:  # Evolution echoes the delivery URL (``destination``) it used
            value = _PATH_SECRET.sub(r"\1" + REDACTED, value)
        if "://" in value:
            value = _URL_CREDENTIALS.sub(r"\1" + REDACTED + "@", value)
            value = _QUERY_SECRET.sub(r"\1" + REDACTED, value)
        for secret in secrets:
            if secret and secret in value:  # an empty one would be "in" every text
                value = value.replace(secret, REDACTED)
        return _storable(value)
    return value


def _storable(text: str) -> str:
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


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
    if event == "STATUS_INSTANCE":
        return _status_signal(data)
    return _connection_signal(data)


def _status_signal(data: dict[str, Any]) -> tuple[Signal | None, str | None]:
    """v2 sends ``status.instance`` first when a session ends for good; its reason code
    tells a ban (403) from a logout, which the ``logout.instance`` after it cannot."""
    reason = _int(data.get("disconnectionReasonCode"))
    if data.get("status") != "closed" or reason is None:
        return None, "the status event reports no closed session"
    if reason == _BANNED_REASON:
        return Signal(Trigger.BANNED, status_reason=reason), None
    if reason in _LOGGED_OUT_REASONS:
        return Signal(Trigger.LOGGED_OUT, status_reason=reason), None
    return None, "the status event reports a close Evolution recovers from"


def _qr_signal(data: dict[str, Any]) -> tuple[Signal | None, str | None]:
    qrcode = data.get("qrcode")
    if isinstance(qrcode, dict):
        qr = QrImage(
            base64=_text(qrcode.get("base64"), MAX_QR_LENGTH),
            code=_text(qrcode.get("code"), MAX_QR_LENGTH),
            pairing_code=_text(qrcode.get("pairingCode"), MAX_PAIRING_CODE_LENGTH),
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
    wuid = _text(data.get("wuid"), MAX_JID_LENGTH)
    profile_name = _text(data.get("profileName"), MAX_PROFILE_NAME_LENGTH)
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


def _dedupe_key(identity: Any) -> str:
    """A hash of what identifies a delivery: instance, event, ``date_time`` and ``data``.
    ``destination`` and ``apikey`` are left out because the same event reaches us through
    the instance and the global webhook. A body without an event is hashed whole."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _int(value: Any) -> int | None:
    """A status code as a number, from a number or a short string of ASCII digits (some
    relays send ``"401"``)."""
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 5):
            return None
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_STATUS_CODE else None


def _text(value: Any, limit: int) -> str | None:
    """Non-empty text a database can store, no longer than ``limit``; otherwise None."""
    if not isinstance(value, str) or not value or len(value) > limit:
        return None
    return value if _storable(value) == value else None


def _name(value: Any) -> str | None:
    """An event name in the configuration spelling, or None if it cannot be one."""
    text = _text(value, MAX_EVENT_LENGTH)
    name = normalise_event_name(text) if text else ""
    return name if _EVENT_NAME.fullmatch(name) else None
