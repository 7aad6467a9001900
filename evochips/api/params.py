"""Reading and checking what a request carries: query filters, cursors, JSON bodies.

Every check collects its problems by field, so a 400 names every bad field at once.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from evochips import jsonio
from evochips.api.errors import ApiError, invalid

MAX_BODY_BYTES = 64 * 1024
CURSOR_TEXT = re.compile(r"[A-Za-z0-9:.+_-]{1,64}")
DEFAULT_LIMIT, MAX_LIMIT = 50, 500


class Problems:
    """Bad fields found so far; :meth:`raise_if_any` turns them into one 400."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def add(self, name: str, problem: str) -> None:
        self.fields.setdefault(name, problem)

    def raise_if_any(self) -> None:
        if self.fields:
            raise invalid(self.fields)


def unknown_params(request: Request, known: set[str], problems: Problems) -> None:
    for name in request.query_params:
        if name not in known:
            problems.add(name, "unknown query parameter")
        elif len(request.query_params.getlist(name)) > 1:
            problems.add(name, "given more than once")


def choice(request: Request, name: str, allowed: list[str], problems: Problems) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if value not in allowed:
        problems.add(name, f"must be one of {', '.join(allowed)}")
        return None
    return value


def flag(request: Request, name: str, problems: Problems) -> bool | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        problems.add(name, "must be true or false")
        return None
    return value == "true"


def limit(request: Request, problems: Problems) -> int:
    value = request.query_params.get("limit")
    if value is None:
        return DEFAULT_LIMIT
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_LIMIT):
        problems.add("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
        return DEFAULT_LIMIT
    return int(value)


def timestamp(request: Request, name: str, problems: Problems) -> datetime | None:
    """An ISO 8601 time; one without an offset is taken as UTC."""
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        problems.add(name, "must be an ISO 8601 time, e.g. 2026-12-03T18:00:00Z")
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        problems.add(name, "is out of range")
        return None


def encode_cursor(key: list[Any]) -> str:
    text = json.dumps(key, separators=(",", ":"), default=_iso)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(
    request: Request, shape: tuple[type, ...], problems: Problems
) -> list[Any] | None:
    """The key a cursor carries, checked against ``shape`` (its items' types)."""
    value = request.query_params.get("cursor")
    if value is None:
        return None
    try:
        padded = value + "=" * (-len(value) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        key = None
    if not (
        isinstance(key, list)
        and len(key) == len(shape)
        and all(_fits(item, kind) for item, kind in zip(key, shape, strict=True))
    ):
        problems.add("cursor", "is not a cursor this list returned")
        return None
    return key


def _fits(item: Any, kind: type) -> bool:
    """A cursor item of the right type, and one the database can take: an id within a
    64-bit integer, a key of the characters chip ids and times are made of."""
    if kind is int:
        return type(item) is int and 0 <= item < 2**63
    return isinstance(item, str) and CURSOR_TEXT.fullmatch(item) is not None


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, read no further than ``MAX_BODY_BYTES``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError("body_too_large", f"body larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError("body_too_large", f"body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        body = jsonio.loads(b"".join(chunks) or b"{}", unique_keys=True)
    except jsonio.DuplicateKey as exc:
        raise invalid({"body": f"names {exc.key[:64]!r} twice"}) from None
    except (ValueError, RecursionError):
        raise invalid({"body": "is not JSON"}) from None
    if not isinstance(body, dict):
        raise invalid({"body": "must be a JSON object"})
    return body


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def parse_time(value: str) -> datetime | None:
    """A time a cursor carries (written by :func:`encode_cursor`)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def wants_png(accept: str) -> bool:
    """Whether an ``Accept`` header asks for the PNG itself: ``image/png`` named with a
    quality above zero and at least that of JSON (``application/json`` or a wildcard)."""
    png = json = 0.0
    for item in accept.split(","):
        kind, _, options = item.partition(";")
        kind = kind.strip().lower()
        quality = _quality(options)
        if kind == "image/png":
            png = max(png, quality)
        elif kind in ("application/json", "application/*", "*/*"):
            json = max(json, quality)
    return png > 0 and png >= json


def _quality(options: str) -> float:
    for option in options.split(";"):
        name, _, value = option.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                return 0.0
            return quality if 0 <= quality <= 1 else 0.0
    return 1.0
