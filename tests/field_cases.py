"""Reading the shared field cases: each is a list of steps (see their README), and the
ways the tests look at a chip afterwards, as an operator would."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import httpx
from click.testing import CliRunner
from sqlalchemy import update

from evochips.api.routes import api_routes
from evochips.cli import cli
from evochips.db import ChipTransition, Database
from evochips.db.models import utcnow
from evochips.receiver import create_app
from tests.conftest import FIELD_CASES, SAMPLES, SECRET, load_json
from tests.helpers import json_response

API_KEY = "field-cases-api-key-0123456789"


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


def recording(*answers: dict[str, Any]) -> tuple[list[httpx.Request], Any]:
    """Like :func:`answering`, keeping each request whole (its body included)."""
    queue = list(answers)
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answer(queue.pop(0))

    return requests, handler


def routed(routes: dict[str, list[dict[str, Any]]]) -> tuple[list[str], Any]:
    """A handler that answers ``"METHOD /path"`` with the next of its steps, in order,
    and fails the test on a request it was not told about."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        call = f"{request.method} {request.url.path}"
        calls.append(call)
        queue = routes.get(call)
        assert queue, f"Evolution was not expected to be asked {call}"
        return answer(queue.pop(0))

    return calls, handler


def step(status: int, body: Any) -> dict[str, Any]:
    """An ``evolution_response`` step of our own, for a call the field case leaves out."""
    return {"kind": "evolution_response", "response": {"status": status, "body": body}}


def sample(name: str) -> Any:
    """A body from the Evolution reference samples (``evolution-samples/``)."""
    return load_json(SAMPLES / f"{name}.json")


def listed(name: str, state: str, instance_id: str, **fields: Any) -> dict[str, Any]:
    """One v2 fetchInstances row (reference section 2.8), from the sample's."""
    row = sample("v2-fetch-instances")[0]
    return {**row, "id": instance_id, "name": name, "connectionStatus": state,
            "ownerJid": None, "profileName": None, **fields}  # fmt: skip


async def age_history(db: Database, chip_id: str, by: timedelta) -> None:
    """Make the chip's history look as if its last change were ``by`` ago (the watchdog
    measures waiting on our clock, from the last history row)."""
    async with db.write() as session:
        await session.execute(
            update(ChipTransition)
            .where(ChipTransition.chip_id == chip_id)
            .values(created_at=utcnow() - by)
        )


async def via_api(db: Database, name: str) -> dict[str, Any]:
    """The chip as ``GET /api/v1/chips/{name}`` shows it."""
    app = create_app(db, SECRET, api=api_routes(db, None, (API_KEY,)))
    headers = {"authorization": f"Bearer {API_KEY}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://evochips.test") as client:
        response = await client.get(f"/api/v1/chips/{name}", headers=headers)
    assert response.status_code == 200, response.text
    chip: dict[str, Any] = response.json()
    return chip


async def via_cli(database_url: str, *args: str) -> str:
    """What ``evochips <args>`` prints, run in-process against the test database."""
    env = {"EVOCHIPS_DATABASE_URL": database_url}
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, list(args), env=env, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return str(result.output)


async def listed_by_cli(database_url: str, name: str) -> tuple[dict[str, Any], str]:
    """The chip's row in ``chips list --json``, and its line in the ``chips list`` table."""
    rows = json.loads(await via_cli(database_url, "chips", "list", "--json"))
    (row,) = [row for row in rows if row["instance_name"] == name]
    table = await via_cli(database_url, "chips", "list")
    (line,) = [line for line in table.splitlines() if line.startswith(f"{name} ")]
    return row, line
