"""Reconciliation repairs what commands and lost webhooks leave behind.

The fault matrix: each of create, logout, delete and restart, hit by each fault that can
strike it, then at most two reconcile passes. Afterwards no live chip points at an
instance Evolution lacks, every instance evochips created has a live chip, every
correction is in the history with source ``reconcile``, and a further pass finds nothing
to correct. Evolution is the recorded fake, behind a transport that injects the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from evochips import reconcile
from evochips.db import Database, DatabaseUnavailable
from evochips.evolution.client import EvolutionClient
from evochips.evolution.shapes import WebhookTarget
from evochips.manager import InstanceManager
from evochips.reconcile import (
    OrphanPolicy,
    Reconciler,
    ReconcileSettings,
    Report,
    release_lease,
    run_once,
    take_lease,
)
from tests.fake_evolution import GLOBAL_KEY, FakeEvolution, recorded
from tests.helpers import assert_history_consistent, chip_named, transitions

HOOK = WebhookTarget("http://evochips.test/webhooks/evolution", {"x-evochips-token": "s"})
NAME = "chip-0001"
CORRECTIONS = ("deleted", "marked failed", "adopted", "flagged", "cleared")


class Crash(Exception):
    """The process dies here: nothing after this point runs."""


@dataclass
class Fault:
    """What happens to the next call to ``path`` (a prefix): ``before`` the remote call,
    ``after`` it took effect (crash or timeout), or a 5xx answer instead of it."""

    kind: str
    path: str


class FaultyEvolution:
    def __init__(self, fake: FakeEvolution) -> None:
        self.fake = fake
        self.fault: Fault | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        fault = self.fault
        if fault is None or not request.url.path.startswith(fault.path):
            return self.fake.handle(request)
        self.fault = None
        if fault.kind == "crash before":
            raise Crash(f"before {request.url.path}")
        if fault.kind == "5xx":
            body = b'{"status":500,"error":"Internal Server Error","response":{"message":["x"]}}'
            return httpx.Response(500, content=body, headers={"content-type": "application/json"})
        if fault.kind == "403 name in use":
            status, text = recorded("14")  # Evolution's own 403 for a name in use
            return httpx.Response(status, text=text, headers={"content-type": "application/json"})
        self.fake.handle(request)  # Evolution acts on it; its answer is lost
        if fault.kind == "crash after":
            raise Crash(f"after {request.url.path}")
        raise httpx.ReadTimeout("answer lost", request=request)


@pytest.fixture
def fake() -> FakeEvolution:
    return FakeEvolution()


@pytest.fixture
async def faulty(fake: FakeEvolution) -> FaultyEvolution:
    return FaultyEvolution(fake)


@pytest.fixture
async def client(faulty: FaultyEvolution) -> AsyncIterator[EvolutionClient]:
    evolution = EvolutionClient(
        "http://evolution.test", GLOBAL_KEY, api_version=2,
        transport=httpx.MockTransport(faulty.handle), read_attempts=1,
    )  # fmt: skip
    yield evolution
    await evolution.aclose()


def _reconciler(db: Database, client: EvolutionClient, **tuning: Any) -> Reconciler:
    settings = ReconcileSettings(orphans=OrphanPolicy.ADOPT, create_grace=timedelta(0), **tuning)
    return Reconciler(db, client, HOOK, settings)


async def _open_chip(manager: InstanceManager, fake: FakeEvolution) -> None:
    assert (await manager.criar_instancia(NAME, "5511900000001"))["sucesso"]
    fake.scan(NAME)
    assert (await manager.verificar_conexao(NAME))["connected"]


COMMANDS = {
    "create": ("/instance/create", lambda m: m.criar_instancia(NAME, "5511900000001")),
    "logout": ("/instance/logout", lambda m: m.desconectar_instancia(NAME, None)),
    "delete": ("/instance/delete", lambda m: m.deletar_instancia(NAME, None)),
    "restart": ("/instance/restart", lambda m: m.reconectar_instancia(NAME, None)),
}
FAULTS = ["crash before", "crash after", "timeout after", "5xx", "403 name in use", "webhooks lost"]
MATRIX = [(command, fault) for command in COMMANDS for fault in FAULTS]


@pytest.mark.parametrize(("command", "fault"), MATRIX)
async def test_after_any_fault_two_passes_converge(
    db: Database,
    fake: FakeEvolution,
    faulty: FaultyEvolution,
    client: EvolutionClient,
    command: str,
    fault: str,
) -> None:
    manager = InstanceManager(db, client, HOOK)
    if command != "create":
        await _open_chip(manager, fake)
    elif fault == "403 name in use":
        # An earlier create made the instance, and its chip row was lost with a restore.
        _created_elsewhere(fake, NAME, HOOK.url)
    path, call = COMMANDS[command]
    if fault != "webhooks lost" and (command, fault) != ("create", "403 name in use"):
        # For the other commands, Evolution answers the command itself with that 403.
        faulty.fault = Fault(fault, path)
    with contextlib.suppress(Crash):
        await call(manager)
    if fault == "webhooks lost":
        # Evolution restarts; what it would have posted is gone, and it moved on meanwhile.
        _move_on(fake, command)

    reports = [await _reconciler(db, client).run() for _ in range(2)]

    live = {chip["instance_name"]: chip for chip in await _live(db)}
    assert set(live) == set(fake.instances), reports
    for name, chip in live.items():
        expected = "open" if fake.instances[name].state == "open" else chip["connection_state"]
        assert chip["connection_state"] == expected, (chip, reports)
        if fake.instances[name].disconnection_reason == 401:  # logged out, by whoever
            assert (chip["status"], chip["connection_state"]) == ("pending", "close"), reports
    await _corrections_are_audited(db, reports)
    again = await _reconciler(db, client).run()
    assert [f for f in again.findings if f.action in CORRECTIONS or "synced" in f.action] == []


def _created_elsewhere(fake: FakeEvolution, name: str, webhook_url: str) -> None:
    """An instance made without this database knowing (another process, a lost row)."""
    body = {"instanceName": name, "webhook": {"url": webhook_url}}
    status, _ = fake.answer("POST", "/instance/create", {"apikey": GLOBAL_KEY}, body)
    assert status == 201


def _move_on(fake: FakeEvolution, command: str) -> None:
    if command == "create":
        fake.scan(NAME)  # paired while its webhooks were lost
    elif command == "logout" and NAME in fake.instances:
        del fake.instances[NAME]  # v1 and DEL_INSTANCE remove a logged-out instance
    elif command == "restart" and NAME in fake.instances:
        fake.scan(NAME)


async def _live(db: Database) -> list[dict[str, Any]]:
    from evochips.db import queries

    return await queries.list_chips(db)


async def _corrections_are_audited(db: Database, reports: list[Report]) -> None:
    """Every correction the passes report is a history row of its own, source reconcile."""
    corrections = Counter(
        f.instance_name
        for report in reports
        for f in report.findings
        if f.action in CORRECTIONS or f.action.startswith("synced")
    )
    for name, count in corrections.items():
        chip = await chip_named(db, name)
        rows = await transitions(db, chip.id)
        assert sum(row.source == "reconcile" for row in rows) >= count, (name, rows)
        await assert_history_consistent(db, chip.id)


async def test_an_orphan_is_reported_not_adopted_by_default(
    db: Database, fake: FakeEvolution, client: EvolutionClient
) -> None:
    _created_elsewhere(fake, "chip-0002", HOOK.url)
    _created_elsewhere(fake, "someone-else", "http://other.test/hook")
    reconciler = Reconciler(db, client, HOOK, ReconcileSettings())

    report = await reconciler.run()

    kinds = {f.instance_name: (f.kind, f.action) for f in report.findings}
    assert kinds["someone-else"] == ("foreign_instance", "left alone")
    assert kinds["chip-0002"][0] == "orphan_instance" and "reported" in kinds["chip-0002"][1]
    assert await _live(db) == []


async def test_a_dry_run_changes_nothing(
    db: Database, fake: FakeEvolution, client: EvolutionClient
) -> None:
    manager = InstanceManager(db, client, HOOK)
    await _open_chip(manager, fake)
    del fake.instances[NAME]

    report = await _reconciler(db, client).run(dry_run=True)

    assert [(f.kind, f.action) for f in report.findings] == [
        ("instance_missing", "would be deleted (dry run)")]  # fmt: skip
    assert (await chip_named(db, NAME)).status == "warming"


async def test_refused_is_not_overwritten_by_evolutions_coarser_close(
    db: Database, fake: FakeEvolution, client: EvolutionClient
) -> None:
    from evochips import lifecycle
    from evochips.lifecycle import Source
    from evochips.statemachine import Trigger

    manager = InstanceManager(db, client, HOOK)
    assert (await manager.criar_instancia(NAME, "5511900000001"))["sucesso"]
    chip = await chip_named(db, NAME)
    await lifecycle.fire(db, chip.id, Trigger.QR_REFUSED, Source.WEBHOOK)
    fake.instances[NAME].state = "close"

    report = await _reconciler(db, client).run()

    assert report.findings == []
    assert (await chip_named(db, NAME)).connection_state == "refused"


async def test_a_pending_chip_without_a_qr_is_flagged_stuck_until_one_comes(
    db: Database, fake: FakeEvolution, client: EvolutionClient
) -> None:
    fake.qr_ready = False  # Evolution answers {"count": 0} for ever
    manager = InstanceManager(db, client, HOOK)
    assert (await manager.criar_instancia(NAME, "5511900000001"))["sucesso"]
    reconciler = _reconciler(db, client, stuck_after=timedelta(0))

    first, second = await reconciler.run(), await reconciler.run()

    # The create's {"count": 0} left the chip closed while Evolution keeps connecting.
    assert [(f.kind, f.action) for f in first.findings] == [
        ("state_differs", "synced (connecting)")]  # fmt: skip
    assert [(f.kind, f.action) for f in second.findings] == [("stuck", "flagged")]
    assert (await chip_named(db, NAME)).stuck_since is not None
    fake.qr_ready = True
    assert (await manager.obter_qr_code(NAME))["qr_code"]
    assert (await chip_named(db, NAME)).stuck_since is None


async def test_one_replica_at_a_time_holds_the_lease(db: Database, client: EvolutionClient) -> None:
    assert await take_lease(db, "replica-a", timedelta(minutes=5))
    assert not await take_lease(db, "replica-b", timedelta(minutes=5))
    assert await run_once(_reconciler(db, client), db, "replica-b") is None
    await release_lease(db, "replica-a")
    assert await run_once(_reconciler(db, client), db, "replica-b") is not None
    assert await take_lease(db, "replica-a", timedelta(minutes=5))  # released after the pass


async def test_the_lease_is_given_back_once_a_short_database_outage_ends(
    db: Database, client: EvolutionClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is away as the pass ends: the lease is given back when it returns,
    not left to keep every replica's passes away for its whole term."""
    outage = [DatabaseUnavailable("database unavailable (ConnectionRefusedError)")] * 2

    async def away_then_back(db: Database, holder: str) -> None:
        if outage:
            raise outage.pop()
        await release_lease(db, holder)

    monkeypatch.setattr(reconcile, "release_lease", away_then_back)
    assert await run_once(_reconciler(db, client), db, "replica-a") is not None
    assert not outage
    assert await take_lease(db, "replica-b", timedelta(minutes=5))


async def test_evolution_unreachable_touches_nothing(db: Database) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    client = EvolutionClient("http://evolution.test", GLOBAL_KEY, api_version=2,
                             transport=httpx.MockTransport(down), read_attempts=1)  # fmt: skip
    from evochips.evolution.errors import EvolutionUnavailable
    from tests.chips import given_chip

    await given_chip(db, NAME, "warming", "open")
    with pytest.raises(EvolutionUnavailable):
        await _reconciler(db, client).run()
    assert (await chip_named(db, NAME)).status == "warming"
    await client.aclose()


async def test_serve_reconciles_in_the_background_and_the_cli_reports(
    db: Database, database_url: str
) -> None:
    from tests.chips import given_chip
    from tests.servers import evochips, free_port, receiver_env, serving_app, serving_evochips

    gone = await given_chip(db, "chip-gone", "warming", "open")  # Evolution never had it
    fake = FakeEvolution()
    evolution_port, port = free_port(), free_port()
    env = {
        **receiver_env(database_url, port),
        "EVOLUTION_API_URL": f"http://127.0.0.1:{evolution_port}",
        "EVOLUTION_API_KEY": GLOBAL_KEY,
        "EVOLUTION_API_VERSION": "2",
        "EVOCHIPS_RECONCILE_INTERVAL": "0.2",
    }
    with serving_app(fake.asgi(), evolution_port):
        with serving_evochips(port, env):
            for _ in range(100):
                if (await chip_named(db, "chip-gone")).status == "deleted":
                    break
                await asyncio.sleep(0.1)
        rows = await transitions(db, gone.id)
        assert (rows[-1].trigger, rows[-1].source) == ("removed", "reconcile")

        await given_chip(db, "chip-gone-too", "active", "open")
        dry = await asyncio.to_thread(evochips, "reconcile", "--dry-run", "--json", env=env)
        assert dry.returncode == 0, dry.stderr
        findings = json.loads(dry.stdout)["findings"]
        assert [(f["kind"], f["instance_name"]) for f in findings] == [
            ("instance_missing", "chip-gone-too")]  # fmt: skip
        done = await asyncio.to_thread(evochips, "reconcile", env=env)
        assert done.returncode == 0 and "instance_missing" in done.stdout
    assert (await chip_named(db, "chip-gone-too")).status == "deleted"


async def test_a_create_still_waiting_for_its_answer_is_left_alone(
    db: Database, fake: FakeEvolution, client: EvolutionClient
) -> None:
    """Evolution makes the instance, then sleeps 5 s before it answers the create: a pass
    in between sees an instance the chip does not know yet, and must not call the create
    lost."""
    from evochips import lifecycle

    chip = await lifecycle.register(db, NAME, "5511900000001")
    _created_elsewhere(fake, NAME, HOOK.url)
    patient = ReconcileSettings(orphans=OrphanPolicy.ADOPT, create_grace=timedelta(minutes=2))

    report = await Reconciler(db, client, HOOK, patient).run()

    assert [(f.kind, f.action) for f in report.findings] == [("create_in_flight", "left alone")]
    assert [row.trigger for row in await transitions(db, chip.id)] == ["registered"]
    # Once the grace is over the create counts as answered-and-lost, and is finished.
    late = await _reconciler(db, client).run()
    assert ("create_confirmed", "adopted") in [(f.kind, f.action) for f in late.findings]


async def test_a_create_lost_for_longer_than_the_grace_is_adopted_though_qrs_keep_coming(
    db: Database, fake: FakeEvolution, client: EvolutionClient
) -> None:
    """The instance of a create that died mid-flight shows a new QR every 45 s, and each
    touches the chip: the grace runs from when the create started, not from the last QR."""
    from sqlalchemy import update

    from evochips import inbox, lifecycle
    from evochips.db import Chip
    from evochips.evolution.events import read_event
    from tests.conftest import SAMPLES, load_json

    chip = await lifecycle.register(db, NAME, "5511900000001")
    _created_elsewhere(fake, NAME, HOOK.url)
    started = datetime.now(UTC) - timedelta(minutes=3)
    async with db.write() as session:
        await session.execute(
            update(Chip).where(Chip.id == chip.id).values(command_started_at=started)
        )
    qr = load_json(SAMPLES / "v2-webhook-qrcode-updated.json")
    assert (await inbox.record_webhook(db, read_event(qr))).outcome is inbox.Outcome.APPLIED
    patient = ReconcileSettings(orphans=OrphanPolicy.ADOPT, create_grace=timedelta(minutes=2))

    report = await Reconciler(db, client, HOOK, patient).run()

    assert ("create_confirmed", "adopted") in [(f.kind, f.action) for f in report.findings]
    assert (await chip_named(db, NAME)).evolution_instance_id == fake.instances[NAME].instance_id


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
async def test_a_pass_stopped_by_a_signal_gives_its_lease_back(
    db: Database, database_url: str, stop: signal.Signals
) -> None:
    """systemd, a container stop or ``timeout`` end a pass with SIGTERM, a person with
    Ctrl-C; the next pass, from any replica, must not wait out the lease the stopped one
    held, and a script reading ``--json`` still gets a document."""
    from tests.chips import given_chip
    from tests.servers import NEUTRAL_DIR, free_port, receiver_env, serving_app

    await given_chip(db, "chip-0001", "warming", "open")
    # The fake serves from a thread of its own, so these are threads' events.
    fake, listing, released = FakeEvolution(), threading.Event(), threading.Event()
    inner = fake.asgi()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/instance/fetchInstances":
            listing.set()
            while not released.is_set():
                await asyncio.sleep(0.05)
        await inner(scope, receive, send)

    evolution_port = free_port()
    env = {
        **os.environ,
        **receiver_env(database_url, free_port()),
        "EVOLUTION_API_URL": f"http://127.0.0.1:{evolution_port}",
        "EVOLUTION_API_KEY": GLOBAL_KEY,
        "EVOLUTION_API_VERSION": "2",
    }
    with serving_app(slow, evolution_port):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "evochips", "reconcile", "--json", cwd=NEUTRAL_DIR, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert await asyncio.to_thread(listing.wait, 30), "the pass never listed"
            process.send_signal(stop)
            stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
        finally:
            released.set()

    assert process.returncode == 1, stderr
    assert "stopped by a signal" in json.loads(stdout)["error"]
    assert b"Traceback" not in stderr
    assert await take_lease(db, "another-replica", timedelta(minutes=1))

    # While that replica holds it, a pass by hand says so, with a status of its own.
    busy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evochips", "reconcile", "--json", cwd=NEUTRAL_DIR, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(busy.communicate(), 30)
    assert busy.returncode == 3
    assert "another replica" in json.loads(stdout)["error"]


class _Meddling(EvolutionClient):
    """A client through which something else changes the chip while a pass is running:
    right after the pass asks again whether an instance is really gone."""

    def __init__(self, meddle: Any, **kwargs: Any) -> None:
        super().__init__("http://evolution.test", GLOBAL_KEY, api_version=2, **kwargs)
        self.meddle = meddle

    async def fetch_instance(self, name: str) -> Any:
        found = await super().fetch_instance(name)
        await self.meddle()
        return found


async def test_a_chip_deleted_during_a_pass_is_left_to_that_delete(
    db: Database, fake: FakeEvolution
) -> None:
    from evochips import lifecycle
    from evochips.lifecycle import Source
    from evochips.statemachine import Trigger
    from tests.chips import given_chip

    chip = await given_chip(db, NAME, "warming", "open")  # Evolution does not have it

    async def delete() -> None:
        await lifecycle.fire(db, chip.id, Trigger.REMOVED, Source.COMMAND)

    client = _Meddling(delete, transport=fake.transport())
    report = await _reconciler(db, client).run()
    await client.aclose()

    assert [(f.kind, f.action) for f in report.findings] == [("moved", "left alone")]
    rows = await transitions(db, chip.id)
    assert [(r.trigger, r.source) for r in rows][-1] == ("removed", "command")
    assert not any(r.source == "reconcile" for r in rows)


async def test_a_retried_create_wins_over_a_pass_that_would_mark_it_failed(
    db: Database, fake: FakeEvolution, faulty: FaultyEvolution, client: EvolutionClient
) -> None:
    manager = InstanceManager(db, client, HOOK)
    faulty.fault = Fault("5xx", "/instance/create")
    assert not (await manager.criar_instancia(NAME, "5511900000001"))["sucesso"]
    unconfirmed = await chip_named(db, NAME)

    async def retry_starts() -> None:  # the retry claims the chip before calling Evolution
        await lifecycle_touch(db, unconfirmed)

    meddling = _Meddling(retry_starts, transport=fake.transport())
    await _reconciler(db, meddling).run()
    await meddling.aclose()

    assert (await chip_named(db, NAME)).status == "pending", "the pass stood back"
    assert (await manager.criar_instancia(NAME, "5511900000001"))["sucesso"]
    assert NAME in fake.instances


async def lifecycle_touch(db: Database, chip: Any) -> None:
    from evochips import lifecycle

    await lifecycle.touch(db, chip)


async def test_other_peoples_instances_do_not_starve_the_pass(
    db: Database, fake: FakeEvolution, client: EvolutionClient
) -> None:
    for n in range(60):
        _created_elsewhere(fake, f"someone-{n:02d}", "http://other.test/hook")
    _created_elsewhere(fake, "zz-ours", HOOK.url)

    report = await _reconciler(db, client, max_actions=5).run()

    ours = [f for f in report.findings if f.instance_name == "zz-ours"]
    assert [(f.kind, f.action) for f in ours] == [("orphan_instance", "adopted")]
    assert len([f for f in report.findings if f.kind == "foreign_instance"]) == 60


async def test_a_lost_logout_is_found_though_the_instance_shows_a_new_qr(
    db: Database, fake: FakeEvolution, client: EvolutionClient
) -> None:
    manager = InstanceManager(db, client, HOOK)
    await _open_chip(manager, fake)
    # Logged out on the phone while evochips was away; Evolution restarted and connects
    # again for a new QR, keeping the reason it closed.
    fake.instances[NAME].state = "connecting"
    fake.instances[NAME].disconnection_reason = 401
    fake.instances[NAME].disconnection_at = datetime.now(UTC).isoformat()

    report = await _reconciler(db, client).run()

    # The logout, then the connection Evolution has started for a new QR, in one pass.
    assert [(f.kind, f.action) for f in report.findings] == [
        ("session_lost", "synced (logged_out)"),
        ("state_differs", "synced (connecting)"),
    ]
    chip = await chip_named(db, NAME)
    assert (chip.status, chip.connection_state) == ("pending", "connecting")
    assert chip.status_reason == 401
    logged_out = [row for row in await transitions(db, chip.id) if row.trigger == "logged_out"]
    assert logged_out[-1].status_reason == 401
    assert (await _reconciler(db, client).run()).findings == []


async def test_a_logout_the_chip_was_paired_again_after_is_not_lost_again(
    db: Database, fake: FakeEvolution, client: EvolutionClient
) -> None:
    """Evolution keeps the reason of its last close after the number pairs again; caught
    reconnecting (a drop, or Evolution restarting), the instance would look logged out."""
    manager = InstanceManager(db, client, HOOK)
    logged_out_at = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    await _open_chip(manager, fake)
    await manager.transicionar(NAME, "promote")
    fake.instances[NAME].state = "connecting"
    fake.instances[NAME].disconnection_reason = 401
    fake.instances[NAME].disconnection_at = logged_out_at

    report = await _reconciler(db, client).run()

    assert "session_lost" not in [f.kind for f in report.findings]
    assert (await chip_named(db, NAME)).status == "ready"


async def test_one_instance_evolution_cannot_answer_for_holds_up_no_other(
    db: Database, fake: FakeEvolution, faulty: FaultyEvolution, client: EvolutionClient
) -> None:
    from tests.chips import given_chip

    manager = InstanceManager(db, client, HOOK)
    assert (await manager.criar_instancia("chip-a", "5511900000001"))["sucesso"]
    fake.instances["chip-a"].state = "open"  # the chip still says connecting
    gone = await given_chip(db, "chip-b", "warming", "open")  # Evolution has no chip-b
    faulty.fault = Fault("5xx", "/instance/connectionState/chip-a")

    report = await _reconciler(db, client).run()

    assert [(f.kind, f.instance_name, f.action) for f in report.findings] == [
        ("error", "chip-a", "left alone"),
        ("instance_missing", "chip-b", "deleted"),
    ]
    assert (await chip_named(db, "chip-b")).status == "deleted"
    rows = await transitions(db, gone.id)
    assert (rows[-1].source, rows[-1].meta["reason"]) == (
        "reconcile", "the instance is missing from Evolution",
    )  # fmt: skip
    again = await _reconciler(db, client).run()  # the next pass takes chip-a up again
    assert [(f.kind, f.instance_name) for f in again.findings] == [("state_differs", "chip-a")]


async def test_an_instance_made_again_under_the_chips_name_is_not_the_chips(
    db: Database, fake: FakeEvolution, client: EvolutionClient
) -> None:
    manager = InstanceManager(db, client, HOOK)
    await _open_chip(manager, fake)
    chip = await chip_named(db, NAME)
    del fake.instances[NAME]  # removed, and its remove.instance webhook lost
    _created_elsewhere(fake, NAME, "http://someone-else.test/hook")

    first = await _reconciler(db, client).run()
    second = await _reconciler(db, client).run()

    assert [(f.kind, f.action) for f in first.findings] == [("instance_replaced", "deleted")]
    rows = [row for row in await transitions(db, chip.id) if row.trigger == "removed"]
    assert [(row.source, row.to_status) for row in rows] == [("reconcile", "deleted")]
    assert chip.evolution_instance_id in rows[0].meta["reason"]
    # Then the new instance is judged as any instance without a live chip (adopted here).
    assert [(f.kind, f.action) for f in second.findings] == [("orphan_instance", "adopted")]
    adopted = await chip_named(db, NAME)
    assert adopted.evolution_instance_id == fake.instances[NAME].instance_id
    assert fake.instances[NAME].webhook_url == HOOK.url, "pointed at evochips, as create does"


async def test_a_pass_makes_at_most_max_actions_corrections_and_the_next_goes_on(
    db: Database, client: EvolutionClient
) -> None:
    from tests.chips import given_chip

    for n in range(3):  # Evolution has none of them
        await given_chip(db, f"gone-{n}", "warming", "open")
    reconciler = _reconciler(db, client, max_actions=2)

    first = await reconciler.run()
    second = await reconciler.run()

    assert [f.action for f in first.findings] == ["deleted", "deleted"]
    assert first.deferred == 1
    assert [f.action for f in second.findings] == ["deleted"]
    assert second.deferred == 0
    assert {chip.status for chip in [await chip_named(db, f"gone-{n}") for n in range(3)]} == {
        "deleted"
    }
    await _corrections_are_audited(db, [first, second])
