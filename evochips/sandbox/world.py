"""The sandbox's instances and what happens to them: the per-instance state machine
(``close -> connecting -> open``, ``refused`` at the QR limit) and the webhooks each step
sends (reference sections 3.3 and 3.4)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from evochips.sandbox import qr
from evochips.sandbox.config import SandboxConfig
from evochips.sandbox.delivery import Deliverer, Sender, Webhook

# Close codes after which Evolution does not reconnect by itself (v2; v1 only on 401).
TERMINAL = frozenset({401, 402, 403, 406})
# Boom's ``payload.error``: the HTTP reason phrase of the close code.
BOOM_ERRORS = {401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
               406: "Not Acceptable"}  # fmt: skip
FIRST_QR_SECONDS = 1.0
# Between the events of one socket episode (pairing's restart, a reconnect).
STEP_SECONDS = 0.3


@dataclass
class QrState:
    """Evolution's QR cache: ``count`` keeps growing across pairing sessions."""

    count: int = 0
    code: str | None = None
    base64: str | None = None
    pairing_code: str | None = None

    def answer(self) -> dict[str, Any]:
        """What connect shows: ``{"count": 0}`` before the first QR."""
        if self.code is None:
            return {"count": self.count}
        return {
            "pairingCode": self.pairing_code,
            "code": self.code,
            "base64": self.base64,
            "count": self.count,
        }


@dataclass
class Instance:
    name: str
    token: str
    integration: str = "WHATSAPP-BAILEYS"
    number: str | None = None
    # The number this socket asks a pairing code for: ``number``, or connect's ?number=.
    pairing_number: str | None = None
    instance_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "close"
    qr: QrState = field(default_factory=QrState)
    webhook: Webhook | None = None
    wuid: str | None = None
    profile_name: str | None = None
    opened: bool = False
    # The number's credentials are held: a restart or reconnect resumes the session (back
    # to open, no QR) until a logout or ban ends it.
    session: bool = False
    # This socket's QR has been scanned; the pairing is under way.
    scanned: bool = False
    disconnection_code: int | None = None
    disconnection_at: str | None = None
    disconnection_object: str | None = None  # Baileys' lastDisconnect, as a JSON string
    created_at: str = field(default_factory=lambda: _utc_iso())
    updated_at: str = field(default_factory=lambda: _utc_iso())
    qr_task: asyncio.Task[None] | None = None
    episode: asyncio.Task[None] | None = None  # the steps of _play still to come


class World:
    def __init__(self, config: SandboxConfig, deliverer: Deliverer) -> None:
        self.config = config
        self.deliverer = deliverer
        self.instances: dict[str, Instance] = {}
        self._episodes: set[asyncio.Task[None]] = set()

    # -- the socket ------------------------------------------------------------------------

    def start_socket(self, instance: Instance, pairing_number: str | None = None) -> None:
        """A socket starts: ``connecting`` at once, then QR codes until scanned or refused."""
        self._stop_qr(instance)
        instance.scanned = False
        instance.pairing_number = pairing_number or instance.number
        instance.state = "connecting"
        self.connection(instance, "connecting", 200)
        if not self.config.offline:
            instance.qr_task = asyncio.create_task(self._show_qrs(instance))

    async def _show_qrs(self, instance: Instance) -> None:
        await asyncio.sleep(self.config.seconds(FIRST_QR_SECONDS))
        while instance.state == "connecting":
            if instance.qr.count >= self.config.qr_limit:
                self.refuse(instance)
                return
            self._next_qr(instance)
            await asyncio.sleep(self.config.seconds(self.config.qr_seconds))

    def _next_qr(self, instance: Instance) -> None:
        code = qr.new_code()
        instance.qr = QrState(
            count=instance.qr.count + 1,
            code=code,
            base64=qr.png_data_uri(code),
            pairing_code=qr.pairing_code() if instance.pairing_number else None,
        )
        self.emit(instance, "QRCODE_UPDATED", {"qrcode": {
            "instance": instance.name,
            "pairingCode": instance.qr.pairing_code,
            "code": instance.qr.code,
            "base64": instance.qr.base64,
        }})  # fmt: skip

    async def settle_qr(self, instance: Instance, wait: float) -> None:
        """Wait ``wait`` (scaled) for a QR, as Evolution does before answering create or
        connect; with time scaled far down, also let a QR that is due arrive (within a
        real second), so a busy machine does not turn a QR answer into ``count: 0``."""
        await asyncio.sleep(self.config.seconds(wait))
        if self.config.offline:
            return
        deadline = asyncio.get_running_loop().time() + 1.0
        while instance.qr.code is None and instance.state == "connecting":
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.005)

    def refuse(self, instance: Instance) -> None:
        """The QR limit: one more QR was due, so the session ends (reference 3.4, step 2)."""
        self._stop_qr(instance)
        message = {"message": "QR code limit reached, please login again", "statusCode": 500}
        self.emit(instance, "QRCODE_UPDATED", message)
        self.connection(instance, "refused", 428)
        instance.state = "close"
        instance.qr = QrState()

    # -- the phone -------------------------------------------------------------------------

    def scan(self, instance: Instance, number: str | None = None) -> None:
        """The QR is scanned by the phone of ``number`` (the instance's own, or any one):
        WhatsApp restarts the socket (515), then it opens."""
        self._stop_qr(instance)
        instance.scanned = True
        digits = number or instance.number or "55119" + str(uuid.uuid4().int)[:8]
        instance.wuid = f"{digits}@s.whatsapp.net"
        instance.profile_name = f"Sandbox {instance.name}"
        if self.config.version == 1:
            self._play(instance, partial(self._closed, code=515), self._connecting, self._open)
        else:
            self._play(instance, self._connecting, self._open)

    def restart(self, instance: Instance) -> None:
        """v2's restart ends the socket with a plain error, so it reconnects silently: a
        paired number comes back open, an unpaired one shows QR codes again."""
        if instance.state == "open" or instance.session:
            # A paired number caught reconnecting (a second restart, say) resumes too.
            self.reconnect(instance)
        else:
            self.start_socket(instance)

    def reconnect(self, instance: Instance) -> None:
        """A paired number's session resumes after a server start: connecting, then open."""
        self._play(instance, self._connecting, self._open)

    def drop(self, instance: Instance, code: int = 408) -> None:
        """The connection drops and comes back by itself; v2 reports no close for it."""
        if self.config.version == 1:
            self._play(instance, partial(self._closed, code=code), self._connecting, self._open)
        else:
            self._play(instance, self._connecting, self._open)

    def logout(self, instance: Instance) -> None:
        """The API's logout: Baileys ends the socket with Boom 401 "Log out instance: x"."""
        self.close_for_good(instance, 401, f"Log out instance: {instance.name}")

    def close_for_good(
        self, instance: Instance, code: int, message: str = "Connection Failure"
    ) -> None:
        """A close Evolution does not reconnect from: logged out (401) or banned (403).

        v2 sends status.instance, logout.instance and connection.update close; v1 only the
        close, and keeps reconnecting after anything but 401."""
        self._stop_qr(instance)
        instance.session = False
        instance.disconnection_code = code
        instance.disconnection_at = instance.updated_at = _utc_iso()
        if self.config.version == 1:
            self.connection(instance, "close", code)
            if code != 401:
                self.start_socket(instance)
                return
            instance.state = "close"
            return
        instance.state = "close"
        payload = {"statusCode": code, "error": BOOM_ERRORS.get(code, "Error"), "message": message}
        lost = {
            "error": {
                "data": None,
                "isBoom": True,
                "isServer": code >= 500,
                "output": {"statusCode": code, "payload": payload, "headers": {}},
            },
            "date": instance.disconnection_at,
        }
        # fetchInstances shows the same string as status.instance (live capture 55).
        instance.disconnection_object = json.dumps(lost, separators=(",", ":"))
        self.emit(instance, "STATUS_INSTANCE", {
            "instance": instance.name,
            "status": "closed",
            "disconnectionAt": instance.disconnection_at,
            "disconnectionReasonCode": code,
            "disconnectionObject": instance.disconnection_object,
        })  # fmt: skip
        self.emit(instance, "LOGOUT_INSTANCE", None)
        self.connection(instance, "close", code)

    def remove(self, instance: Instance) -> None:
        self._stop_qr(instance)
        self.instances.pop(instance.name, None)
        ids = {"instanceName": instance.name, "instanceId": instance.instance_id}
        self.emit(instance, "INSTANCE_DELETE", ids)
        if self.config.version == 2:
            self.emit(instance, "REMOVE_INSTANCE", None)

    # -- events ----------------------------------------------------------------------------

    def connection(self, instance: Instance, state: str, reason: int) -> None:
        data: dict[str, Any] = {"instance": instance.name}
        if state == "open" and self.config.version == 2:
            data |= {"wuid": instance.wuid, "profileName": instance.profile_name,
                     "profilePictureUrl": None}  # fmt: skip
        data |= {"state": state, "statusReason": reason}
        self.emit(instance, "CONNECTION_UPDATE", data)

    def emit(self, instance: Instance, config_name: str, data: Any) -> None:
        sender = Sender(
            name=instance.name,
            token=instance.token,
            wuid=instance.wuid if instance.opened else None,
            webhook=instance.webhook,
        )
        self.deliverer.emit(sender, config_name, data)

    def _open(self, instance: Instance) -> None:
        instance.state = "open"
        instance.opened = instance.session = True
        self.connection(instance, "open", 200)

    def _connecting(self, instance: Instance) -> None:
        instance.state = "connecting"
        self.connection(instance, "connecting", 200)

    def _closed(self, instance: Instance, code: int) -> None:
        instance.state = "close"
        self.connection(instance, "close", code)

    def _play(self, instance: Instance, *steps: Callable[[Instance], None]) -> None:
        """Run the steps of one socket episode a moment apart, as a real socket takes
        time between them; the first happens now."""
        steps[0](instance)

        async def rest() -> None:
            for step in steps[1:]:
                await asyncio.sleep(self.config.seconds(STEP_SECONDS))
                step(instance)

        task = asyncio.create_task(rest())
        instance.episode = task
        self._episodes.add(task)
        task.add_done_callback(self._episodes.discard)

    def _stop_qr(self, instance: Instance) -> None:
        """The socket ends: its QR loop stops, and so do the steps of an episode still to
        come (a logout during pairing must not be followed by the pairing's ``open``)."""
        for task in (instance.qr_task, instance.episode):
            if task is not None and task is not _current_task():
                task.cancel()
        instance.qr_task = instance.episode = None

    async def aclose(self) -> None:
        for instance in self.instances.values():
            self._stop_qr(instance)
        for episode in list(self._episodes):
            episode.cancel()
        await self.deliverer.aclose()


def _current_task() -> asyncio.Task[Any] | None:
    with contextlib.suppress(RuntimeError):
        return asyncio.current_task()
    return None


def _utc_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
