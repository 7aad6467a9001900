"""The Starlette app that receives Evolution's webhooks and answers health checks.

Status codes are chosen for Evolution's retry policy (reference section 3.5): it retries
timeouts and 5xx but drops an event for good on 400, 401, 403, 404 and 422. So only a body
that can never succeed gets a 4xx; anything that may succeed later gets 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import literal, select
from sqlalchemy.exc import IntegrityError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from evochips import jsonio
from evochips.api.errors import ApiError
from evochips.api.responses import error_response
from evochips.db import Base, Database, DatabaseUnavailable
from evochips.evolution.events import HANDLED_EVENTS, UNNAMED, read_event, skimmed_event
from evochips.evolution.shapes import INSTANCE_TAG_HEADER
from evochips.inbox import Outcome, record_webhook
from evochips.lifecycle import ConcurrentChange
from evochips.receiver.auth import is_authentic
from evochips.receiver.body import BodyTooLarge, Skimmed, read_delivery

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
# Evolution's bodies nest a dozen levels at most; far deeper JSON is not from Evolution.
MAX_JSON_DEPTH = 64
RETRY_AFTER_SECONDS = "5"


def create_app(
    db: Database,
    webhook_secret: str,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    api: Sequence[BaseRoute] = (),
    background: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> Starlette:
    """The receiver's routes, plus ``api`` (see ``evochips.api``) when given, and a
    ``background`` job that runs while the app serves."""

    async def receive(request: Request) -> Response:
        if not is_authentic(request, webhook_secret):
            # Evolution never retries a 401, so each of these is an event lost for good.
            logger.warning(
                "webhook refused: missing or wrong secret (%s %s from %s)",
                request.method, _loggable(request.url.path),
                request.client.host if request.client else "?",
            )  # fmt: skip
            return _error(401, "missing or wrong webhook secret")
        try:
            delivery = await read_delivery(
                request, max_body_bytes, request.path_params.get("suffix")
            )
        except BodyTooLarge:
            return _error(413, f"body larger than {max_body_bytes} bytes")
        if isinstance(delivery, Skimmed):
            event = skimmed_event(delivery.event, delivery.instance, delivery.digest)
        else:
            try:
                body = jsonio.loads(delivery)
            except (ValueError, RecursionError):
                logger.warning("webhook body is not JSON (%d bytes)", len(delivery))
                return _error(400, "body is not JSON")
            if _deeper_than(body, MAX_JSON_DEPTH):
                return _error(400, f"body nests deeper than {MAX_JSON_DEPTH} levels")
            event = read_event(body, request.path_params.get("suffix"), (webhook_secret,))
        event = replace(event, tag=_instance_tag(request))
        if event.event not in HANDLED_EVENTS and event.event != UNNAMED:
            # Messages and the like: not evochips' business, and often thousands a second
            # when a user subscribed this URL to them, so not worth a write each.
            return JSONResponse({"outcome": Outcome.IGNORED.value, "event": event.event,
                                 "detail": "an event evochips does not handle"})  # fmt: skip

        try:
            result = await record_webhook(db, event)
        except DatabaseUnavailable as exc:
            logger.warning("webhook %s for %r not stored: %s", event.event, event.instance, exc)
            return _error(503, "database unavailable, retry later", retry=True)
        except (ConcurrentChange, IntegrityError) as exc:
            logger.error("webhook %s for %r lost a race: %s", event.event, event.instance, exc)
            return _error(503, "concurrent change, retry later", retry=True)
        status = 202 if result.outcome is Outcome.UNMATCHED else 200
        payload: dict[str, Any] = {"outcome": result.outcome.value, "event": event.event}
        if result.detail:
            payload["detail"] = result.detail
        return JSONResponse(payload, status_code=status)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            async with db.read() as session:
                # Every table, not one: a half-migrated or damaged schema is not ready.
                for table in Base.metadata.sorted_tables:
                    await session.execute(select(literal(1)).select_from(table).limit(1))
        except DatabaseUnavailable as exc:
            return _error(503, str(exc), retry=True)
        return JSONResponse({"status": "ready"})

    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unexpected error on %s %s", request.method, _loggable(request.url.path))
        if _is_api(request):
            return error_response(ApiError("internal", "internal error"))
        return _error(500, "internal error", retry=True)

    async def gone(request: Request, exc: Exception) -> Response:
        # Nothing was applied (a body is read whole before anything is written), and
        # nobody is left to answer; the sender retries or it does not.
        logger.info("client went away mid-request on %s %s", request.method,
                    _loggable(request.url.path))  # fmt: skip
        return Response(status_code=400)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if not _is_api(request):
            return _error(exc.status_code, exc.detail)
        code = "method_not_allowed" if exc.status_code == 405 else "not_found"
        response = error_response(
            ApiError(code, f"{request.method} {request.url.path}: {exc.detail}")
        )
        response.status_code = exc.status_code
        response.headers.update(exc.headers or {})
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        job = asyncio.create_task(background()) if background is not None else None
        yield
        if job is not None:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
        if on_shutdown is not None:
            await on_shutdown()

    base = "/webhooks/evolution"
    return Starlette(
        routes=[
            Route(base, receive, methods=["POST"]),
            Route(base + "/k/{secret}", receive, methods=["POST"]),
            Route(base + "/k/{secret}/{suffix:path}", receive, methods=["POST"]),
            # "Webhook by events" appends the event name, e.g. /connection-update.
            Route(base + "/{suffix:path}", receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *api,
        ],
        exception_handlers={
            Exception: unexpected,
            HTTPException: http_error,
            ClientDisconnect: gone,
        },
        lifespan=lifespan,
    )


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (checked level by level,
    without recursion, so a hostile body cannot exhaust the stack)."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]
    return False


_TAG = re.compile(r"[0-9a-f]{32}")


def _instance_tag(request: Request) -> str | None:
    """The sending instance's tag; one not shaped like the tags evochips draws is none."""
    tag = request.headers.get(INSTANCE_TAG_HEADER, "")
    return tag if _TAG.fullmatch(tag) else None


def _loggable(path: str) -> str:
    """The path with the secret of ``/k/<secret>`` replaced."""
    return re.sub(r"(/webhooks/evolution/k/)[^/]*", r"\1[secret]", path)


def _error(status: int, message: str, *, retry: bool = False) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if retry else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)
