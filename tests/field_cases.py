"""Reading the shared field cases: each is a list of steps (see their README)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import FIELD_CASES, load_json
from tests.helpers import json_response


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


def answer(step: dict[str, Any]) -> httpx.Response:
    """What Evolution answered in an ``evolution_response`` step (or the transport error
    it raised), as the client would receive it."""
    if "transport_error" in step:
        kind = step["transport_error"]["type"].removeprefix("httpx.")
        raise getattr(httpx, kind)(step["transport_error"].get("detail", kind))
    response = step["response"]
    body = response["body"]
    if isinstance(body, str):
        return httpx.Response(response["status"], text=body, headers=response["headers"])
    return json_response(response["status"], body)


def answering(*answers: dict[str, Any]) -> tuple[list[str], Any]:
    """A MockTransport handler answering each request with the next step, and the list
    of requests it saw."""
    queue = list(answers)
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        return answer(queue.pop(0))

    return calls, handler
