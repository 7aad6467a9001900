"""Reconciliation: bring the database and Evolution API back together, whatever was lost.

Webhooks are not enough: Evolution keeps its retry queue in memory, removes instances on
its own, and a command can die between Evolution's answer and our commit. A pass reads
every instance Evolution has (``fetchInstances``), compares each live chip with its
instance, and corrects what differs through the state machine, with source
``reconcile``, so every correction is in the history:

- the chip's instance is gone: the chip becomes ``deleted`` (or, if its create never
  went through, the create is marked failed);
- the instance exists but its chip's create never heard back: the instance is adopted
  (an ``instance_found`` row);
- the connection state differs: the chip follows the live state (asked with
  ``connectionState``, because ``fetchInstances`` reports what Evolution last stored).
  A ``refused`` chip is not moved to the coarser ``close``;
- a ``pending`` chip has had no QR for ``stuck_after``: it is flagged as stuck, with a
  ``flagged_stuck`` history row;
- an unstable chip (see ``evochips.lifecycle``) has stayed open, unchanged, for
  ``unstable_clear_after``: its flag comes down (``steady_again``);
- the instance is not a Baileys one: the chip is flagged misconfigured
  (``flagged_misconfigured``), and the "open" such an instance always reports is not
  followed;
- an instance evochips created has no chip: it is adopted or reported, by setting.

Every action is idempotent, so a pass that dies half-way is simply run again. Work per
pass is bounded by ``max_actions`` corrections; what is left waits for the next pass.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import re
import socket
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from evochips import lifecycle
from evochips.db import Chip, ChipTransition, Database, DatabaseUnavailable, Lease
from evochips.db.models import utcnow
from evochips.evolution.client import EvolutionClient
from evochips.evolution.errors import EvolutionError
from evochips.evolution.shapes import InstanceInfo, WebhookTarget, wrong_integration
from evochips.lifecycle import (
    STEADY,
    ChipMoved,
    ChipNotFound,
    Facts,
    RegistrationConflict,
    Source,
)
from evochips.settings import Settings
from evochips.statemachine import ChipStatus, ConnectionState, InvalidTransition, Trigger

logger = logging.getLogger(__name__)

LEASE_NAME = "reconcile"
# Long enough for any pass (each Evolution call has a 20 s deadline, and a pass makes at
# most max_actions of them); a replica that dies mid-pass gives the lease up by then.
PASS_LEASE = timedelta(minutes=20)
# How long giving the lease back may wait for the database to return.
RELEASE_PATIENCE_SECONDS = 15.0
# Close reasons after which the number must scan a new QR (reference section 3.4).
_LOGGED_OUT_REASONS = frozenset({401, 402, 406})
_BANNED_REASON = 403
_POLLED = {
    "open": Trigger.CONNECTED,
    "connecting": Trigger.CONNECTING,
    "close": Trigger.DISCONNECTED,
}


class OrphanPolicy(enum.StrEnum):
    REPORT = "report"
    ADOPT = "adopt"


@dataclass(frozen=True)
class ReconcileSettings:
    orphans: OrphanPolicy = OrphanPolicy.REPORT
    stuck_after: timedelta = timedelta(minutes=10)
    # Longer than a create may take (its deadline is 60 s): a pending chip without an
    # instance younger than this may have a create in flight.
    create_grace: timedelta = timedelta(minutes=2)
    max_actions: int = 50
    max_lookups: int = 500
    unstable_clear_after: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class Finding:
    kind: str
    instance_name: str
    chip_id: str | None
    detail: str
    action: str


@dataclass
class Report:
    dry_run: bool
    instances: int = 0
    chips: int = 0
    findings: list[Finding] = field(default_factory=list)
    deferred: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reconciler:
    def __init__(
        self,
        db: Database,
        evolution: EvolutionClient,
        webhook: WebhookTarget,
        settings: ReconcileSettings | None = None,
    ) -> None:
        self._db = db
        self._evolution = evolution
        self._webhook = webhook
        self._settings = settings or ReconcileSettings()

    @classmethod
    def from_settings(
        cls, settings: Settings, db: Database, evolution: EvolutionClient, webhook: WebhookTarget
    ) -> Reconciler:
        tuned = ReconcileSettings(
            orphans=OrphanPolicy(settings.reconcile_orphans),
            stuck_after=timedelta(seconds=settings.stuck_after),
            unstable_clear_after=timedelta(seconds=settings.unstable_clear_after),
        )
        return cls(db, evolution, webhook, tuned)

    async def run(self, *, dry_run: bool = False) -> Report:
        """One pass. Raises EvolutionError if Evolution cannot list its instances (then
        nothing is touched) and DatabaseUnavailable if the database is away."""
        pass_ = _Pass(self, Report(dry_run=dry_run), dry_run)
        instances = {info.name: info for info in await self._evolution.fetch_instances()}
        chips = await _live_chips(self._db)
        pass_.report.instances, pass_.report.chips = len(instances), len(chips)
        for chip in chips:
            info = instances.get(chip.instance_name)
            try:
                await (pass_.missing(chip) if info is None else pass_.present(chip, info))
            except (InvalidTransition, ChipNotFound, ChipMoved) as exc:
                # A command or webhook changed the chip during the pass: it decides.
                detail = f"changed during the pass ({exc})"
                pass_.found("moved", chip.instance_name, chip.id, detail, "left alone")
            except EvolutionError as exc:
                # One instance Evolution cannot answer for must not hold up the others.
                pass_.found("error", chip.instance_name, chip.id, str(exc), "left alone")
        live_names = {chip.instance_name for chip in chips}
        for name, info in instances.items():
            if name not in live_names:
                try:
                    await pass_.orphan(info)
                except EvolutionError as exc:
                    pass_.found("error", name, None, str(exc), "left alone")
        return pass_.report


class _Pass:
    """The state of one pass: its report and how much work it has left."""

    def __init__(self, reconciler: Reconciler, report: Report, dry_run: bool) -> None:
        self.r = reconciler
        self.report = report
        self.dry_run = dry_run
        self.budget = reconciler._settings.max_actions
        self.lookups = reconciler._settings.max_lookups
        self.now = utcnow()

    def _spend(self) -> bool:
        if self.budget <= 0:
            self.report.deferred += 1
            return False
        self.budget -= 1
        return True

    def found(self, kind: str, name: str, chip_id: str | None, detail: str, action: str) -> None:
        if self.dry_run and action not in ("left alone", "nothing to do"):
            action = f"would be {action} (dry run)"
        self.report.findings.append(Finding(kind, name, chip_id, detail, action))
        logger.info("reconcile: %s %r: %s; %s", kind, name, detail, action)

    async def _fire(
        self,
        chip: Chip,
        trigger: Trigger,
        note: dict[str, Any],
        changes: dict[str, Any] | None = None,
        status_reason: int | None = None,
    ) -> Chip:
        """Correct ``chip`` unless it changed since the pass read it (raises ChipMoved);
        returns the chip as it is now (as it was, in a dry run)."""
        if self.dry_run:
            return chip
        facts = Facts(note=note, status_reason=status_reason)
        applied = await lifecycle.fire(self.r._db, chip.id, trigger, Source.RECONCILE, facts,
                                       changes, expected_version=chip.version)  # fmt: skip
        return applied.chip

    # -- a chip whose instance Evolution does not list -------------------------------------

    def _create_may_be_running(self, chip: Chip) -> bool:
        """A pending chip that never learnt its instance's id, whose create (or the retry
        that claimed it) started within the create grace, so may not have been answered
        yet. Webhooks do not count: the instance shows a new QR every 45 s meanwhile."""
        started = chip.command_started_at or chip.created_at
        return _unconfirmed(chip) and self.now - started < self.r._settings.create_grace

    async def missing(self, chip: Chip) -> None:
        if self._create_may_be_running(chip):
            detail = "no instance yet; its create may still be running"
            self.found("create_in_flight", chip.instance_name, chip.id, detail, "left alone")
            return
        if not self._spend():
            return
        # The list was read at the start of the pass; ask again before deleting anything.
        if await self.r._evolution.fetch_instance(chip.instance_name) is not None:
            return
        if _unconfirmed(chip):
            detail = "Evolution never created the instance (its create got no answer)"
            await self._fire(chip, Trigger.REJECTED, {"reason": detail})
            self.found("create_failed", chip.instance_name, chip.id, detail, "marked failed")
            return
        detail = "the instance is missing from Evolution"
        await self._fire(chip, Trigger.REMOVED, {"reason": detail})
        self.found("instance_missing", chip.instance_name, chip.id, detail, "deleted")

    # -- a chip and its instance -------------------------------------------------------------

    async def present(self, chip: Chip, info: InstanceInfo) -> None:
        if _replaced(chip, info):
            # Deleted and made again under the same name (by someone else, or by hand):
            # the chip's own instance is gone. The new one is judged as an orphan once the
            # chip no longer holds its name, in the next pass.
            if not self._spend():
                return
            detail = (f"the instance {chip.evolution_instance_id} is gone; its name now "
                      f"belongs to another instance, {info.instance_id}")  # fmt: skip
            await self._fire(chip, Trigger.REMOVED, {"reason": detail})
            self.found("instance_replaced", chip.instance_name, chip.id, detail, "deleted")
            return
        if chip.evolution_instance_id is None and info.instance_id is not None:
            if self._create_may_be_running(chip):
                # Evolution made the instance and has not answered yet (it waits 5 s
                # before it does): the create is still in hand, not lost.
                detail = "the instance exists; its create may still be waiting for an answer"
                self.found("create_in_flight", chip.instance_name, chip.id, detail, "left alone")
                return
            if not self._spend():
                return
            detail = "the create went through but its answer was lost"
            note: dict[str, Any] = {"reason": detail, "instance_id": info.instance_id}
            # What follows starts from the chip as this correction leaves it.
            chip = await self._fire(chip, Trigger.INSTANCE_FOUND, note,
                                    {"evolution_instance_id": info.instance_id})  # fmt: skip
            self.found("create_confirmed", chip.instance_name, chip.id, detail, "adopted")
        if await self._misconfigured(chip, info):
            return
        lost = _lost_session(chip, info)
        if lost is not None and await self._open_since(chip, info.disconnection_at):
            # Evolution keeps the reason of a close it has long recovered from: the number
            # was paired again after it, and the chip has been through that close already.
            lost = None
        if lost is not None:
            if not self._spend():
                return
            now = "is closed" if info.state == "close" else f"is {info.state} again"
            detail = (f"Evolution closed the session ({info.disconnection_reason}) and {now}; "
                      f"the chip is still {chip.status}")  # fmt: skip
            note = {"reason": detail, "disconnection_reason": info.disconnection_reason}
            chip = await self._fire(chip, lost, note, status_reason=info.disconnection_reason)
            self.found("session_lost", chip.instance_name, chip.id, detail, f"synced ({lost})")
            if not self.dry_run and _state_of(info) not in (None, chip.connection_state):
                # It may already be connecting for a new QR: follow that in the same pass.
                await self._sync(chip, info)
            return
        if _state_of(info) not in (None, chip.connection_state) and not _finer(chip, info):
            chip = await self._sync(chip, info)
        if await self._is_stuck(chip):
            if not self._spend():
                return
            detail = f"pending with no QR for over {self.r._settings.stuck_after}"
            note = {"reason": detail, "remedy": "logout and connect, or delete and create"}
            await self._fire(chip, Trigger.FLAGGED_STUCK, note, {"stuck_since": self.now})
            self.found("stuck", chip.instance_name, chip.id, detail, "flagged")
        elif await self._is_steady(chip):
            if not self._spend():
                return
            wait = self.r._settings.unstable_clear_after
            detail = f"unstable, but open with no change for {wait}"
            await self._fire(chip, Trigger.STEADY_AGAIN, {"reason": detail}, dict(STEADY))
            self.found("stable_again", chip.instance_name, chip.id, detail, "cleared")

    async def _misconfigured(self, chip: Chip, info: InstanceInfo) -> bool:
        """Whether the chip's instance is not a Baileys one (flagging it, if it was not
        yet): its state is then not followed, since such an instance reports itself open
        with nothing paired."""
        reason = wrong_integration(info.integration)
        if reason is not None and chip.misconfigured is None and self._spend():
            changes = {"misconfigured": reason[:255]}
            await self._fire(chip, Trigger.FLAGGED_MISCONFIGURED, {"reason": reason}, changes)
            self.found("misconfigured", chip.instance_name, chip.id, reason, "flagged")
        return reason is not None or chip.misconfigured is not None

    async def _sync(self, chip: Chip, info: InstanceInfo) -> Chip:
        """The chip after following the live state, if it had to."""
        if not self._spend():
            return chip
        # fetchInstances reports what Evolution last stored; the live socket decides.
        live = await self.r._evolution.connection_state(chip.instance_name)
        if live is None or live == chip.connection_state:
            return chip
        trigger = _POLLED.get(live)
        if trigger is None:
            return chip
        if live == "close" and chip.connection_state == ConnectionState.REFUSED:
            return chip
        if live == "close" and info.disconnection_reason in _LOGGED_OUT_REASONS:
            trigger = Trigger.LOGGED_OUT
        elif live == "close" and info.disconnection_reason == _BANNED_REASON:
            trigger = Trigger.BANNED
        detail = f"Evolution says {live}, the chip says {chip.connection_state}"
        note = {"reason": detail, "disconnection_reason": info.disconnection_reason}
        chip = await self._fire(chip, trigger, {k: v for k, v in note.items() if v is not None})
        self.found("state_differs", chip.instance_name, chip.id, detail, f"synced ({trigger})")
        return chip

    async def _is_stuck(self, chip: Chip) -> bool:
        """Pending, no QR shown, and nothing has changed for ``stuck_after``."""
        waiting = (
            chip.status == ChipStatus.PENDING
            and chip.connection_state != ConnectionState.OPEN
            and chip.evolution_qr_code is None
            and chip.stuck_since is None
        )
        return waiting and await self._unchanged_for(chip, self.r._settings.stuck_after)

    async def _is_steady(self, chip: Chip) -> bool:
        """Unstable, open, and with no drop (nor any other change) for
        ``unstable_clear_after``: our clock on both sides, the flag's time and the last
        history row's, never Evolution's date_time."""
        wait = self.r._settings.unstable_clear_after
        flagged = chip.unstable_since is not None and self.now - chip.unstable_since >= wait
        is_open = chip.connection_state == ConnectionState.OPEN
        return flagged and is_open and await self._unchanged_for(chip, wait)

    async def _open_since(self, chip: Chip, closed_at: datetime | None) -> bool:
        """Whether the chip was open after ``closed_at`` (Evolution's real UTC against our
        history's clock; a pairing takes a person far longer than the two clocks differ)."""
        if closed_at is None:
            return False
        async with self.r._db.read() as session:
            opened = await session.scalar(
                select(func.max(ChipTransition.created_at)).where(
                    ChipTransition.chip_id == chip.id,
                    ChipTransition.to_connection == ConnectionState.OPEN,
                    ChipTransition.from_connection != ConnectionState.OPEN,
                )
            )
        return opened is not None and opened > closed_at

    async def _unchanged_for(self, chip: Chip, wait: timedelta) -> bool:
        """Measured from the last history row, because a storm of unchanging events still
        touches the chip's row."""
        async with self.r._db.read() as session:
            last = await session.scalar(
                select(func.max(ChipTransition.created_at)).where(ChipTransition.chip_id == chip.id)
            )
        return last is None or self.now - last >= wait

    # -- an instance without a live chip -----------------------------------------------------

    async def orphan(self, info: InstanceInfo) -> None:
        earlier = await _latest_chip(self.r._db, info.name)
        # Asking whose an instance is changes nothing, so it has its own, larger allowance:
        # a shared Evolution server full of other people's instances must not use up the
        # budget that corrections need.
        if earlier is None and self.lookups <= 0:
            self.report.deferred += 1
            return
        if earlier is None:
            self.lookups -= 1
        ours = earlier is not None or await self._posts_to_us(info.name)
        if not ours:
            detail = "no chip has it, and it does not post its webhooks to evochips"
            self.found("foreign_instance", info.name, None, detail, "left alone")
            return
        detail = "an instance evochips created has no live chip"
        if self.r._settings.orphans is OrphanPolicy.REPORT:
            self.found("orphan_instance", info.name, earlier.id if earlier else None, detail,
                        "reported (set EVOCHIPS_RECONCILE_ORPHANS=adopt to adopt it)")  # fmt: skip
            return
        if not self._spend():
            return
        self.found("orphan_instance", info.name, earlier.id if earlier else None, detail,
                    "adopted")  # fmt: skip
        if not self.dry_run:
            await self._adopt(info, earlier)

    async def _posts_to_us(self, name: str) -> bool:
        try:
            webhook = await self.r._evolution.find_webhook(name)
        except EvolutionError as exc:
            logger.info("reconcile: webhook of %r unknown: %s", name, exc)
            return False
        base = self.r._webhook.url.rstrip("/")
        return webhook is not None and (webhook.url or "").startswith(base)

    async def _adopt(self, info: InstanceInfo, earlier: Chip | None) -> None:
        """A chip for the instance (the one that had its name, if any), synced to it."""
        owner = re.sub(r"[^0-9]", "", (info.owner_jid or "").split("@")[0])
        telefone = earlier.telefone if earlier is not None else owner
        chip_id = earlier.id if earlier is not None and earlier.deleted_at is not None else None
        try:
            chip = await lifecycle.register(
                self.r._db, info.name, telefone, chip_id, source=Source.RECONCILE
            )
        except RegistrationConflict as exc:  # a command registered it meanwhile
            logger.info("reconcile: %s", exc)
            return
        await lifecycle.remember_instance(self.r._db, chip.id, info.instance_id)
        try:  # its webhook may lack our secret: point it at us, as a create would
            webhook = self.r._webhook.for_instance(chip.instance_tag)
            await self.r._evolution.set_webhook(info.name, webhook)
        except EvolutionError as exc:
            logger.warning("reconcile: webhook of adopted %r not set: %s", info.name, exc)
        trigger = _POLLED.get(info.state or "")
        if trigger is not None and trigger is not Trigger.DISCONNECTED:
            note = {"reason": "adopted instance is " + (info.state or "")}
            await lifecycle.fire(self.r._db, chip.id, trigger, Source.RECONCILE, Facts(note=note))


def _replaced(chip: Chip, info: InstanceInfo) -> bool:
    known, listed = chip.evolution_instance_id, info.instance_id
    return known is not None and listed is not None and known != listed


def _unconfirmed(chip: Chip) -> bool:
    """A pending chip whose create has not been answered: it never learnt its instance."""
    return chip.evolution_instance_id is None and chip.status == ChipStatus.PENDING


def _lost_session(chip: Chip, info: InstanceInfo) -> Trigger | None:
    """A logout or ban whose webhooks were lost, seen in the close reason Evolution keeps
    (v2 only) while the instance is not open: it may already show a new QR, so its state
    alone would not tell."""
    if info.state == "open" or info.disconnection_reason is None:
        return None
    paired = chip.status in (ChipStatus.WARMING, ChipStatus.READY, ChipStatus.ACTIVE,
                             ChipStatus.DEGRADED)  # fmt: skip
    if info.disconnection_reason == _BANNED_REASON and chip.status != ChipStatus.BANNED:
        return Trigger.BANNED
    if info.disconnection_reason in _LOGGED_OUT_REASONS and paired:
        return Trigger.LOGGED_OUT
    return None


def _state_of(info: InstanceInfo) -> str | None:
    return info.state if info.state in _POLLED else None


def _finer(chip: Chip, info: InstanceInfo) -> bool:
    """``refused`` is only known from a webhook; Evolution's list calls it ``close``."""
    return chip.connection_state == ConnectionState.REFUSED and info.state == "close"


async def _reread(db: Database, chip: Chip) -> Chip:
    async with db.read() as session:
        fresh = await session.get(Chip, chip.id)
    if fresh is None:
        raise ChipNotFound(chip.id)
    return fresh


async def _live_chips(db: Database) -> list[Chip]:
    async with db.read() as session:
        rows = await session.scalars(
            select(Chip).where(Chip.deleted_at.is_(None)).order_by(Chip.created_at, Chip.id)
        )
        return list(rows)


async def _latest_chip(db: Database, name: str) -> Chip | None:
    async with db.read() as session:
        chip: Chip | None = await session.scalar(
            select(Chip)
            .where(Chip.instance_name == name)
            .order_by(Chip.deleted_at.desc().nulls_first())
            .limit(1)
        )
        return chip


async def take_lease(db: Database, holder: str, ttl: timedelta) -> bool:
    """Hold the reconcile lease for ``ttl`` (renewing it if ``holder`` has it already);
    False while another replica holds it."""
    now = utcnow()
    try:
        async with db.write() as session:
            lease = await session.get(Lease, LEASE_NAME, with_for_update=True)
            if lease is None:
                session.add(Lease(name=LEASE_NAME, holder=holder, expires_at=now + ttl))
                return True
            if lease.holder != holder and lease.expires_at > now:
                return False
            lease.holder, lease.expires_at = holder, now + ttl
            return True
    except IntegrityError:  # another replica inserted the lease first
        return False


async def release_lease(db: Database, holder: str) -> None:
    async with db.write() as session:
        await session.execute(
            update(Lease)
            .where(Lease.name == LEASE_NAME, Lease.holder == holder)
            .values(expires_at=utcnow())
        )


@retry(
    retry=retry_if_exception_type(DatabaseUnavailable),
    stop=stop_after_delay(RELEASE_PATIENCE_SECONDS),
    wait=wait_exponential(multiplier=0.5, max=4),
    reraise=True,
)
async def _release_patiently(db: Database, holder: str) -> None:
    await release_lease(db, holder)


async def _give_lease_back(db: Database, holder: str) -> None:
    """Release the lease, waiting out a short database outage: a lease left held would
    keep every replica's passes (and ``evochips reconcile``) away until it expires."""
    try:
        await _release_patiently(db, holder)
    except DatabaseUnavailable as exc:
        logger.warning(
            "could not give the reconcile lease back (%s); it lapses within %s", exc, PASS_LEASE
        )


async def run_once(reconciler: Reconciler, db: Database, holder: str) -> Report | None:
    """One pass under the lease, or None when another replica is running one."""
    if not await take_lease(db, holder, PASS_LEASE):
        return None
    try:
        return await reconciler.run()
    finally:
        await _give_lease_back(db, holder)


async def reconcile_forever(reconciler: Reconciler, db: Database, interval: float) -> None:
    """A pass every ``interval`` seconds, by whichever replica gets the lease; a failed
    pass is logged and the next one runs as usual."""
    holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    while True:
        await asyncio.sleep(interval)
        try:
            report = await run_once(reconciler, db, holder)
        except (EvolutionError, DatabaseUnavailable) as exc:
            logger.warning("reconcile pass skipped: %s", exc)
            continue
        except Exception:  # the loop must outlive a bug in one pass; the log has it
            logger.exception("reconcile pass failed")
            continue
        if report is not None and report.findings:
            kinds = Counter(finding.kind for finding in report.findings)
            logger.info("reconcile pass: %s", ", ".join(f"{n} {k}" for k, n in kinds.items()))
