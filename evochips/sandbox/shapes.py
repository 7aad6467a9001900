"""What the sandbox answers, in Evolution's v2 and v1 shapes, and how it reads the
webhook settings it is given (reference sections 2.2, 2.8 and 2.9)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from evochips.sandbox.config import SandboxConfig
from evochips.sandbox.delivery import Webhook
from evochips.sandbox.world import Instance

ALL_EVENTS_V2 = (
    "APPLICATION_STARTUP", "QRCODE_UPDATED", "MESSAGES_SET", "MESSAGES_UPSERT",
    "MESSAGES_EDITED", "MESSAGES_UPDATE", "MESSAGES_DELETE", "SEND_MESSAGE",
    "SEND_MESSAGE_UPDATE", "CONTACTS_SET", "CONTACTS_UPSERT", "CONTACTS_UPDATE",
    "PRESENCE_UPDATE", "CHATS_SET", "CHATS_UPSERT", "CHATS_UPDATE", "CHATS_DELETE",
    "GROUPS_UPSERT", "GROUP_UPDATE", "GROUP_PARTICIPANTS_UPDATE", "CONNECTION_UPDATE",
    "LABELS_EDIT", "LABELS_ASSOCIATION", "CALL", "TYPEBOT_START", "TYPEBOT_CHANGE_STATUS",
    "REMOVE_INSTANCE", "LOGOUT_INSTANCE", "INSTANCE_CREATE", "INSTANCE_DELETE",
    "STATUS_INSTANCE",
)  # fmt: skip
INTEGRATIONS = ("WHATSAPP-BAILEYS", "WHATSAPP-BUSINESS", "EVOLUTION")
SETTINGS_V2 = {"rejectCall": False, "msgCall": "", "groupsIgnore": False, "alwaysOnline": False,
               "readMessages": False, "readStatus": False, "syncFullHistory": False,
               "wavoipToken": ""}  # fmt: skip
SETTINGS_V1 = {"reject_call": False, "msg_call": "", "groups_ignore": True,
               "always_online": False, "read_messages": False, "read_status": False,
               "sync_full_history": False}  # fmt: skip
REASONS: dict[int, str] = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    500: "Internal Server Error",
}  # fmt: skip


class Refusal(Exception):
    """An Evolution error answer, raised from deep in a handler."""

    def __init__(self, status: int, message: Any) -> None:
        super().__init__(status)
        self.status = status
        self.message = message


def state(instance: Instance) -> dict[str, Any]:
    return {"instance": {"instanceName": instance.name, "state": instance.state}}


def digits(value: Any) -> str | None:
    return "".join(c for c in value if c.isdigit()) or None if isinstance(value, str) else None


def webhook_from_create(body: dict[str, Any], v1: bool) -> Webhook | None:
    if v1:
        url = body.get("webhook")
        if url is None:
            return None
        if not isinstance(url, str):
            raise Refusal(400, [["webhook is not of a type(s) string"]])
        events = body.get("events")
        if not isinstance(events, list):
            return None  # v1 silently skips a webhook without events (reference 2.2)
        return Webhook(url=url, events=tuple(events or _ALL_V1_EVENTS),
                       by_events=bool(body.get("webhook_by_events")),
                       base64=bool(body.get("webhook_base64")))  # fmt: skip
    hook = body.get("webhook")
    if not isinstance(hook, dict):
        return None
    events = hook.get("events")
    if not isinstance(events, list):
        raise Refusal(400, ["Cannot read properties of undefined (reading 'length')"])
    return Webhook(url=str(hook.get("url", "")), events=tuple(events or ALL_EVENTS_V2),
                   by_events=bool(hook.get("byEvents")), base64=bool(hook.get("base64")),
                   headers=_header_values(hook.get("headers")))  # fmt: skip


def webhook_from_set(body: Any, v1: bool) -> Webhook:
    """The webhook a ``webhook/set`` body asks for, checked as Evolution's schema checks
    it (reference section 2.9); raises Refusal with Evolution's answer."""
    if v1:
        return _webhook_from_set_v1(body)
    hook = body.get("webhook") if isinstance(body, dict) else None
    if not isinstance(hook, dict):
        raise Refusal(400, [['instance requires property "webhook"']])
    for required in ("enabled", "url"):
        if required not in hook:
            raise Refusal(400, [[f'webhook requires property "{required}"']])
    for key, kind, name in (
        ("enabled", bool, "boolean"),
        ("url", str, "string"),
        ("byEvents", bool, "boolean"),
        ("base64", bool, "boolean"),
        ("headers", dict, "object"),
        ("events", list, "array"),
    ):
        if key in hook and not isinstance(hook[key], kind):
            raise Refusal(400, [[f"webhook.{key} is not of a type(s) {name}"]])
    enabled = hook["enabled"]
    events = hook.get("events")
    if enabled and events is None:
        raise Refusal(500, "Cannot read properties of undefined (reading 'length')")
    _check_events(events or [], ALL_EVENTS_V2, "webhook.events")
    return Webhook(url=hook["url"], enabled=enabled,
                   events=tuple(events or ALL_EVENTS_V2) if enabled else (),
                   by_events=hook.get("byEvents", False), base64=hook.get("base64", False),
                   headers=_header_values(hook.get("headers")))  # fmt: skip


def _webhook_from_set_v1(body: Any) -> Webhook:
    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise Refusal(400, ['Invalid "url" property'])
    enabled = body.get("enabled", True) is not False
    events = body.get("events")
    if enabled and not isinstance(events, list):
        raise Refusal(500, "Cannot read properties of undefined (reading 'length')")
    _check_events(events or [], _ALL_V1_EVENTS, "events")
    return Webhook(url=url, enabled=enabled,
                   events=tuple(events or _ALL_V1_EVENTS) if enabled else (),
                   by_events=bool(body.get("webhook_by_events")),
                   base64=bool(body.get("webhook_base64")))  # fmt: skip


def _check_events(events: list[Any], known: tuple[str, ...], where: str) -> None:
    for index, name in enumerate(events):
        if name not in known:
            raise Refusal(400, [[f"{where}[{index}] is not one of enum values: "
                                 + ",".join(known)]])  # fmt: skip


def _header_values(headers: Any) -> dict[str, str] | None:
    """Headers as axios sends them: every value becomes text."""
    if not isinstance(headers, dict):
        return None
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in headers.items()}


def webhook_answer(instance: Instance, v1: bool, *, set_: bool) -> Any:
    hook = instance.webhook
    if v1:
        shown = {"enabled": False, "url": "", "events": [], "webhook_by_events": False,
                 "webhook_base64": False}  # fmt: skip
        if hook is not None:
            shown = {
                "enabled": hook.enabled,
                "url": hook.url,
                "events": list(hook.events),
                "webhook_by_events": hook.by_events,
                "webhook_base64": hook.base64,
            }
        if set_:
            inner = {"url": shown["url"], "webhook_by_events": shown["webhook_by_events"],
                     "webhook_base64": shown["webhook_base64"], "events": shown["events"],
                     "enabled": shown["enabled"]}  # fmt: skip
            return {"webhook": {"instanceName": instance.name, "webhook": inner}}
        return shown
    if hook is None:
        return None
    return {"id": hook.id, "url": hook.url, "headers": hook.headers, "enabled": hook.enabled,
            "events": list(hook.events), "webhookByEvents": hook.by_events,
            "webhookBase64": hook.base64, "createdAt": hook.created_at,
            "updatedAt": hook.updated_at, "instanceId": instance.instance_id}  # fmt: skip


def created_v2(instance: Instance) -> dict[str, Any]:
    hook = instance.webhook
    webhook: dict[str, Any] = {}
    if hook is not None:
        webhook = {"webhookUrl": hook.url}
        if hook.headers is not None:
            webhook["webhookHeaders"] = hook.headers
        webhook |= {"webhookByEvents": hook.by_events, "webhookBase64": hook.base64}
    return {
        "instance": {"instanceName": instance.name, "instanceId": instance.instance_id,
                     "integration": instance.integration, "webhookWaBusiness": None,
                     "accessTokenWaBusiness": "", "status": instance.state},
        "hash": instance.token,
        "webhook": webhook,
        "websocket": {}, "rabbitmq": {}, "nats": {}, "sqs": {},
        "settings": dict(SETTINGS_V2),
    }  # fmt: skip


def created_v1(instance: Instance) -> dict[str, Any]:
    hook = instance.webhook
    webhook: dict[str, Any] = {}
    if hook is not None:
        webhook = {"webhook": hook.url, "webhook_by_events": hook.by_events,
                   "webhook_base64": hook.base64, "events": list(hook.events)}  # fmt: skip
    return {
        "instance": {"instanceName": instance.name, "instanceId": instance.instance_id,
                     "integration": instance.integration, "webhook_wa_business": None,
                     "access_token_wa_business": "", "status": "created"},
        "hash": {"apikey": instance.token},
        "webhook": webhook,
        "websocket": {}, "rabbitmq": {}, "sqs": {}, "typebot": {"enabled": False},
        "settings": dict(SETTINGS_V1),
    }  # fmt: skip


def fetched_v2(instance: Instance) -> dict[str, Any]:
    return {
        "id": instance.instance_id, "name": instance.name,
        "connectionStatus": instance.state, "ownerJid": instance.wuid,
        "profileName": instance.profile_name, "profilePicUrl": None,
        "integration": instance.integration, "number": instance.number, "businessId": None,
        "token": instance.token, "clientName": "evolution_exchange",
        "disconnectionReasonCode": instance.disconnection_code,
        "disconnectionObject": instance.disconnection_object,
        "disconnectionAt": instance.disconnection_at,
        "createdAt": instance.created_at, "updatedAt": instance.updated_at,
        "Chatwoot": None, "Proxy": None, "Rabbitmq": None, "Nats": None, "Sqs": None,
        "Websocket": None,
        "Setting": {"id": "c" + instance.instance_id.replace("-", "")[:24], **SETTINGS_V2,
                    "createdAt": instance.created_at, "updatedAt": instance.updated_at,
                    "instanceId": instance.instance_id},
        "_count": {"Message": 0, "Contact": 0, "Chat": 0},
    }  # fmt: skip


def fetched_v1(instance: Instance, config: SandboxConfig) -> dict[str, Any]:
    shown: dict[str, Any] = {"instanceName": instance.name, "instanceId": instance.instance_id}
    if instance.state == "open":
        shown |= {"owner": instance.wuid, "profileName": instance.profile_name,
                  "profilePictureUrl": None, "profileStatus": ""}  # fmt: skip
    shown["status"] = instance.state
    if config.expose_tokens:  # EXPOSE_IN_FETCH_INSTANCES adds where and how to reach it
        integration: dict[str, Any] = {"integration": instance.integration}
        if instance.number is not None:  # JSON drops it when undefined
            integration["number"] = instance.number
        wa_business = f"{config.server_url}/webhook/whatsapp/{quote(instance.name, safe='')}"
        integration |= {"token": instance.token, "webhook_wa_business": wa_business}
        shown |= {"serverUrl": config.server_url, "apikey": instance.token,
                  "integration": integration}  # fmt: skip
    return shown


def control_view(instance: Instance) -> dict[str, Any]:
    return {"instance": instance.name, "state": instance.state, "qr_count": instance.qr.count,
            "qr_code": instance.qr.code, "wuid": instance.wuid,
            "webhook": instance.webhook.url if instance.webhook else None}  # fmt: skip


# v1.8's 26 events, which an empty ``events`` list stands for.
_ALL_V1_EVENTS = (
    "APPLICATION_STARTUP", "QRCODE_UPDATED", "MESSAGES_SET", "MESSAGES_UPSERT",
    "MESSAGES_UPDATE", "MESSAGES_DELETE", "SEND_MESSAGE", "CONTACTS_SET", "CONTACTS_UPSERT",
    "CONTACTS_UPDATE", "PRESENCE_UPDATE", "CHATS_SET", "CHATS_UPSERT", "CHATS_UPDATE",
    "CHATS_DELETE", "GROUPS_UPSERT", "GROUP_UPDATE", "GROUP_PARTICIPANTS_UPDATE",
    "CONNECTION_UPDATE", "LABELS_EDIT", "LABELS_ASSOCIATION", "CALL", "NEW_JWT_TOKEN",
    "TYPEBOT_START", "TYPEBOT_CHANGE_STATUS", "CHAMA_AI_ACTION",
)  # fmt: skip
