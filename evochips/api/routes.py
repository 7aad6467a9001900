"""The command and audit API under ``/api/v1``, for backends in other processes.

Every command goes through :class:`~evochips.manager.InstanceManager`, the same path as
the Python API and the CLI, so the state machine decides and the history records it the
same way whichever door a command came in by.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import io
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import segno
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from evochips.api import idempotency, params
from evochips.api.errors import ApiError, from_result, invalid
from evochips.api.openapi import document
from evochips.api.params import Problems
from evochips.api.responses import ApiJSONResponse, error_response, jsonable
from evochips.db import Chip, Database, DatabaseUnavailable, queries
from evochips.lifecycle import Source
from evochips.manager import CHIP_ID, INSTANCE_NAME, InstanceManager, InvalidInput, normalise_phone
from evochips.statemachine import (
    LIFECYCLE_TRIGGERS,
    ChipStatus,
    ConnectionState,
    Trigger,
    lifecycle_triggers_from,
)

logger = logging.getLogger(__name__)

PREFIX = "/api/v1"
CHIP_REF = re.compile(r"[A-Za-z0-9_-]{1,64}")
CREATE_SCOPE = "POST /api/v1/chips"
Handler = Callable[[Request], Awaitable[Response]]


def api_routes(
    db: Database, manager: InstanceManager | None, keys: tuple[str, ...]
) -> list[BaseRoute]:
    """The ``/api/v1`` routes. Without ``keys`` every request is refused (401); without a
    ``manager`` (a receiver-only app) the commands answer 503."""
    api = _Api(db, manager, keys)
    guarded = api.guarded
    chip = f"{PREFIX}/chips/{{chip}}"
    by_path: dict[str, dict[str, Handler]] = {
        f"{PREFIX}/openapi.json": {"GET": api.openapi},
        f"{PREFIX}/chips": {"POST": guarded(api.create_chip), "GET": guarded(api.list_chips)},
        chip: {"GET": guarded(api.show_chip), "DELETE": guarded(api.delete_chip)},
        f"{chip}/qrcode": {"GET": guarded(api.qrcode)},
        f"{chip}/connection-check": {"POST": guarded(api.connection_check)},
        f"{chip}/logout": {"POST": guarded(api.logout)},
        f"{chip}/reconnect": {"POST": guarded(api.reconnect)},
        f"{chip}/transitions": {"POST": guarded(api.transition), "GET": guarded(api.history)},
        f"{PREFIX}/transitions": {"GET": guarded(api.feed)},
    }
    return [_route(path, handlers) for path, handlers in by_path.items()]


def _route(path: str, handlers: dict[str, Handler]) -> Route:
    """One route per path, so that a 405 lists every method the path allows."""

    async def endpoint(request: Request) -> Response:
        # Starlette answers HEAD for every GET route; the body is dropped on the way out.
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return Route(path, endpoint, methods=list(handlers))


class _Api:
    def __init__(self, db: Database, manager: InstanceManager | None, keys: tuple[str, ...]):
        self._db = db
        self._manager = manager
        self._keys = tuple(key.encode() for key in keys)

    # -- plumbing --------------------------------------------------------------------------

    def guarded(self, handler: Handler) -> Handler:
        """Authenticate, then turn every expected failure into the one error shape."""

        @functools.wraps(handler)
        async def run(request: Request) -> Response:
            try:
                self._authenticate(request)
                return await handler(request)
            except ApiError as exc:
                return error_response(exc)
            except DatabaseUnavailable as exc:
                logger.warning("%s %s: %s", request.method, request.url.path, exc)
                return error_response(ApiError("database_unavailable", str(exc)))

        return run

    def _authenticate(self, request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        presented = given.strip().encode()
        # Every key is compared, in constant time, whichever matches.
        matches = [hmac.compare_digest(presented, key) for key in self._keys]
        if scheme.lower() != "bearer" or not presented or not any(matches):
            reason = "set EVOCHIPS_API_KEYS to enable the API" if not self._keys else (
                "send Authorization: Bearer <key> with a key from EVOCHIPS_API_KEYS"
            )  # fmt: skip
            raise ApiError("unauthorized", f"missing or wrong API key; {reason}")

    @property
    def manager(self) -> InstanceManager:
        if self._manager is None:
            raise ApiError("evolution_unavailable", "this process does not issue commands")
        return self._manager

    async def _chip(self, request: Request) -> Chip:
        ref = request.path_params["chip"]
        # Ids and instance names are made of these; anything else names no chip (and a
        # NUL would not even reach PostgreSQL).
        chip = await queries.find(self._db, ref) if CHIP_REF.fullmatch(ref) else None
        if chip is None:
            shown = ref if len(ref) <= 64 else ref[:64] + "..."
            raise ApiError("not_found", f"no chip with id or instance name {shown!r}")
        return chip

    async def _live_chip(self, request: Request) -> Chip:
        """The chip a command acts on: a deleted one is there, but takes no command."""
        chip = await self._chip(request)
        if chip.deleted_at is not None:
            raise ApiError(
                "invalid_transition",
                f"chip {chip.instance_name!r} is deleted (status 'deleted'); it takes no "
                "command until it is created again",
            )
        return chip

    async def _chip_body(self, chip_id: str) -> dict[str, Any]:
        chip = await queries.find(self._db, chip_id)
        if chip is None:  # deleted chips are kept, so only a wiped database gets here
            raise ApiError("not_found", f"chip {chip_id} is gone")
        return chip_body(chip)

    # -- routes ----------------------------------------------------------------------------

    async def openapi(self, request: Request) -> Response:
        return ApiJSONResponse(document())

    async def create_chip(self, request: Request) -> Response:
        body = await params.json_object(request)
        instance_name, telefone, chip_id = _creation(body)
        key = request.headers.get("idempotency-key")
        if key is None:
            answer = await self._create(instance_name, telefone, chip_id)
            return ApiJSONResponse(
                answer.body, status_code=answer.status_code, headers=_retry_headers(answer)
            )
        idempotency.check_key(key)
        request_hash = idempotency.fingerprint(body)
        earlier = await idempotency.claim(self._db, CREATE_SCOPE, key, request_hash)
        if earlier is not None:
            return ApiJSONResponse(
                earlier.body,
                status_code=earlier.status_code,
                headers={"Idempotent-Replayed": "true"},
            )
        try:
            answer = await self._create(instance_name, telefone, chip_id)
        except ApiError as exc:
            answer = idempotency.Answer(exc.status, exc.body())
        except BaseException:
            await idempotency.settle(self._db, CREATE_SCOPE, key, idempotency.Answer(500, {}))
            raise
        await idempotency.settle(self._db, CREATE_SCOPE, key, answer)
        return ApiJSONResponse(
            answer.body, status_code=answer.status_code, headers=_retry_headers(answer)
        )

    async def _create(
        self, instance_name: str, telefone: str, chip_id: str | None
    ) -> idempotency.Answer:
        result = await self.manager.criar_instancia(instance_name, telefone, chip_id)
        if not result["sucesso"]:
            exc = from_result(result)
            return idempotency.Answer(exc.status, exc.body())
        chip = await self._chip_body(result["chip_id"])
        body = jsonable({"chip": chip, "qr_code": result["qr_code"]})
        return idempotency.Answer(201, body)

    async def list_chips(self, request: Request) -> Response:
        problems = Problems()
        params.unknown_params(
            request, {"status", "connection_state", "connected", "limit", "cursor"}, problems
        )
        where = queries.ChipFilter(
            status=params.choice(request, "status", list(ChipStatus), problems),
            connection_state=params.choice(
                request, "connection_state", list(ConnectionState), problems
            ),
            connected=params.flag(request, "connected", problems),
        )
        limit = params.limit(request, problems)
        cursor = params.decode_cursor(request, (str, str), problems)
        after = None
        if cursor is not None:
            created_at = params.parse_time(cursor[0])
            if created_at is None:
                problems.add("cursor", "is not a cursor this list returned")
            else:
                after = (created_at, cursor[1])
        problems.raise_if_any()
        page = await queries.chips_page(self._db, where, after, limit)
        chips = [_with_triggers(row) for row in page.rows]
        next_cursor = None if page.last is None else params.encode_cursor(list(page.last))
        return _page_response(chips, next_cursor, page.has_more)

    async def show_chip(self, request: Request) -> Response:
        _no_params(request)
        return ApiJSONResponse(chip_body(await self._chip(request)))

    async def qrcode(self, request: Request) -> Response:
        _no_params(request)
        chip = await self._live_chip(request)
        result = _succeeded(await self.manager.obter_qr_code(chip.instance_name))
        answer = {key: result[key] for key in ("qr_code", "code", "connected")}
        if not params.wants_png(request.headers.get("accept", "")):
            return ApiJSONResponse(answer)
        png = _png(answer["qr_code"], answer["code"])
        if png is None:
            why = "is connected" if answer["connected"] else "has no QR yet; try again shortly"
            raise ApiError("qr_not_available", f"chip {chip.instance_name} {why}")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def connection_check(self, request: Request) -> Response:
        _no_params(request)
        chip = await self._live_chip(request)
        result = _succeeded(await self.manager.verificar_conexao(chip.instance_name))
        body = {"state": result["state"], "connected": result["connected"]}
        return ApiJSONResponse({**body, "chip": await self._chip_body(chip.id)})

    async def logout(self, request: Request) -> Response:
        _no_params(request)
        chip = await self._live_chip(request)
        result = _succeeded(await self.manager.desconectar_instancia(chip.instance_name, chip.id))
        return ApiJSONResponse(
            {"message": result["message"], "chip": await self._chip_body(chip.id)}
        )

    async def reconnect(self, request: Request) -> Response:
        _no_params(request)
        chip = await self._live_chip(request)
        result = _succeeded(await self.manager.reconectar_instancia(chip.instance_name, chip.id))
        return ApiJSONResponse({
            "message": result["message"],
            "qr_code": result["qr_code"],
            "chip": await self._chip_body(chip.id),
        })  # fmt: skip

    async def delete_chip(self, request: Request) -> Response:
        _no_params(request)
        chip = await self._chip(request)
        result = _succeeded(await self.manager.deletar_instancia(chip.instance_name, chip.id))
        return ApiJSONResponse(
            {"message": result["message"], "chip": await self._chip_body(chip.id)}
        )

    async def transition(self, request: Request) -> Response:
        _no_params(request)
        body = await params.json_object(request)
        trigger = body.get("trigger")
        allowed = [t.value for t in LIFECYCLE_TRIGGERS]
        problems = Problems()
        if trigger not in allowed:
            problems.add("trigger", f"must be one of {', '.join(allowed)}")
        expected = body.get("expected_version")
        if expected is not None and (type(expected) is not int or not 1 <= expected < 2**31):
            problems.add("expected_version", "must be a chip version, a positive integer")
        for name in body:
            if name not in ("trigger", "expected_version"):
                problems.add(name, "unknown field")
        problems.raise_if_any()
        chip = await self._live_chip(request)
        result = _succeeded(
            await self.manager.transicionar(
                chip.instance_name, str(trigger), expected_version=expected
            )
        )
        return ApiJSONResponse(
            {"message": result["message"], "chip": await self._chip_body(chip.id)}
        )

    async def history(self, request: Request) -> Response:
        problems = Problems()
        params.unknown_params(request, {"limit", "cursor"}, problems)
        limit = params.limit(request, problems)
        cursor = params.decode_cursor(request, (int,), problems)
        problems.raise_if_any()
        chip = await self._chip(request)
        after = cursor[0] if cursor else 0
        page = await queries.history_page(self._db, chip.id, after, limit)
        rows = [{"chip_id": chip.id, **row} for row in page.rows]
        return _page_response(rows, params.encode_cursor([page.last]), page.has_more)

    async def feed(self, request: Request) -> Response:
        problems = Problems()
        known = {"since", "until", "source", "trigger", "status", "limit", "cursor"}
        params.unknown_params(request, known, problems)
        where = queries.TransitionFilter(
            since=params.timestamp(request, "since", problems),
            until=params.timestamp(request, "until", problems),
            source=params.choice(request, "source", list(Source), problems),
            trigger=params.choice(request, "trigger", list(Trigger), problems),
            status=params.choice(request, "status", list(ChipStatus), problems),
        )
        limit = params.limit(request, problems)
        cursor = params.decode_cursor(request, (int,), problems)
        problems.raise_if_any()
        after = cursor[0] if cursor else 0
        page = await queries.transitions_page(self._db, where, after, limit)
        return _page_response(page.rows, params.encode_cursor([page.last]), page.has_more)


def chip_body(chip: Chip) -> dict[str, Any]:
    return _with_triggers(queries.chip_dict(chip))


def _with_triggers(chip: dict[str, Any]) -> dict[str, Any]:
    return {**chip, "allowed_triggers": lifecycle_triggers_from(ChipStatus(chip["status"]))}


def _creation(body: dict[str, Any]) -> tuple[str, str, str | None]:
    """The fields of a create request, every problem named at once."""
    problems = Problems()
    instance_name = body.get("instance_name")
    if not isinstance(instance_name, str) or not INSTANCE_NAME.fullmatch(instance_name):
        problems.add("instance_name", "required, 1 to 64 letters, digits, '-' or '_'")
    telefone = body.get("telefone")
    try:
        telefone = normalise_phone(telefone)  # type: ignore[arg-type]
    except InvalidInput:
        problems.add("telefone", "required, a phone number with 10 to 15 digits")
    chip_id = body.get("chip_id")
    if chip_id is not None and (not isinstance(chip_id, str) or not CHIP_ID.fullmatch(chip_id)):
        problems.add("chip_id", "1 to 36 letters, digits or '-'")
    for name in body:
        if name not in ("instance_name", "telefone", "chip_id"):
            problems.add(name, "unknown field")
    problems.raise_if_any()
    return instance_name, telefone, chip_id  # type: ignore[return-value]


def _succeeded(result: dict[str, Any]) -> dict[str, Any]:
    if not result["sucesso"]:
        raise from_result(result)
    return result


def _no_params(request: Request) -> None:
    if request.query_params:
        raise invalid({name: "unknown query parameter" for name in request.query_params})


def _page_response(items: list[dict[str, Any]], cursor: str | None, has_more: bool) -> Response:
    return ApiJSONResponse({"items": items, "next_cursor": cursor, "has_more": has_more})


def _retry_headers(answer: idempotency.Answer) -> dict[str, str]:
    code = answer.body.get("error", {}).get("code") if answer.status_code >= 400 else None
    return ApiError(code, "").headers() if code else {}


def _png(qr_code: str | None, code: str | None) -> bytes | None:
    """The QR as PNG bytes: Evolution's own image, or one drawn from its text."""
    if qr_code:
        _, _, data = qr_code.partition("base64,")
        try:
            image = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            image = b""
        if image.startswith(b"\x89PNG"):
            return image
    if code:
        buffer = io.BytesIO()
        segno.make_qr(code, error="l").save(buffer, kind="png", scale=6, border=4)
        return buffer.getvalue()
    return None
