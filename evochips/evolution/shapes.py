"""What Evolution answers, as small typed values, and the bodies we send it.

v1.8 and v2.x disagree on most shapes (reference section 6); the parsers here accept
both and raise EvolutionProtocolError for anything else, so the client never hands a
caller raw JSON or a KeyError.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from evochips.evolution.errors import EvolutionProtocolError

# Longer values than these are not Evolution's (and would not fit the chips table).
MAX_ID = 64
MAX_PAIRING_CODE = 32
MAX_QR = 512 * 1024
# The only integration that pairs a number by QR; Evolution's other channels (EVOLUTION,
# WHATSAPP-BUSINESS) report themselves open with nothing paired (reference section 2.2).
BAILEYS = "WHATSAPP-BAILEYS"

WEBHOOK_EVENTS = (
    "QRCODE_UPDATED",
    "CONNECTION_UPDATE",
    "STATUS_INSTANCE",
    "LOGOUT_INSTANCE",
    "REMOVE_INSTANCE",
)
# v1.8 has no LOGOUT_INSTANCE or REMOVE_INSTANCE events.
WEBHOOK_EVENTS_V1 = ("QRCODE_UPDATED", "CONNECTION_UPDATE")


@dataclass(frozen=True)
class QrCode:
    """A connect answer carrying a QR (or, with ``count == 0``, the promise of one)."""

    base64: str | None = None
    code: str | None = None
    pairing_code: str | None = None
    count: int = 0

    @property
    def ready(self) -> bool:
        return bool(self.base64 or self.code)


@dataclass(frozen=True)
class InstanceState:
    """A connect or restart answer in the connectionState shape: no QR, just a state."""

    state: str


@dataclass(frozen=True)
class CreatedInstance:
    instance_id: str | None
    status: str | None
    qr: QrCode | None
    # As Evolution says it made the instance; None when the answer does not say.
    integration: str | None = None

    @property
    def misconfigured(self) -> str | None:
        """Why the instance cannot be a WhatsApp chip, or None."""
        return wrong_integration(self.integration)


@dataclass(frozen=True)
class InstanceInfo:
    """One instance as fetchInstances lists it (``state`` lags: it comes from Evolution's
    database, not the live socket)."""

    name: str
    instance_id: str | None
    state: str | None
    owner_jid: str | None
    # Why its last session closed (v2 only): 401 logged out, 403 banned, ...
    disconnection_reason: int | None = None
    integration: str | None = None
    # When it closed: real UTC (unlike webhooks' ``date_time``), kept after the number
    # pairs again, as the reason is.
    disconnection_at: datetime | None = None


# The header in which an instance's webhooks carry the tag of the chip it was made for.
INSTANCE_TAG_HEADER = "x-evochips-instance"


@dataclass(frozen=True)
class WebhookTarget:
    """Where Evolution should post an instance's events and how it proves itself.

    v1 cannot send custom headers, so it is given ``headerless_url`` instead, a URL that
    carries the proof itself (when there is one).
    """

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    headerless_url: str | None = None

    @property
    def v1_url(self) -> str:
        return self.headerless_url or self.url

    def for_instance(self, tag: str | None) -> WebhookTarget:
        """The same target, with the chip's instance tag in a header of its own, so that
        each delivery says which instance of a name sent it (v2 only: v1 sends no headers,
        and Evolution's global webhook none either)."""
        if tag is None:
            return self
        return replace(self, headers={**self.headers, INSTANCE_TAG_HEADER: tag})


@dataclass(frozen=True)
class WebhookInfo:
    url: str
    enabled: bool
    events: tuple[str, ...]


class LogoutOutcome(enum.StrEnum):
    LOGGED_OUT = "logged_out"
    NOT_CONNECTED = "not_connected"


class DeleteOutcome(enum.StrEnum):
    DELETED = "deleted"
    ABSENT = "absent"


def parse_connect(answer: Any, path: str) -> QrCode | InstanceState:
    """Connect and restart answer a QR object, ``{"count":0}``, or the state shape."""
    body = expect_dict(answer, path)
    instance = body.get("instance")
    if isinstance(instance, dict) and isinstance(body.get("qrcode"), dict):
        return parse_qr(body["qrcode"])
    if isinstance(instance, dict):
        state = instance.get("state") or instance.get("status")
        if isinstance(state, str):
            return InstanceState(state)
    if {"count", "base64", "code", "pairingCode"} & body.keys():
        return parse_qr(body)
    raise EvolutionProtocolError(f"Evolution API answered {path} with an unknown shape")


def parse_qr(body: dict[str, Any]) -> QrCode:
    count = body.get("count")
    return QrCode(
        base64=text_or_none(body.get("base64"), MAX_QR),
        code=text_or_none(body.get("code"), MAX_QR),
        pairing_code=text_or_none(body.get("pairingCode"), MAX_PAIRING_CODE),
        count=count if isinstance(count, int) and not isinstance(count, bool) else 0,
    )


def parse_created(answer: Any) -> CreatedInstance:
    body = expect_dict(answer, "/instance/create")
    instance = expect_dict(body.get("instance"), "/instance/create")
    qrcode = body.get("qrcode")
    return CreatedInstance(
        instance_id=text_or_none(instance.get("instanceId"), MAX_ID),
        status=text_or_none(instance.get("status")),
        qr=parse_qr(qrcode) if isinstance(qrcode, dict) else None,
        integration=text_or_none(instance.get("integration"), MAX_ID),
    )


def wrong_integration(integration: str | None) -> str | None:
    """Why an instance of ``integration`` cannot be a WhatsApp chip, or None (also when
    the answer named no integration: v1 lists omit it)."""
    if integration is None or integration == BAILEYS:
        return None
    return (
        f"the instance's integration is {integration!r}, not {BAILEYS}: Evolution reports "
        "it open, but it pairs no number"
    )


def parse_instances(answer: Any) -> list[InstanceInfo]:
    """fetchInstances: v2 lists flat rows; v1 wraps each in ``instance`` and answers a
    single object, not a list, when filtered by name with the global key."""
    items = answer if isinstance(answer, list) else [answer]
    parsed = []
    for item in items:
        row = expect_dict(item, "/instance/fetchInstances")
        v1 = row.get("instance")
        integration = row.get("integration")
        if isinstance(v1, dict):
            name, instance_id = v1.get("instanceName"), v1.get("instanceId")
            state, owner = v1.get("status"), v1.get("owner")
            # v1 shows it only with EXPOSE_IN_FETCH_INSTANCES, as an object.
            integration = integration.get("integration") if isinstance(integration, dict) else None
        else:
            name, instance_id = row.get("name"), row.get("id")
            state, owner = row.get("connectionStatus"), row.get("ownerJid")
        if not isinstance(name, str):
            raise EvolutionProtocolError("fetchInstances listed an instance without a name")
        reason = row.get("disconnectionReasonCode")
        parsed.append(
            InstanceInfo(
                name=name,
                instance_id=text_or_none(instance_id, MAX_ID),
                state=text_or_none(state),
                owner_jid=text_or_none(owner),
                disconnection_reason=reason if type(reason) is int else None,
                integration=text_or_none(integration, MAX_ID),
                disconnection_at=_utc_instant(row.get("disconnectionAt")),
            )
        )
    return parsed


def _utc_instant(value: Any) -> datetime | None:
    """An ISO 8601 instant from Evolution's own database (``disconnectionAt``), or None."""
    parsed = iso_wall_time(value)
    return parsed.replace(tzinfo=UTC) if parsed is not None else None


def iso_wall_time(value: Any) -> datetime | None:
    """An ISO 8601 text as a naive UTC value (one without an offset taken as it is), or
    None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # year 1 or 9999 pushed past the calendar's edge
            return None
    return parsed


def parse_webhook(answer: Any) -> WebhookInfo | None:
    """webhook/find and webhook/set; None when the instance has no webhook (v2 answers
    ``null``, v1 a disabled object with an empty URL)."""
    if answer is None:
        return None
    body = expect_dict(answer, "/webhook")
    nested = body.get("webhook")
    if isinstance(nested, dict):  # v1 set: {"webhook": {"instanceName", "webhook": {...}}}
        inner = nested.get("webhook")
        body = inner if isinstance(inner, dict) else nested
    url = text_or_none(body.get("url"))
    if url is None:
        return None
    events = body.get("events")
    return WebhookInfo(
        url=url,
        enabled=body.get("enabled") is not False,
        events=tuple(e for e in events if isinstance(e, str)) if isinstance(events, list) else (),
    )


def major_version(answer: Any) -> int:
    version = answer.get("version") if isinstance(answer, dict) else None
    if not isinstance(version, str) or not version[:1].isdigit():
        raise EvolutionProtocolError("Evolution API did not say its version on GET /")
    return 1 if version.split(".")[0] == "1" else 2


def create_body(version: int, name: str, webhook: WebhookTarget) -> dict[str, Any]:
    """A create request that shows a QR at once and points the instance's webhook at us."""
    common = {
        "instanceName": name,
        "integration": BAILEYS,
        "qrcode": True,
        # v1 answers 400 "Token already exists" to a create without a token once any
        # instance exists (reference section 2.2), so a fresh one is always sent.
        "token": str(uuid.uuid4()).upper(),
    }
    if version == 1:
        return {**common, **_webhook_v1(webhook)}
    return {**common, "webhook": _webhook_v2(webhook)}


def webhook_body(version: int, webhook: WebhookTarget) -> dict[str, Any]:
    """A webhook/set request body."""
    if version == 1:
        return {"url": webhook.v1_url, **_webhook_v1(webhook, url_key=None), "enabled": True}
    return {"webhook": {"enabled": True, **_webhook_v2(webhook)}}


def _webhook_v2(webhook: WebhookTarget) -> dict[str, Any]:
    return {
        "url": webhook.url,
        "byEvents": False,
        "base64": False,
        "headers": dict(webhook.headers),
        "events": list(WEBHOOK_EVENTS),
    }


def _webhook_v1(webhook: WebhookTarget, url_key: str | None = "webhook") -> dict[str, Any]:
    body: dict[str, Any] = {
        "webhook_by_events": False,
        "webhook_base64": False,
        "events": list(WEBHOOK_EVENTS_V1),
    }
    if url_key is not None:
        body[url_key] = webhook.v1_url
    return body


def expect_dict(value: Any, path: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        where = f" to {path}" if path else ""
        raise EvolutionProtocolError(f"Evolution API answer{where} is not a JSON object")
    return value


def text_or_none(value: Any, limit: int = 4096) -> str | None:
    """Non-empty text no longer than ``limit``; anything else is no value."""
    return value if isinstance(value, str) and value and len(value) <= limit else None
