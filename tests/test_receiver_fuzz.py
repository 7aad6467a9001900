"""Whatever arrives, the receiver answers only 2xx, 400, 401, 413 or 503, and every
chip's history stays whole. Hypothesis writes the deliveries."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evochips.db import Database
from tests.chips import given_chip
from tests.helpers import assert_history_consistent

ALLOWED = {200, 202, 400, 401, 413, 503}
EVENTS = ["connection.update", "qrcode.updated", "logout.instance", "remove.instance",
          "status.instance", "CONNECTION_UPDATE", "messages.upsert", ""]  # fmt: skip
STATES = ["open", "close", "connecting", "refused", "", None]

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

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(deliveries=st.lists(st.tuples(bodies, st.sampled_from(["", "/connection-update",
                                                              "/x/y"])), max_size=6))  # fmt: skip
async def test_any_delivery_gets_an_allowed_answer_and_histories_stay_whole(
    db: Database, receiver: httpx.AsyncClient, deliveries: list[tuple[bytes, str]]
) -> None:
    chip = await _chip(db)
    for content, suffix in deliveries:
        response = await receiver.post(f"/webhooks/evolution{suffix}", content=content)
        assert response.status_code in ALLOWED, (response.status_code, content[:200])
        assert "Traceback" not in response.text
    await assert_history_consistent(db, chip.id)


async def _chip(db: Database) -> Any:
    """The chip the deliveries may hit, made once per test database."""
    from tests.helpers import chip_named

    try:
        return await chip_named(db, "chip-0001")
    except AssertionError:
        return await given_chip(db, "chip-0001", "pending", "connecting")
