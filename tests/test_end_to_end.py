"""The whole loop on real input: ``evochips serve`` up, Evolution faked on loopback with
the recorded responses of a real server, a chip created through InstanceManager, and
Evolution's webhook samples for it delivered in a realistic order."""

from __future__ import annotations

import json

import httpx
import pytest
import segno

from evochips import settings
from evochips.db import Database
from evochips.manager import InstanceManager
from tests.conftest import SAMPLES, SECRET, load_json
from tests.fake_evolution import GLOBAL_KEY, FakeEvolution
from tests.servers import evochips, free_port, serving_app, serving_evochips

ORDER = [
    "v2-webhook-connection-update-connecting",
    "v2-webhook-qrcode-updated",
    "v2-webhook-connection-update-open",
    "v2-webhook-connection-update-close-401",
    "v2-webhook-logout-instance",
]


@pytest.fixture
def environment(database_url: str) -> dict[str, str]:
    return {
        "EVOLUTION_API_URL": f"http://127.0.0.1:{free_port()}",
        "EVOLUTION_API_KEY": GLOBAL_KEY,
        "EVOCHIPS_DATABASE_URL": database_url,
        "EVOCHIPS_PUBLIC_URL": f"http://127.0.0.1:{free_port()}",
        "EVOCHIPS_WEBHOOK_SECRET": SECRET,
    }


async def test_chip_lifecycle_end_to_end(environment: dict[str, str]) -> None:
    config = settings.load(environment)
    evolution = FakeEvolution(qr_ready=False)  # offline, the real server never shows a QR
    evolution_port = int(config.evolution_api_url.rsplit(":", 1)[1])
    receiver_port = int(config.public_url.rsplit(":", 1)[1])

    with (
        serving_app(evolution.asgi(), evolution_port),
        serving_evochips(receiver_port, environment),
    ):
        db = Database(config.database_url)
        manager = InstanceManager.from_settings(config, db)
        try:
            created = await manager.criar_instancia("chip-0001", "5511900000001")
        finally:
            await manager.aclose()
            await db.dispose()
        assert created["sucesso"] is True, created["error"]
        hook = evolution.calls[-1][2]["webhook"]
        assert hook["url"] == f"{config.public_url}/webhooks/evolution"

        async with httpx.AsyncClient(base_url=config.public_url) as client:
            for sample in ORDER:
                response = await client.post(
                    "/webhooks/evolution", json=load_json(SAMPLES / f"{sample}.json"),
                    headers=hook["headers"],
                )  # fmt: skip
                assert response.status_code == 200, (sample, response.text)

    shown = evochips("chips", "history", "chip-0001", "--json", env=environment)
    assert shown.returncode == 0, shown.stderr
    history = [(row["trigger"], row["from_status"], row["to_status"], row["to_connection"])
               for row in json.loads(shown.stdout)]  # fmt: skip
    assert history == [
        ("registered", None, "pending", "close"),
        ("connecting", "pending", "pending", "connecting"),
        ("connected", "pending", "warming", "open"),
        ("logged_out", "warming", "pending", "close"),
    ]
    table = evochips("chips", "history", "chip-0001", env=environment)
    for trigger in ("registered", "connecting", "connected", "logged_out"):
        assert trigger in table.stdout
    chip = json.loads(evochips("chips", "show", "chip-0001", "--json", env=environment).stdout)
    assert (chip["status"], chip["connection_state"]) == ("pending", "close")
    assert chip["owner_jid"] == "5511900000001@s.whatsapp.net"


# How ``chips qr`` draws two rows of modules per line, light printed as block, so that
# the code shows dark on a dark terminal: (top dark, bottom dark) for each character.
_HALVES = {"█": (False, False), " ": (True, True), "▀": (False, True), "▄": (True, False)}


def _modules(drawn: str) -> list[str]:
    """The modules of a QR drawn in the terminal (``#`` dark), quiet zone removed."""
    rows: list[list[bool]] = []
    for line in drawn.splitlines():
        halves = [_HALVES[char] for char in line]
        rows += [[top for top, _ in halves], [bottom for _, bottom in halves]]
    rows = [row for row in rows if any(row) and not all(row)]  # not the margins
    left = min(row.index(True) for row in rows)
    right = max(len(row) - row[::-1].index(True) for row in rows)
    return ["".join("#" if dark else "." for dark in row[left:right]) for row in rows]


def test_chips_qr_draws_the_code_evolution_gave_so_a_phone_can_scan_it(
    environment: dict[str, str],
) -> None:
    config = settings.load(environment)
    evolution = FakeEvolution()
    port = int(config.evolution_api_url.rsplit(":", 1)[1])
    with serving_app(evolution.asgi(), port):
        created = evochips("chips", "create", "chip-0001", "5511900000001", "--json",
                           env=environment)  # fmt: skip
        assert created.returncode == 0, created.stderr
        drawn = evochips("chips", "qr", "chip-0001", env=environment)
        issued = evolution.instances["chip-0001"].qr_count  # the QR the fake showed last
    assert drawn.returncode == 0, drawn.stderr
    sample = load_json(SAMPLES / "v2-connect-qrcode.json")["code"]
    code = f"2@chip-0001-{issued}," + sample.split(",", 1)[1]
    matrix = segno.make_qr(code, error="l").matrix
    expected = ["".join("#" if module else "." for module in row) for row in matrix]
    assert "\n".join(_modules(drawn.stdout)) == "\n".join(expected)
