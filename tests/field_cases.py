"""Reading the shared field cases: each is a list of steps (see their README)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import FIELD_CASES, load_json


def steps_of(case: str) -> list[dict[str, Any]]:
    """The steps of field case ``case`` (e.g. ``"B01"``)."""
    (path,) = FIELD_CASES.glob(f"{case}-*.json")
    steps: list[dict[str, Any]] = load_json(path)
    return steps


async def deliver(receiver: httpx.AsyncClient, step: dict[str, Any]) -> httpx.Response:
    """POST a webhook step to the receiver as Evolution would (our secret header added)."""
    assert step["kind"] == "webhook"
    content = step["raw_body"].encode() if "raw_body" in step else json.dumps(step["body"]).encode()
    return await receiver.post(step["path"], content=content, headers=step.get("headers"))
