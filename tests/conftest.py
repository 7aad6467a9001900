"""Fixtures shared by the suite: a migrated database on SQLite and on PostgreSQL, the
receiver app over HTTP, and the shared Evolution reference material.

PostgreSQL tests run against the server named by EVOCHIPS_TEST_POSTGRES_URL (default: the
local server, trust auth). Each test session creates its own database and drops it after.
Without a server they are skipped, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from evochips.db import Base, Database
from evochips.db.migrate import upgrade
from evochips.receiver import create_app

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLES = SHARED / "evolution-samples"
LIVE = SHARED / "evolution-live"
FIELD_CASES = SHARED / "field-cases"

SECRET = "test-webhook-secret-0123456789abcdef"
AUTH = {"x-evochips-token": SECRET}
POSTGRES_ADMIN_URL = os.environ.get(
    "EVOCHIPS_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# Every table the models define, so a new one cannot carry rows from test to test.
_TRUNCATE = f"TRUNCATE {', '.join(Base.metadata.tables)} RESTART IDENTITY CASCADE"


async def _admin(sql: str, url: str = POSTGRES_ADMIN_URL) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "evochips.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name = f"evochips_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable ({exc}); set EVOCHIPS_TEST_POSTGRES_URL")
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a migrated database on each backend (resolved outside the event loop,
    because migrations run their own)."""
    if request.param == "sqlite":
        path = tmp_path / "evochips.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    asyncio.run(_admin(_TRUNCATE, url))
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated, empty database on each backend."""
    database = Database(database_url)
    yield database
    await database.dispose()


@pytest.fixture
async def receiver(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the receiver app, authenticated with the webhook secret."""
    app = create_app(db, SECRET)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://receiver.test", headers=AUTH
    ) as client:
        yield client
