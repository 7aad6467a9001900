"""Reference endpoints the benchmark measures evochips against, under the same uvicorn.

``BENCH_MODE`` picks one: ``parse`` reads and parses the JSON body and answers 200;
``asyncpg`` and ``aiosqlite`` also write one row in one transaction, as directly as
each driver allows, at the database in ``BENCH_DATABASE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MODE = os.environ.get("BENCH_MODE", "parse")
DATABASE = os.environ.get("BENCH_DATABASE", "")
TABLE = "CREATE TABLE IF NOT EXISTS bench_writes (id {key}, instance TEXT, body_size INTEGER)"
state: dict[str, Any] = {}


async def parse(request: Request) -> Response:
    body = json.loads(await request.body())
    return JSONResponse({"outcome": "ok", "event": body.get("event")})


async def asyncpg_write(request: Request) -> Response:
    body = json.loads(await request.body())
    async with state["pool"].acquire() as connection, connection.transaction():
        await connection.execute(
            "INSERT INTO bench_writes (instance, body_size) VALUES ($1, $2)",
            str(body.get("instance")), len(body),
        )  # fmt: skip
    return JSONResponse({"outcome": "ok"})


async def aiosqlite_write(request: Request) -> Response:
    body = json.loads(await request.body())
    async with state["lock"]:
        connection = state["sqlite"]
        await connection.execute("BEGIN IMMEDIATE")
        await connection.execute(
            "INSERT INTO bench_writes (instance, body_size) VALUES (?, ?)",
            (str(body.get("instance")), len(body)),
        )
        await connection.commit()
    return JSONResponse({"outcome": "ok"})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    if MODE == "asyncpg":
        import asyncpg

        state["pool"] = await asyncpg.create_pool(DATABASE, min_size=2, max_size=10)
        await state["pool"].execute(TABLE.format(key="BIGSERIAL PRIMARY KEY"))
    elif MODE == "aiosqlite":
        import aiosqlite

        connection = await aiosqlite.connect(DATABASE, isolation_level=None)
        await connection.execute("PRAGMA journal_mode=WAL")
        await connection.execute("PRAGMA synchronous=FULL")  # as evochips: durable
        await connection.execute("PRAGMA busy_timeout=5000")
        await connection.execute(TABLE.format(key="INTEGER PRIMARY KEY"))
        state["sqlite"], state["lock"] = connection, asyncio.Lock()
    yield
    if "pool" in state:
        await state["pool"].close()
    if "sqlite" in state:
        await state["sqlite"].close()


HANDLERS = {"parse": parse, "asyncpg": asyncpg_write, "aiosqlite": aiosqlite_write}
app = Starlette(
    routes=[Route("/webhooks/evolution", HANDLERS[MODE], methods=["POST"])], lifespan=lifespan
)
