"""A canary: deliveries and commands carrying every kind of secret, with every secret
set, and none of them may appear in logs, stored bodies or history metadata."""

from __future__ import annotations

import logging

import httpx
import pytest
from sqlalchemy import select

from evochips.db import ChipTransition, Database, WebhookEventRow
from evochips.evolution.client import EvolutionClient
from evochips.evolution.events import redact
from evochips.evolution.shapes import WebhookTarget
from evochips.manager import InstanceManager
from evochips.receiver.auth import TOKEN_HEADER
from tests.chips import given_chip
from tests.conftest import SAMPLES, SECRET, load_json
from tests.fake_evolution import GLOBAL_KEY, FakeEvolution

INSTANCE_TOKEN = "CANARY-INSTANCE-TOKEN-7f3a9c"
QR_CODE = "2@CANARY-QR-REF-55aa,CANARYKEY1=,CANARYKEY2=,CANARYKEY3="
QR_IMAGE = "data:image/png;base64,CANARYIMAGEiVBORw0KGgo="
PAIRING = "CANARY77"


async def test_no_secret_reaches_logs_bodies_or_metadata(
    db: Database, receiver: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await given_chip(db, "chip-0002", "pending", "close")
    qr = load_json(SAMPLES / "v2-webhook-qrcode-updated-pairing-code.json")
    qr["apikey"] = INSTANCE_TOKEN
    # v1 and the global webhook carry the secret in the URL, which Evolution echoes back.
    qr["destination"] = f"https://chips.example.com/webhooks/evolution/k/{SECRET}/qrcode-updated"
    qr["data"]["qrcode"] |= {"code": QR_CODE, "base64": QR_IMAGE, "pairingCode": PAIRING}
    opened = load_json(SAMPLES / "v2-webhook-connection-update-open.json")
    # A URL with credentials in it, in any field, is stored without them.
    opened |= {"instance": "chip-0002", "apikey": INSTANCE_TOKEN,
               "server_url": f"http://evolution:{SECRET}@evolution.internal:8080"}  # fmt: skip
    opened["data"]["instance"] = "chip-0002"
    # The webhook secret anywhere else, and keys in query strings, are blanked out too.
    opened["data"]["copied"] = f"a relay pasted {SECRET} here"
    opened["destination"] = f"https://relay.example.com/in?apikey={INSTANCE_TOKEN}&x=1"

    await receiver.post("/webhooks/evolution", json=qr)
    await receiver.post(f"/webhooks/evolution/k/{SECRET}/qrcode-updated", json=qr, headers={})
    await receiver.post("/webhooks/evolution", json=opened)
    await receiver.post(f"/webhooks/evolution/k/{SECRET}", content=b"{not json", headers={})
    await receiver.post("/webhooks/evolution/k/wrong-secret-value-000000000000000", json=qr)

    evolution = FakeEvolution()
    client = EvolutionClient("http://evolution.test", GLOBAL_KEY, transport=evolution.transport())
    hook = WebhookTarget("http://evochips.test/webhooks/evolution", {TOKEN_HEADER: SECRET})
    manager = InstanceManager(db, client, hook)
    created = await manager.criar_instancia("chip-0003", "5511900000003")
    await manager.obter_qr_code("chip-0003")
    await manager.aclose()
    issued = evolution.instances["chip-0003"]
    shown_qr = created["qr_code"]

    async with db.read() as session:
        bodies = [str(b) for b in await session.scalars(select(WebhookEventRow.body))]
        metas = [str(m) for m in await session.scalars(select(ChipTransition.meta))]
    secrets = [SECRET, GLOBAL_KEY, INSTANCE_TOKEN, QR_CODE, QR_IMAGE, PAIRING, issued.token,
               shown_qr]  # fmt: skip
    # httpx's own lines are this test's client calling the receiver, /k/<secret> included;
    # evochips sets that logger to WARNING when it runs (and its Evolution URLs hold none).
    logs = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records if r.name != "httpx"
    )
    for place, text in [("logs", logs), *(("body", b) for b in bodies),
                        *(("metadata", m) for m in metas)]:  # fmt: skip
        for secret in secrets:
            assert secret not in text, f"a secret reached the {place}"
    # Two bodies: the QR's second delivery is a copy, counted on the first one's row.
    assert len(bodies) == 2 and len(metas) >= 3, "the canary must have stored something"


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("http://u:p@host/x", "http://[redacted]@host/x"),
        ("https://h/in?apikey=K1&x=1#f", "https://h/in?apikey=[redacted]&x=1#f"),
        ("mail me@example.com", "mail me@example.com"),
        (f"pasted {SECRET} here", "pasted [redacted] here"),
    ],
)
def test_stored_text_loses_credentials_and_the_given_secrets(text: str, stored: str) -> None:
    assert redact({"field": text}, (SECRET, "")) == {"field": stored}
