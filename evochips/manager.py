"""InstanceManager: the commands a backend issues for its chips.

The method names and the dicts they return are the original Portuguese API, kept as it
was so existing callers keep working. Every method returns a dict: ``sucesso`` is True on
success, and on failure it is False with an ``error`` sentence and an ``error_code`` (see
``ERROR_CODES``); no exception escapes for an Evolution, database or validation failure.

Each command keeps Evolution calls outside database transactions: it reads or writes the
chip in one short transaction, calls Evolution, then records what Evolution answered in
another, through the same state machine the webhooks use.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

from evochips import lifecycle
from evochips.db import Chip, Database, DatabaseUnavailable
from evochips.evolution.client import EvolutionClient
from evochips.evolution.errors import (
    EvolutionError,
    EvolutionProtocolError,
    EvolutionRejected,
    EvolutionTimeout,
    EvolutionUnavailable,
    InstanceNameInUse,
    InstanceNotFound,
)
from evochips.evolution.events import QrImage
from evochips.evolution.shapes import (
    CreatedInstance,
    DeleteOutcome,
    InstanceState,
    LogoutOutcome,
    QrCode,
    WebhookTarget,
)
from evochips.lifecycle import (
    STEADY,
    ChipDeleted,
    ChipMoved,
    ChipNotFound,
    ConcurrentChange,
    Facts,
    RegistrationConflict,
    Source,
)
from evochips.receiver.auth import TOKEN_HEADER
from evochips.settings import Settings
from evochips.statemachine import LIFECYCLE_TRIGGERS, PAIRED, InvalidTransition, Trigger

logger = logging.getLogger(__name__)

# Evolution accepts spaces, slashes and empty names, which then break its own URLs.
INSTANCE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MIN_PHONE_DIGITS, MAX_PHONE_DIGITS = 10, 15
# Chip ids are UUIDs when evochips makes them; a backend may bring its own, as text.
CHIP_ID = re.compile(r"[A-Za-z0-9-]{1,36}")

Result = dict[str, Any]
P = ParamSpec("P")


class InvalidInput(ValueError):
    """An argument the caller can fix: a bad instance name, phone number or trigger."""


class _Unconfirmed(EvolutionUnavailable):
    """Create got no usable answer: the instance may or may not exist in Evolution."""

    def __init__(self, chip: Chip, cause: EvolutionError) -> None:
        super().__init__(
            f"{cause}; instance {chip.instance_name!r} may exist in Evolution, so chip "
            f"{chip.id} stays pending: create it again with the same name and phone to "
            "finish, or delete it"
        )
        self.fields = {"chip_id": chip.id, "instance_name": chip.instance_name}
        # Whether Evolution was too slow or out of reach, as the cause says.
        self.code = error_code(cause)


class _Unrecorded(DatabaseUnavailable):
    """Evolution created the instance, and the database failed to record what it said."""

    def __init__(self, chip: Chip, cause: DatabaseUnavailable) -> None:
        super().__init__(
            f"instance {chip.instance_name!r} was created in Evolution, but recording it "
            f"failed ({cause}); create it again with the same name and phone to finish "
            "(reconciliation also finishes it)"
        )
        self.fields = {"chip_id": chip.id, "instance_name": chip.instance_name}


# Each expected failure with the ``error_code`` its dict carries, most specific first, so
# that callers (the HTTP API) can tell failures apart without parsing sentences.
ERROR_CODES: tuple[tuple[type[Exception], str], ...] = (
    (InvalidInput, "invalid_input"),
    (ChipDeleted, "invalid_transition"),
    (ChipNotFound, "not_found"),
    (RegistrationConflict, "name_in_use"),
    (InstanceNameInUse, "name_in_use"),
    (InvalidTransition, "invalid_transition"),
    (ConcurrentChange, "concurrent_change"),
    (ChipMoved, "concurrent_change"),
    (DatabaseUnavailable, "database_unavailable"),
    (InstanceNotFound, "instance_missing"),
    (EvolutionTimeout, "evolution_timeout"),
    (EvolutionUnavailable, "evolution_unavailable"),
    (EvolutionRejected, "evolution_rejected"),
    (EvolutionProtocolError, "evolution_protocol_error"),
)
_EXPECTED_FAILURES = tuple(kind for kind, _ in ERROR_CODES)


def error_code(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    if isinstance(exc, EvolutionRejected) and exc.retryable:
        # A 5xx (Evolution's or a proxy's) says "not now", not "no".
        return "evolution_unavailable"
    return next(name for kind, name in ERROR_CODES if isinstance(exc, kind))


def _command(
    **on_failure: Any,
) -> Callable[[Callable[P, Awaitable[Result]]], Callable[P, Awaitable[Result]]]:
    """Turn the expected failures of a command into its failure dict, in one place."""

    def wrap(method: Callable[P, Awaitable[Result]]) -> Callable[P, Awaitable[Result]]:
        @functools.wraps(method)
        async def run(*args: P.args, **kwargs: P.kwargs) -> Result:
            try:
                return {"sucesso": True, **await method(*args, **kwargs)}
            except _EXPECTED_FAILURES as exc:
                logger.info("%s failed: %s", method.__name__, exc)
                fields = getattr(exc, "fields", {})
                return {
                    "sucesso": False,
                    **on_failure,
                    **fields,
                    "error": str(exc),
                    "error_code": error_code(exc),
                }

        return run

    return wrap


class InstanceManager:
    def __init__(
        self,
        db: Database,
        evolution: EvolutionClient,
        webhook: WebhookTarget,
        *,
        owns_db: bool = False,
    ) -> None:
        self._db = db
        self._evolution = evolution
        self._webhook = webhook
        self._owns_db = owns_db

    @classmethod
    def from_settings(cls, settings: Settings, db: Database | None = None) -> InstanceManager:
        evolution, webhook = evolution_from_settings(settings)
        if db is not None:
            return cls(db, evolution, webhook)
        return cls(Database(settings.database_url), evolution, webhook, owns_db=True)

    async def aclose(self) -> None:
        """Close the Evolution client, and the database if the manager opened it."""
        await self._evolution.aclose()
        if self._owns_db:
            await self._db.dispose()

    @_command(chip_id=None, instance_name=None, qr_code=None)
    async def criar_instancia(
        self, instance_name: str, telefone: str, chip_id: str | None = None
    ) -> Result:
        """Register a chip and create its Evolution instance, configured to post to us.

        Called again for a chip whose create got no answer, it finishes that create.
        """
        _check_name(instance_name)
        phone = normalise_phone(telefone)
        if chip_id is not None:
            _check_chip_id(chip_id)
        # The version shapes the request; when it is not known yet, asking for it also
        # stops an unreachable Evolution before anything is written.
        await self._evolution.api_version()
        chip = await self._unconfirmed_chip(instance_name, phone, chip_id)
        finishing = chip is not None
        if chip is not None:
            # Claims the chip, so a reconciliation pass that has just found it unconfirmed
            # cannot mark its create failed while this one runs.
            await lifecycle.touch(self._db, chip)
        else:
            # The row comes first so that a webhook arriving before create returns finds it.
            chip = await lifecycle.register(self._db, instance_name, phone, chip_id)
        try:
            webhook = self._webhook.for_instance(chip.instance_tag)
            created = await self._evolution.create_instance(instance_name, webhook)
        except InstanceNameInUse as exc:
            if not finishing:
                await self._forget(chip, exc)
                raise
            created = await self._adopt(instance_name)
        except EvolutionRejected as exc:
            if exc.retryable:  # a 5xx from Evolution or a proxy: the outcome is unknown
                raise _Unconfirmed(chip, exc) from exc
            await self._forget(chip, exc)
            raise
        except (EvolutionUnavailable, EvolutionProtocolError) as exc:
            raise _Unconfirmed(chip, exc) from exc
        try:
            await lifecycle.remember_instance(self._db, chip.id, created.instance_id)
            if created.misconfigured is not None:
                # Never taken as paired: only a connection.update open with a wuid is.
                logger.info("instance %r misconfigured: %s", instance_name, created.misconfigured)
                await lifecycle.flag_misconfigured(self._db, chip.id, created.misconfigured)
            qr = created.qr if created.qr is not None and created.qr.ready else None
            stored = qr is not None and await self._store_qr(chip, qr, Source.COMMAND)
        except DatabaseUnavailable as exc:
            raise _Unrecorded(chip, exc) from exc
        return {
            "chip_id": chip.id,
            "instance_name": instance_name,
            "qr_code": qr.base64 if qr is not None and stored else None,
        }

    @_command(qr_code=None, code=None, connected=False)
    async def obter_qr_code(self, instance_name: str) -> Result:
        """Fetch the current QR; ``qr_code`` is None until Evolution has one."""
        chip = await self._chip(instance_name)
        answer = await self._evolution.connect(instance_name)
        return await self._connect_result(chip, answer)

    @_command(state=None, connected=False)
    async def verificar_conexao(self, instance_name: str) -> Result:
        """Ask Evolution for the live connection state and bring the chip in line."""
        chip = await self._chip(instance_name)
        state = await self._evolution.connection_state(instance_name)
        trigger = _POLLED_TRIGGERS.get(state or "")
        # Only a change is written: a check that confirms the chip costs no transaction.
        if trigger is not None and lifecycle.decide_for(chip, trigger).changed:
            await lifecycle.fire(self._db, chip.id, trigger, Source.POLL)
        return {"state": state, "connected": state == "open"}

    @_command(message=None)
    async def desconectar_instancia(self, instance_name: str, chip_id: str | None) -> Result:
        """Log the number out; the chip goes back to ``pending`` and needs a new QR."""
        chip = await self._owned_chip(instance_name, chip_id)
        outcome = await self._evolution.logout(instance_name)
        note = {"evolution": outcome.value}
        # A new session starts with a clean slate: drops of the old one are not counted.
        await lifecycle.fire(
            self._db,
            chip.id,
            Trigger.LOGGED_OUT,
            Source.COMMAND,
            Facts(note=note),
            changes=lifecycle.STEADY,
        )
        if outcome is LogoutOutcome.NOT_CONNECTED:
            return {"message": f"instance {instance_name} was not connected; chip logged out"}
        return {"message": f"instance {instance_name} logged out"}

    @_command(message=None)
    async def deletar_instancia(self, instance_name: str, chip_id: str | None) -> Result:
        """Delete the instance in Evolution; the chip stays, ``deleted``, with its history."""
        chip = await self._owned_chip(instance_name, chip_id, include_deleted=True)
        if chip.deleted_at is not None:
            return {"message": f"chip {chip.id} was already deleted"}
        outcome = await self._delete(chip)
        note = {"evolution": outcome.value}
        await lifecycle.fire(self._db, chip.id, Trigger.REMOVED, Source.COMMAND, Facts(note=note))
        if outcome is DeleteOutcome.ABSENT:
            return {"message": f"instance {instance_name} was already gone; chip deleted"}
        return {"message": f"instance {instance_name} deleted"}

    @_command(qr_code=None, message=None)
    async def reconectar_instancia(self, instance_name: str, chip_id: str | None) -> Result:
        """Restart the instance's connection and return a fresh QR when there is one."""
        chip = await self._owned_chip(instance_name, chip_id)
        try:
            answer = await self._evolution.restart(instance_name)
        except EvolutionProtocolError:
            # Evolution answers a restart of a closed instance with an error in HTTP 200
            # (reference section 2.5); connecting is what brings a closed one back.
            answer = await self._evolution.connect(instance_name)
        else:
            has_qr = isinstance(answer, QrCode) and answer.ready
            is_open = isinstance(answer, InstanceState) and answer.state == "open"
            if not (has_qr or is_open):  # v1 answers a closed instance's state; v2 count 0
                answer = await self._evolution.connect(instance_name)
        if chip.status in PAIRED and isinstance(answer, QrCode) and answer.ready:
            # A paired session resumes without a QR. Evolution's QR cache outlives pairings,
            # so a restart that finds the instance reconnecting (two at once, say) answers
            # the last QR it ever showed; it is not one to scan.
            answer = QrCode(count=answer.count)
        result = await self._connect_result(chip, answer)
        if chip.unstable_since is not None:
            # Someone acted on the flapping: the flag comes down, in the history as when
            # reconciliation lowers it, and drops from here on count afresh.
            note = {"reason": "reconnect command; drops count afresh from here"}
            await lifecycle.fire(self._db, chip.id, Trigger.STEADY_AGAIN, Source.COMMAND,
                                 Facts(note=note), dict(STEADY))  # fmt: skip
        elif chip.drops:
            await lifecycle.clear_unstable(self._db, chip.id)
        if result["connected"]:
            message = f"instance {instance_name} is connected; no QR needed"
        elif result["qr_code"] is None and chip.status in PAIRED:
            message = f"instance {instance_name} restarted; its paired session resumes, no QR"
        elif result["qr_code"] is None:
            message = f"instance {instance_name} restarted; its QR is not ready yet"
        else:
            message = f"instance {instance_name} restarted; scan the new QR"
        return {"qr_code": result["qr_code"], "message": message}

    @_command(status=None, message=None)
    async def transicionar(
        self, instance_name: str, trigger: str, *, expected_version: int | None = None
    ) -> Result:
        """Move a chip through its lifecycle: promote, activate, degrade or restore. With
        ``expected_version``, only if the chip has not changed since it had that version
        (error_code ``concurrent_change`` otherwise)."""
        chosen = _lifecycle_trigger(trigger)
        chip = await self._chip(instance_name)
        applied = await lifecycle.fire(
            self._db, chip.id, chosen, Source.COMMAND, expected_version=expected_version
        )
        decision = applied.decision
        return {
            "status": decision.to_status.value,
            "message": f"chip {instance_name}: {decision.from_status.value} -> "
            f"{decision.to_status.value}",
        }

    async def _connect_result(self, chip: Chip, answer: QrCode | InstanceState) -> Result:
        if isinstance(answer, InstanceState):
            connected = answer.state == "open"
            if connected:
                await lifecycle.fire(self._db, chip.id, Trigger.CONNECTED, Source.POLL)
            return {"qr_code": None, "code": None, "connected": connected}
        if not answer.ready:
            # {"count": 0}: Evolution has not produced a QR yet; not an error.
            return {"qr_code": None, "code": None, "connected": False}
        if not await self._store_qr(chip, answer, Source.COMMAND):
            # The chip opened while this answer was on its way: the QR is spent.
            return {"qr_code": None, "code": None, "connected": True}
        return {"qr_code": answer.base64, "code": answer.code, "connected": False}

    async def _store_qr(self, chip: Chip, qr: QrCode, source: Source) -> bool:
        """Store a QR a command's answer carried; False when the chip has opened since."""
        image = QrImage(base64=qr.base64, code=qr.code, pairing_code=qr.pairing_code)
        return await lifecycle.offer_qr(self._db, chip.id, image, source)

    async def _delete(self, chip: Chip) -> DeleteOutcome:
        name = chip.instance_name
        try:
            return await self._evolution.delete(name)
        except EvolutionRejected as exc:
            if not _needs_disconnect(exc):
                raise
        # v1 refuses to delete a connected instance (reference section 2.7), and its
        # logout answers before the connection is closed, so delete is tried a few times.
        await self._evolution.logout(name)
        note = {"evolution": LogoutOutcome.LOGGED_OUT.value, "for": "delete"}
        await lifecycle.fire(
            self._db, chip.id, Trigger.LOGGED_OUT, Source.COMMAND, Facts(note=note)
        )
        for pause in V1_DELETE_PAUSES:
            await asyncio.sleep(pause)
            try:
                return await self._evolution.delete(name)
            except EvolutionRejected as exc:
                if not _needs_disconnect(exc):
                    raise
        raise EvolutionRejected(
            f"Evolution logged {name!r} out but still refuses to delete it; delete it again "
            "once its connection has closed",
            status=400,
        )

    async def _chip(self, instance_name: str) -> Chip:
        _check_name(instance_name)
        return await lifecycle.find_chip(self._db, instance_name)

    async def _owned_chip(
        self, instance_name: str, chip_id: str | None, *, include_deleted: bool = False
    ) -> Chip:
        _check_name(instance_name)
        chip = await lifecycle.find_chip(self._db, instance_name, include_deleted=include_deleted)
        if chip_id is not None and chip.id != chip_id:  # also catches a chip_id of a wrong type
            raise ChipNotFound(
                f"instance {instance_name!r} belongs to chip {chip.id}, not {chip_id}"
            )
        return chip

    async def _unconfirmed_chip(
        self, instance_name: str, telefone: str, chip_id: str | None
    ) -> Chip | None:
        """The chip of an earlier create of this name that got no answer, if this call
        repeats it (same phone and, if given, same chip)."""
        try:
            chip = await lifecycle.find_chip(self._db, instance_name)
        except ChipNotFound:
            return None
        repeats = chip.telefone == telefone and chip_id in (None, chip.id)
        unconfirmed = chip.status == "pending" and chip.evolution_instance_id is None
        return chip if repeats and unconfirmed else None

    async def _adopt(self, instance_name: str) -> CreatedInstance:
        """Evolution has the instance our unanswered create asked for: take it as created."""
        info = await self._evolution.fetch_instance(instance_name)
        if info is None:
            raise EvolutionProtocolError(
                f"Evolution says {instance_name!r} is in use but does not list it"
            )
        logger.info("instance %r adopted: an earlier create had made it", instance_name)
        return CreatedInstance(
            instance_id=info.instance_id, status=info.state, qr=None, integration=info.integration
        )

    async def _forget(self, chip: Chip, exc: EvolutionRejected) -> None:
        """Evolution refused the create: the chip did not come to exist."""
        note = {"evolution_status": exc.status}
        try:
            await lifecycle.fire(
                self._db, chip.id, Trigger.REJECTED, Source.COMMAND, Facts(note=note)
            )
        except (InvalidTransition, DatabaseUnavailable) as forget_exc:
            logger.warning("chip %s could not be marked rejected: %s", chip.id, forget_exc)


def evolution_from_settings(settings: Settings) -> tuple[EvolutionClient, WebhookTarget]:
    """The Evolution client, and where its instances are to post their webhooks."""
    evolution = EvolutionClient(
        settings.evolution_api_url,
        settings.evolution_api_key,
        api_version=settings.evolution_api_version,
    )
    webhook = WebhookTarget(
        url=settings.webhook_url,
        headers={TOKEN_HEADER: settings.webhook_secret},
        headerless_url=settings.headerless_webhook_url,
    )
    return evolution, webhook


V1_DELETE_PAUSES = (0.5, 1.0, 2.0)


def _needs_disconnect(exc: EvolutionRejected) -> bool:
    return exc.status == 400 and "needs to be disconnected" in exc.detail


_POLLED_TRIGGERS = {
    "open": Trigger.CONNECTED,
    "connecting": Trigger.CONNECTING,
    "close": Trigger.DISCONNECTED,
}


# What people put between a number's digits; anything else means a mistyped number.
_PHONE = re.compile(r"[0-9 ()+\-]*")


def normalise_phone(telefone: str) -> str:
    """Digits only (``+55 (11) 90000-0001`` becomes ``5511900000001``); raises InvalidInput.
    Spaces, ``+``, ``(``, ``)`` and ``-`` may separate the digits; any other character is
    refused rather than dropped, so a typo never stores a different number."""
    if not isinstance(telefone, str):
        raise InvalidInput(f"telefone must be text, not {type(telefone).__name__}")
    if not _PHONE.fullmatch(telefone):
        raise InvalidInput(
            f"telefone {telefone!r} may hold only digits, spaces, '+', '(', ')' and '-'"
        )
    digits = re.sub(r"[^0-9]", "", telefone)
    if not MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS:
        raise InvalidInput(
            f"telefone {telefone!r} must have {MIN_PHONE_DIGITS} to {MAX_PHONE_DIGITS} digits"
        )
    return digits


def _check_name(instance_name: str) -> None:
    if not isinstance(instance_name, str) or not INSTANCE_NAME.fullmatch(instance_name):
        raise InvalidInput(
            f"instance name {instance_name!r} must be 1 to 64 letters, digits, '-' or '_'"
        )


def _check_chip_id(chip_id: str) -> None:
    if not isinstance(chip_id, str) or not CHIP_ID.fullmatch(chip_id):
        raise InvalidInput(f"chip_id {chip_id!r} must be 1 to 36 letters, digits or '-'")


def _lifecycle_trigger(name: str) -> Trigger:
    allowed = {t.value: t for t in LIFECYCLE_TRIGGERS}
    if not isinstance(name, str) or name not in allowed:
        raise InvalidInput(f"trigger {name!r} is not one of {', '.join(allowed)}")
    return allowed[name]
