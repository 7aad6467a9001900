"""The database: one engine per process, short write transactions, honest failures.

SQLite is the embedded default and PostgreSQL the production backend; both get the same
guarantee that two writers for one chip never interleave. On PostgreSQL that comes from
``SELECT ... FOR UPDATE`` on the chip row. SQLite ignores ``FOR UPDATE``, so every write
transaction starts with ``BEGIN IMMEDIATE`` (the database-wide write lock, which also
covers other processes such as the CLI) and, inside one process, waits its turn on an
``asyncio.Lock`` instead of spinning in SQLite's busy handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

DEFAULT_URL = "sqlite+aiosqlite:///./evochips.db"
# aiosqlite's DEBUG lines print every statement's parameters, QR codes included.
logging.getLogger("aiosqlite").setLevel(logging.INFO)
# How long a writer waits for its turn in this process, and then for SQLite's lock (held
# by another process, say the CLI), before the request is answered 503: 10 s in all, well
# under Evolution's 30 s webhook timeout, so it retries instead of timing out.
SQLITE_WRITE_WAIT_SECONDS = 5
# How long a PostgreSQL statement waits for a row another transaction holds before the
# request is answered 503 (a long reconciliation step, a stuck session).
LOCK_WAIT_SECONDS = 5
# PostgreSQL errors that mean "not reachable or not ready", not "this request is wrong":
# connection failures (class 08), no such database, bad credentials, no such table (the
# schema is not migrated), too many connections, a server starting or stopping, a lock
# or statement timeout (a row held by a stuck session: worth retrying later), a database
# that takes no connections, one that is read-only (a standby after a failover), and a
# role without the privileges it needs. An operator can mend each of them, and Evolution
# drops an event for good on a 4xx.
_UNAVAILABLE_SQLSTATES = ("08", "3D000", "28000", "28P01", "42P01", "53300", "57P", "55P03",
                          "57014", "55000", "25006", "42501")  # fmt: skip


class DatabaseUnavailable(Exception):
    """The database could not be reached or did not answer in time; try again later."""


class Database:
    def __init__(self, url: str | URL = DEFAULT_URL) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        # hide_parameters: a failed statement's error must not carry QR codes into logs.
        self.engine: AsyncEngine = create_async_engine(
            self.url, hide_parameters=True, **self._engine_options()
        )
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self._writers = asyncio.Lock() if self.is_sqlite else None
        self._write_sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(
            self.engine.execution_options(evochips_read_only=True), expire_on_commit=False
        )

    def _engine_options(self) -> dict[str, Any]:
        if self.is_sqlite:
            return {"connect_args": {"timeout": SQLITE_WRITE_WAIT_SECONDS}}
        return {
            "pool_pre_ping": True,
            "pool_timeout": 10,
            # asyncpg: give up connecting after 5 s and on any statement after 15 s, so a
            # stuck database turns into DatabaseUnavailable instead of a hung request; and
            # stop waiting for a row lock after 5 s, so that requests queued behind one
            # locked chip give their pool connections back to everyone else's.
            "connect_args": {
                "timeout": 5,
                "command_timeout": 15,
                "server_settings": {"lock_timeout": f"{LOCK_WAIT_SECONDS * 1000}"},
            },
        }

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction; commits on success, rolls back on any exception."""
        async with (
            self._writer_turn(),
            _unavailable_on_failure(),
            self._write_sessions() as session,
        ):
            async with session.begin():
                yield session
            for log, message, args in session.info.pop(_COMMITTED_LOGS, []):
                log.info(message, *args)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        if self.is_sqlite:
            self._check_sqlite_file()
        async with _unavailable_on_failure(), self._read_sessions() as session:
            yield session

    async def ping(self) -> None:
        """Raise DatabaseUnavailable unless a trivial query answers."""
        async with self.read() as session:
            await session.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def _writer_turn(self) -> AsyncIterator[None]:
        if self._writers is None:
            yield
            return
        self._check_sqlite_file()
        try:
            async with asyncio.timeout(SQLITE_WRITE_WAIT_SECONDS):
                await self._writers.acquire()
        except TimeoutError as exc:
            raise DatabaseUnavailable("the database is busy; no write turn in time") from exc
        try:
            yield
        finally:
            self._writers.release()

    def _check_sqlite_file(self) -> None:
        """SQLite would create a missing file (and a file deleted under a running service
        would swallow writes without a trace), so its absence is said first."""
        path = self.url.database
        if path and path != ":memory:" and not os.path.exists(path):
            # A service still running holds the deleted file open, and would go on writing
            # there, beside a new one, if it were made under it.
            raise DatabaseUnavailable(
                f"no database at {path}; stop any running evochips first, then run "
                "`evochips migrate` (or put the file back)"
            )


@contextlib.asynccontextmanager
async def _unavailable_on_failure() -> AsyncIterator[None]:
    """Translate "the database is not there" into DatabaseUnavailable, in one place."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseUnavailable(_describe(exc)) from exc
    except DBAPIError as exc:
        if not _says_unavailable(exc):
            raise
        raise DatabaseUnavailable(_describe(exc)) from exc
    except PoolTimeout as exc:
        raise DatabaseUnavailable("no free database connection in time") from exc
    except (OSError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"database unreachable ({type(exc).__name__})") from exc


_COMMITTED_LOGS = "evochips.logs_after_commit"


def log_after_commit(session: AsyncSession, log: logging.Logger, message: str, *args: Any) -> None:
    """Log ``message`` once the session's transaction has committed, and not at all if it
    rolls back: a log line must not say "applied" for a change the database refused."""
    session.info.setdefault(_COMMITTED_LOGS, []).append((log, message, args))


def _sqlstate(exc: DBAPIError) -> str:
    return str(getattr(exc.orig, "sqlstate", None) or "")


_SQLSTATE_MEANINGS = {
    "3D000": "the database does not exist",
    "28000": "the database refused the credentials",
    "28P01": "the database refused the credentials",
    "53300": "the database has no free connections",
    "55P03": "a row stayed locked past the lock timeout",
    "57014": "a statement ran past the statement timeout",
    "55000": "the database takes no connections",
    "25006": "the database is read-only",
    "42501": "the database role lacks a privilege",
}


def _says_unavailable(exc: DBAPIError) -> bool:
    """Whether an error is about the database's state (gone, read-only, not a database),
    not about the statement that met it."""
    return (
        exc.connection_invalidated
        or _sqlstate(exc).startswith(_UNAVAILABLE_SQLSTATES)
        or _sqlite_error(exc) in _SQLITE_FILE_ERRORS
    )


def _sqlite_error(exc: DBAPIError) -> str:
    return str(getattr(exc.orig, "sqlite_errorname", None) or "")


# What SQLite says of a file it cannot use as a database: not a fault of the request, and
# put right by an operator, so 503 like a server that is down.
_SQLITE_FILE_ERRORS = {
    "SQLITE_NOTADB": "the database file is not an SQLite database",
    "SQLITE_CORRUPT": "the database file is corrupt",
}


def _describe(exc: DBAPIError) -> str:
    if _sqlstate(exc) == "42P01" or "no such table" in str(exc.orig):
        return "database schema missing: run `evochips migrate`"
    if _sqlstate(exc) in _SQLSTATE_MEANINGS:
        return f"database unavailable: {_SQLSTATE_MEANINGS[_sqlstate(exc)]}"
    if _sqlite_error(exc) in _SQLITE_FILE_ERRORS:
        return f"database unavailable: {_SQLITE_FILE_ERRORS[_sqlite_error(exc)]}"
    original = exc.orig if exc.orig is not None else exc
    return f"database unavailable ({type(original).__name__})"


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us emit BEGIN ourselves; the driver's implicit BEGIN is deferred.
        dbapi_connection.isolation_level = None
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
        except Exception:
            # A file that is not a database fails here; the pool does not close a
            # connection whose connect hook failed, and its thread would outlive the loop.
            dbapi_connection.close()
            raise

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get("evochips_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
