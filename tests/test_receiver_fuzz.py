"""Whatever arrives, the receiver answers only 2xx, 400, 401, 413 or 503, and every
chip's history stays whole. Hypothesis writes the deliveries, and how each proves (or
fails to prove) that it comes from Evolution.

Where the answer is certain it is checked exactly: without the secret, 401; with it, a
body of an event evochips handles that is over the limit, 413. Neither writes anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from evochips.db import Chip, ChipTransition, Database, WebhookEventRow
from evochips.receiver import create_app
from evochips.receiver.auth import TOKEN_HEADER
from tests.chips import given_chip
from tests.conftest import SECRET
from tests.helpers import assert_history_consistent

ALLOWED = {200, 202, 400, 401, 413, 503}
# Small, so that bodies over it are cheap to make; the fuzzed bodies stay under it.
MAX_BODY_BYTES = 2048
EVENTS = ["connection.update", "qrcode.updated", "logout.instance", "remove.instance",
          "status.instance", "CONNECTION_UPDATE", "messages.upsert", ""]  # fmt: skip
HANDLED = ["connection.update", "qrcode.updated", "logout.instance", "CONNECTION_UPDATE"]
STATES = ["open", "close", "connecting", "refused", "", None]
# Suffixes that name no event evochips skips unread, so the body decides.
PLAIN_SUFFIXES = ["", "/connection-update"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12,
)  # fmt: skip
envelopes = st.fixed_dictionaries(
    {
        "event": st.sampled_from(EVENTS) | st.text(max_size=12),
        "instance": st.sampled_from(["chip-0001", "chip-0002", ""]) | json_values,
        "data": st.one_of(
            json_values,
            st.fixed_dictionaries({
                "state": st.sampled_from(STATES),
                "statusReason": st.sampled_from([200, 401, 403, 428, "401", -1, 10**12]),
                "wuid": st.text(max_size=30),
            }),
            st.fixed_dictionaries({"qrcode": st.fixed_dictionaries({
                "code": st.text(max_size=30), "base64": st.text(max_size=30),
                "pairingCode": st.text(max_size=40),
            })}),
        ),
        "date_time": st.one_of(st.none(), st.text(max_size=30), st.datetimes().map(
            lambda d: d.isoformat() + "Z")),
    }
)  # fmt: skip
bodies = st.one_of(
    envelopes.map(lambda body: json.dumps(body).encode()),
    json_values.map(lambda body: json.dumps(body).encode()),
    st.binary(max_size=300),
)


def _oversized(event: str, instance: str, size: int) -> bytes:
    """A body of an event evochips handles (named first, as Evolution does), too large."""
    body = {"event": event, "instance": instance, "data": {"state": "open"}, "pad": "x" * size}
    return json.dumps(body).encode()


oversized = st.builds(
    _oversized,
    st.sampled_from(HANDLED),
    st.sampled_from(["chip-0001", "chip-0002"]),
    st.integers(MAX_BODY_BYTES, 3 * MAX_BODY_BYTES),
)

# How a delivery proves itself: ("header" | "path" | "jwt" | "bearer", a secret) or
# ("none", None). With the webhook secret it is authentic; with any other text it is not.
tokens = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.",
    min_size=1,
    max_size=48,
)


def _proof(roll: int, how: str, how_forged: str, forged: str) -> tuple[str, str | None]:
    """Seven times in ten the webhook secret, twice another token, once nothing."""
    if roll < 7:
        return how, SECRET
    return (how_forged, forged) if roll < 9 else ("none", None)


# Drawn with a token always, so that authentic deliveries are not too few: Hypothesis
# avoids repeating itself, and the secret alone would be only three distinct choices.
credentials = st.builds(
    _proof, st.integers(0, 9), st.sampled_from(["header", "path", "jwt"]),
    st.sampled_from(["header", "path", "jwt", "bearer"]), tokens,
)  # fmt: skip
Credentials = tuple[str, str | None]
Delivery = tuple[bytes, str, Credentials]
# One body in five over the limit (drawn alongside, for the reason credentials are).
some_bodies = st.builds(lambda small, large, roll: large if roll == 3 else small,
                        bodies, oversized, st.integers(0, 4))  # fmt: skip
deliveries = st.tuples(some_bodies, st.sampled_from([*PLAIN_SUFFIXES, "/x/y"]), credentials)

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
OPEN = json.dumps({"event": "connection.update", "instance": "chip-0001",
                   "data": {"state": "open", "statusReason": 200}}).encode()  # fmt: skip


@pytest.fixture
async def fuzz_receiver(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """The receiver with a small body limit, and no credentials sent unless asked."""
    app = create_app(db, SECRET, max_body_bytes=MAX_BODY_BYTES)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver.test") as client:
        yield client


@FUZZ
@given(batch=st.lists(deliveries, max_size=6))
@example(batch=[(OPEN, "", ("none", None)), (OPEN, "", ("header", "wrong-secret"))])
@example(batch=[(_oversized("connection.update", "chip-0001", 4096), "", ("header", SECRET))])
@example(batch=[(OPEN, "/connection-update", ("jwt", SECRET)), (OPEN, "", ("path", "x"))])
async def test_any_delivery_gets_an_allowed_answer_and_histories_stay_whole(
    db: Database, fuzz_receiver: httpx.AsyncClient, batch: list[Delivery]
) -> None:
    await _chips(db)
    for content, suffix, (how, secret) in batch:
        before = await _footprint(db)
        path, headers = _credentials(how, secret, suffix)
        response = await fuzz_receiver.post(path, content=content, headers=headers)
        status = response.status_code
        assert status in ALLOWED, (status, content[:200])
        assert "Traceback" not in response.text
        if secret != SECRET:
            assert status == 401, (how, status)
        elif len(content) > MAX_BODY_BYTES and suffix in PLAIN_SUFFIXES:
            assert status == 413, (suffix, status, content[:80])
        else:
            assert status != 401, (how, status)
        if status in (401, 413):
            assert await _footprint(db) == before, f"a {status} wrote something"
    async with db.read() as session:
        chip_ids = list(await session.scalars(select(Chip.id)))
    assert len(chip_ids) == 2
    for chip_id in chip_ids:
        await assert_history_consistent(db, chip_id)


def _credentials(how: str, secret: str | None, suffix: str) -> tuple[str, dict[str, str]]:
    """The path and headers a delivery goes with, proving itself as ``how`` says."""
    if how == "path":
        return f"/webhooks/evolution/k/{secret}{suffix}", {}
    path = f"/webhooks/evolution{suffix}"
    if how == "header" and secret is not None:
        return path, {TOKEN_HEADER: secret}
    if how == "jwt" and secret is not None:
        now = int(time.time())
        token = jwt.encode({"iat": now, "exp": now + 600}, secret.ljust(32, "."), "HS256")
        return path, {"authorization": f"Bearer {token}"}
    if how == "bearer" and secret is not None:
        return path, {"authorization": f"Bearer {secret}"}
    return path, {}


async def _chips(db: Database) -> None:
    """The chips deliveries may hit, made once per test database."""
    async with db.read() as session:
        if await session.scalar(select(func.count()).select_from(Chip)):
            return
    await given_chip(db, "chip-0001", "pending", "connecting")
    await given_chip(db, "chip-0002", "warming", "open", telefone="5511900000002")


async def _footprint(db: Database) -> tuple[Any, ...]:
    """What any stored delivery changes: rows, their counts, history, chip versions."""
    async with db.read() as session:
        events = (
            await session.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(WebhookEventRow.copies), 0),
                    func.coalesce(func.sum(WebhookEventRow.repeats), 0),
                )
            )
        ).one()
        history = await session.scalar(select(func.count()).select_from(ChipTransition))
        versions = await session.scalar(select(func.coalesce(func.sum(Chip.version), 0)))
    return (*events, history, versions)
