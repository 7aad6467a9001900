"""Webhook delivery as Evolution 2.3 does it (reference section 3.5).

Each event goes, without waiting for the others, to the instance's webhook and to the
global one. Failed deliveries are retried with exponential backoff and jitter, except on
400, 401, 403, 404 and 422; v1 tries once. So events can arrive out of order, as they do
from the real server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import jwt

from evochips.sandbox.config import SandboxConfig
from evochips.sandbox.faults import Faults

logger = logging.getLogger(__name__)

# Body names of the events the sandbox sends, by configuration name.
EVENT_NAMES = {
    "QRCODE_UPDATED": "qrcode.updated",
    "CONNECTION_UPDATE": "connection.update",
    "STATUS_INSTANCE": "status.instance",
    "LOGOUT_INSTANCE": "logout.instance",
    "REMOVE_INSTANCE": "remove.instance",
    "INSTANCE_CREATE": "instance.create",
    "INSTANCE_DELETE": "instance.delete",
}
# Events v2's global webhook never carries (they are per-instance only).
NOT_GLOBAL = frozenset({"STATUS_INSTANCE", "LOGOUT_INSTANCE", "REMOVE_INSTANCE"})
# Events v1.8 sends: QR and connection per instance, create and delete globally only.
V1_LOCAL = frozenset({"QRCODE_UPDATED", "CONNECTION_UPDATE"})
V1_GLOBAL = frozenset({"QRCODE_UPDATED", "CONNECTION_UPDATE", "INSTANCE_CREATE", "INSTANCE_DELETE"})
NON_RETRYABLE = frozenset({400, 401, 403, 404, 422})
REQUEST_TIMEOUT_SECONDS = 30.0
SAO_PAULO = ZoneInfo("America/Sao_Paulo")


@dataclass
class Webhook:
    """An instance's webhook configuration, as Evolution stores it."""

    url: str
    events: tuple[str, ...]
    enabled: bool = True
    by_events: bool = False
    base64: bool = False
    headers: dict[str, str] | None = None
    id: str = field(default_factory=lambda: "c" + uuid.uuid4().hex[:24])
    created_at: str = field(default_factory=lambda: _utc_iso())
    updated_at: str = field(default_factory=lambda: _utc_iso())


@dataclass
class Delivery:
    """One event sent to one URL, with what each attempt got back."""

    url: str
    event: str
    instance: str
    body: dict[str, Any]
    headers: dict[str, str]
    attempts: list[int | str] = field(default_factory=list)
    delivered: bool = False


def suffix(config_name: str) -> str:
    return config_name.replace("_", "-").lower()


def local_time_labelled_utc() -> str:
    """Evolution's ``date_time``: São Paulo wall time with a ``Z`` (reference section 3.1)."""
    now = datetime.now(SAO_PAULO).replace(tzinfo=None)
    return now.isoformat(timespec="milliseconds") + "Z"


def _utc_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Sender:
    """What an envelope says about the instance that sent it."""

    name: str
    token: str
    wuid: str | None
    webhook: Webhook | None


class Deliverer:
    def __init__(
        self, config: SandboxConfig, faults: Faults, client: httpx.AsyncClient | None = None
    ) -> None:
        self._config = config
        self._faults = faults
        self._client = client or httpx.AsyncClient()
        self._tasks: set[asyncio.Task[None]] = set()
        self.deliveries: list[Delivery] = []

    def emit(self, sender: Sender, config_name: str, data: Any) -> None:
        """Send one event to every webhook that wants it, in the background."""
        v1 = self._config.version == 1
        webhook = sender.webhook
        wanted_locally = webhook is not None and webhook.enabled and config_name in webhook.events
        if v1 and config_name not in V1_LOCAL:
            wanted_locally = False
        if (
            wanted_locally
            and webhook is not None
            and webhook.url.startswith(("http://", "https://"))
        ):
            url = f"{webhook.url}/{suffix(config_name)}" if webhook.by_events else webhook.url
            body = self._envelope(sender, config_name, data, webhook.url, global_=False)
            self._send(url, sender.name, body, dict(webhook.headers or {}))
        global_url = self._config.global_webhook_url
        globally = config_name in (V1_GLOBAL if v1 else EVENT_NAMES.keys() - NOT_GLOBAL)
        if global_url and globally:
            by_events = self._config.global_webhook_by_events
            url = f"{global_url}/{suffix(config_name)}" if by_events else global_url
            destination = webhook.url if webhook else f"{global_url}/{suffix(config_name)}"
            body = self._envelope(sender, config_name, data, destination, global_=True)
            self._send(url, sender.name, body, {})

    async def drain(self) -> None:
        """Wait for every delivery in flight, retries included."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self._client.aclose()

    def _envelope(
        self, sender: Sender, config_name: str, data: Any, destination: str | None, *, global_: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event": EVENT_NAMES[config_name],
            "instance": sender.name,
            "data": data,
            "destination": destination,
            "date_time": local_time_labelled_utc(),
        }
        if sender.wuid is not None:  # absent until the number has been open
            body["sender"] = sender.wuid
        body["server_url"] = self._config.server_url
        if self._config.version == 1:
            if destination is None or (global_ and sender.webhook is None):
                body.pop("destination")
            if self._config.expose_tokens:
                body["apikey"] = self._config.global_key if global_ else sender.token
        else:
            body["apikey"] = sender.token if self._config.expose_tokens else None
        return body

    def _send(self, url: str, instance: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        jwt_key = headers.pop("jwt_key", None)
        if jwt_key is not None and self._config.version == 2:
            now = int(time.time())
            claims = {"iat": now, "exp": now + 600, "app": "evolution", "action": "webhook"}
            headers["Authorization"] = f"Bearer {jwt.encode(claims, jwt_key, algorithm='HS256')}"
        copies = 1 + self._faults.duplicate_deliveries
        for _ in range(copies):
            delivery = Delivery(url, body["event"], instance, body, headers)
            self.deliveries.append(delivery)
            task = asyncio.create_task(self._deliver(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery: Delivery) -> None:
        attempts = 1 if self._config.version == 1 else self._config.webhook_attempts
        content = json.dumps(delivery.body).encode()
        headers = {"content-type": "application/json", **delivery.headers}
        timeout = self._config.seconds(REQUEST_TIMEOUT_SECONDS)
        if self._faults.delivery_jitter_ms:
            await asyncio.sleep(random.uniform(0, self._faults.delivery_jitter_ms) / 1000)
        for attempt in range(1, attempts + 1):
            try:
                response = await self._client.post(
                    delivery.url, content=content, headers=headers, timeout=timeout
                )
            except httpx.HTTPError as exc:
                delivery.attempts.append(type(exc).__name__)
            else:
                delivery.attempts.append(response.status_code)
                if response.is_success:
                    delivery.delivered = True
                    return
                if response.status_code in NON_RETRYABLE:
                    break
            if attempt < attempts:
                await asyncio.sleep(self._backoff(attempt))
        logger.info(
            "sandbox gave up on %s to %s after %s",
            delivery.event,
            re.sub(r"/k/[^/]*", "/k/[secret]", delivery.url),
            delivery.attempts,
        )

    def _backoff(self, attempt: int) -> float:
        """Evolution 2.3: min(5 * 2^(n-1), 300) s, +-20 % jitter, never under 5 s."""
        base = min(5.0 * 2 ** (attempt - 1), 300.0)
        return self._config.seconds(max(5.0, base * random.uniform(0.8, 1.2)))
