"""``Idempotency-Key``: a retried request gets the first one's answer, not a second effect.

The first request with a key claims it (a row with no answer yet), runs, and stores its
answer. A retry with the same key and body gets that answer back; with another body it is
refused; while the first is still running it is told to retry. An answer that says to try
again later (5xx) is not kept, so the retry runs for real. A claim left by a process that
died mid-request is taken over after ``ABANDONED_AFTER``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from evochips.api.errors import ApiError
from evochips.db import Database, IdempotencyKey
from evochips.db.models import utcnow

ABANDONED_AFTER = timedelta(minutes=2)
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: dict[str, Any]


def check_key(key: str) -> None:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise ApiError(
            "validation",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            {"Idempotency-Key": "1 to 255 printable ASCII characters"},
        )


def fingerprint(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def claim(db: Database, scope: str, key: str, request_hash: str) -> Answer | None:
    """Claim ``key`` for this request (None), or return the answer a request with this key
    already got; raises ApiError if the key is in use by another body or still running."""
    now = utcnow()
    async with db.write() as session:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        inserted = await session.execute(
            dialect.insert(IdempotencyKey)
            .values(scope=scope, key=key, request_hash=request_hash, created_at=now)
            .on_conflict_do_nothing()
            .returning(IdempotencyKey.key)
        )
        if inserted.scalar_one_or_none() is not None:
            return None
        row = (
            await session.execute(
                select(IdempotencyKey)
                .where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
                .with_for_update()
            )
        ).scalar_one()
        if row.request_hash != request_hash:
            raise ApiError(
                "idempotency_key_reused",
                "this Idempotency-Key was used before with a different request body",
            )
        if row.status_code is not None and row.response is not None:
            return Answer(row.status_code, row.response)
        if now - row.created_at < ABANDONED_AFTER:
            raise ApiError(
                "request_in_progress", "a request with this Idempotency-Key is still running"
            )
        await session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
            .values(created_at=now)
        )
        return None


async def settle(db: Database, scope: str, key: str, answer: Answer) -> None:
    """Keep the answer for retries, or let go of the key if the answer says retry."""
    where = (IdempotencyKey.scope == scope, IdempotencyKey.key == key)
    async with db.write() as session:
        if answer.status_code >= 500:
            await session.execute(delete(IdempotencyKey).where(*where))
        else:
            await session.execute(
                update(IdempotencyKey)
                .where(*where)
                .values(status_code=answer.status_code, response=answer.body)
            )
