"""The sandbox's HTTP face: Evolution API's instance and webhook routes, and control
routes under ``/_sandbox/`` that play the phone and the network.

Guards run in Evolution's order (reference section 1): the instance must exist (404, even
with a wrong key), a create's name must be free (403), and only then is ``apikey``
checked (401). Errors use Evolution's envelope with its three ``message`` forms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import unquote

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse as _StarletteJSON
from starlette.responses import Response
from starlette.routing import Route

from evochips.sandbox import storage
from evochips.sandbox.config import SandboxConfig
from evochips.sandbox.delivery import Deliverer
from evochips.sandbox.faults import Faults
from evochips.sandbox.shapes import (
    INTEGRATIONS,
    REASONS,
    Refusal,
    control_view,
    created_v1,
    created_v2,
    digits,
    fetched_v1,
    fetched_v2,
    state,
    webhook_answer,
    webhook_from_create,
    webhook_from_set,
)
from evochips.sandbox.world import Instance, World

Handler = Callable[[Request], Awaitable[Response]]


def error(status: int, message: Any, reason: str | None = None) -> JSONResponse:
    body = {"status": status, "error": reason or REASONS[status], "response": {"message": message}}
    return JSONResponse(body, status_code=status)


def route_name(request: Request) -> str | None:
    """The ``{name}`` of an instance route as Express reads it: routed on the raw path, so
    ``bad%2Fname`` names the instance "bad/name" while a literal slash, or an empty name,
    matches no route at all. Every instance route is ``/<a>/<b>/{name}``."""
    raw = request.scope.get("raw_path")
    if raw is None:  # an ASGI server that does not give it: trust the decoded path
        name: str = request.path_params["name"]
        return name if name and "/" not in name else None
    segments = raw.decode("utf-8", "replace").split("?", 1)[0].split("/")
    if len(segments) != 4 or not segments[3]:
        return None
    return unquote(segments[3])


# Prisma's names for the JSON types it rejects where a String is expected.
PRISMA_TYPES = {bool: "Boolean", int: "Int", float: "Float", list: "List", dict: "Object"}


def prisma_rejects(name: Any) -> str:
    """The 500 Evolution 2.3.6 gives for a non-string ``instanceName`` (live capture 19),
    without the minified server source the real message quotes in its middle."""
    kind = PRISMA_TYPES.get(type(name), "Null")
    return (
        "PrismaClientValidationError: \nInvalid `this.prismaRepository.integrationSession"
        ".findFirst()` invocation in\ndist/main.js:315:83439\n\n  (minified source)\n\n"
        f"Argument `name`: Invalid value provided. Expected StringFilter or String, provided "
        f"{kind}."
    )


class JSONResponse(_StarletteJSON):
    """JSON as Express sends it; escaping non-ASCII keeps a lone surrogate in a name (which
    JavaScript strings allow) from breaking the answer."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


async def read_json(request: Request) -> Any:
    """The body as Express's JSON parser gives it; raises ValueError if it cannot."""
    raw = await request.body()
    try:
        return json.loads(raw) if raw.strip() else {}
    except RecursionError as exc:
        raise ValueError("too deeply nested") from exc


def create_sandbox(
    config: SandboxConfig | None = None, http: httpx.AsyncClient | None = None
) -> Starlette:
    """The sandbox app; ``http`` is the client its webhook deliveries go through."""
    config = config or SandboxConfig()
    faults = Faults()
    world = World(config, Deliverer(config, faults, http))
    v1 = config.version == 1

    def instance_route(handler: Callable[[Request, Instance], Awaitable[Response]]) -> Handler:
        async def guarded(request: Request) -> Response:
            name = route_name(request)
            if name is None:
                return await unknown_route(request)
            instance = world.instances.get(name)
            if instance is None:
                return error(404, [f'The "{name}" instance does not exist'])
            if request.headers.get("apikey") not in (config.global_key, instance.token):
                return error(401, "Unauthorized")
            return await handler(request, instance)

        return with_faults(guarded)

    def with_faults(handler: Handler) -> Handler:
        async def faulty(request: Request) -> Response:
            if faults.latency_ms:
                await asyncio.sleep(faults.latency_ms / 1000)
            if faults.take("hang_times"):
                # Hang until the client gives up, as a stuck server does.
                while not await request.is_disconnected():
                    await asyncio.sleep(0.1)
                return Response(status_code=499)
            if faults.take("fail_times"):
                status = faults.fail_status
                return error(status, [f"Sandbox fault {status}"], REASONS.get(status, "Error"))
            if faults.take("error_in_200_times"):
                return JSONResponse({"error": True, "message": "[object Object]"})
            try:
                return await handler(request)
            except Refusal as refusal:
                return error(refusal.status, refusal.message)

        return faulty

    # -- Evolution's routes --------------------------------------------------------------------

    async def root(request: Request) -> Response:
        """``GET /``: the welcome clients read the version from (live capture 01)."""
        welcome: dict[str, Any] = {
            "status": 200,
            "message": "Welcome to the Evolution API, it is working!",
            "version": "1.8.2" if v1 else "2.3.6",
        }
        if v1:
            welcome["swagger"] = f"{config.server_url}/docs"
        else:
            welcome["clientName"] = "evolution_exchange"
        welcome["manager"] = f"{config.server_url}/manager"
        welcome["documentation"] = "https://doc.evolution-api.com"
        if not v1:
            welcome["whatsappWebVersion"] = "2.3000.1027934701"
        return JSONResponse(welcome)

    async def create(request: Request) -> Response:
        try:
            body = await read_json(request)
        except ValueError:
            # Express's JSON parser fails before any guard runs, with this odd reason.
            return error(400, "Unexpected end of JSON input", "Internal Server Error")
        if not isinstance(body, dict):
            body = {}
        name = body.get("instanceName", "undefined")
        if (isinstance(name, str) and name in world.instances) or (
            "instanceName" not in body and world.instances
        ):
            return error(403, [f'This name "{name}" is already in use.'])
        if request.headers.get("apikey") != config.global_key:
            return error(401, "Unauthorized")
        if not isinstance(name, str):
            return error(500, [prisma_rejects(name)])
        integration = body.get("integration", "WHATSAPP-BAILEYS" if v1 else None)
        if integration not in INTEGRATIONS:
            return error(400, ["Invalid integration"])
        webhook = webhook_from_create(body, v1)
        if v1 and not body.get("token") and world.instances and not config.expose_tokens:
            return error(400, ["Token already exists"])
        token = body.get("token") or str(uuid.uuid4()).upper()
        instance = Instance(name=name, token=str(token), integration=integration,
                            number=digits(body.get("number")), webhook=webhook)  # fmt: skip
        world.instances[name] = instance
        world.emit(
            instance, "INSTANCE_CREATE", {"instanceName": name, "instanceId": instance.instance_id}
        )
        wants_qr = body.get("qrcode") is True
        if wants_qr:
            world.start_socket(instance)
            # Evolution waits 5 s for a QR to put in its answer (reference section 2.2).
            await world.settle_qr(instance, 5.0)
        answer = created_v1(instance) if v1 else created_v2(instance)
        if wants_qr:
            answer["qrcode"] = instance.qr.answer()
        return JSONResponse(answer, status_code=201)

    async def connect(request: Request, instance: Instance) -> Response:
        if instance.state == "open":
            return JSONResponse(state(instance))
        if instance.state == "close":
            # Evolution merges the query into the route's params: ?number= asks for a
            # pairing code for this session (the instance's stored number is unchanged).
            world.start_socket(instance, digits(request.query_params.get("number")))
            await world.settle_qr(instance, 5.0 if v1 else 2.0)
        return JSONResponse(instance.qr.answer())

    async def connection_state(request: Request, instance: Instance) -> Response:
        return JSONResponse(state(instance))

    async def restart(request: Request, instance: Instance) -> Response:
        if v1:
            # v1 reloads only an open connection, answering its state two seconds later.
            if instance.state == "open":
                await asyncio.sleep(config.seconds(2.0))
            return JSONResponse(state(instance))
        if instance.state == "close":
            return JSONResponse({"error": True, "message": "[object Object]"})
        answer = state(instance) if instance.state == "open" else instance.qr.answer()
        world.restart(instance)
        return JSONResponse(answer)

    async def logout(request: Request, instance: Instance) -> Response:
        if instance.state == "close":
            return error(400, [f'The "{instance.name}" instance is not connected'])
        # Evolution answers before the logout happens; its webhooks follow.
        asyncio.get_running_loop().call_soon(world.logout, instance)
        return JSONResponse({"status": "SUCCESS", "error": False,
                             "response": {"message": "Instance logged out"}})  # fmt: skip

    async def delete(request: Request, instance: Instance) -> Response:
        if v1 and instance.state == "open":
            return error(400, [f'The "{instance.name}" instance needs to be disconnected'])
        connected = instance.state in ("open", "connecting")
        world.remove(instance)
        if connected:  # the logout Evolution starts is not awaited and lands after removal
            asyncio.get_running_loop().call_soon(world.logout, instance)
        return JSONResponse({"status": "SUCCESS", "error": False,
                             "response": {"message": "Instance deleted"}})  # fmt: skip

    async def fetch_instances(request: Request) -> Response:
        key = request.headers.get("apikey")
        name = request.query_params.get("instanceName")
        chosen = list(world.instances.values())
        if key != config.global_key:
            chosen = [i for i in chosen if i.token == key]
            if not chosen:
                return error(401, "Unauthorized")
        if name is not None:
            chosen = [i for i in chosen if i.name == name]
            if not chosen:
                return error(404, [f'Instance "{name}" not found'])
        # The other filters of section 2.1; an empty match is an empty list.
        instance_id = request.query_params.get("instanceId")
        number = request.query_params.get("number")
        chosen = [i for i in chosen if instance_id in (None, i.instance_id)]
        chosen = [i for i in chosen if number is None or number in (i.number, digits(i.wuid))]
        if v1:
            items = [{"instance": fetched_v1(i, config)} for i in chosen]
            single = name is not None and key == config.global_key
            return JSONResponse(items[0] if single else items)
        return JSONResponse([fetched_v2(i) for i in chosen])

    async def set_webhook(request: Request, instance: Instance) -> Response:
        try:
            body = await read_json(request)
        except ValueError:
            return error(400, "Unexpected end of JSON input", "Internal Server Error")
        instance.webhook = webhook_from_set(body, v1)
        return JSONResponse(webhook_answer(instance, v1, set_=True), status_code=201)

    async def find_webhook(request: Request, instance: Instance) -> Response:
        return JSONResponse(webhook_answer(instance, v1, set_=False))

    async def unknown_route(request: Request) -> Response:
        return error(404, [f"Cannot {request.method} {request.url.path}"])

    # -- control routes: the phone and the network ----------------------------------------

    def control(action: Callable[[Instance], None]) -> Handler:
        async def run(request: Request) -> Response:
            instance = world.instances.get(request.path_params["name"])
            if instance is None:
                return JSONResponse({"error": "no such instance"}, status_code=404)
            try:
                action(instance)
            except Refusal as refusal:
                return JSONResponse({"error": refusal.message}, status_code=refusal.status)
            return JSONResponse(control_view(instance))

        return run

    def scan(instance: Instance, number: str | None = None) -> None:
        if instance.state != "connecting" or instance.qr.code is None or instance.scanned:
            raise Refusal(409, "there is no QR to scan: the instance is not showing one")
        world.scan(instance, number)

    async def scan_with(request: Request) -> Response:
        """Scan with the phone whose number is ``?number=`` (any if none is given)."""
        given = request.query_params.get("number")
        number = re.sub(r"[ ()+\-]", "", given) if given is not None else None
        if number is not None and not re.fullmatch(r"[0-9]{8,15}", number):
            return JSONResponse({"error": "number: 8 to 15 digits"}, status_code=400)
        return await control(partial(scan, number=number))(request)

    def drop(instance: Instance) -> None:
        if instance.state != "open":
            raise Refusal(409, "only an open connection can drop")
        world.drop(instance)

    def phone_logout(instance: Instance) -> None:
        if instance.state != "open":
            raise Refusal(409, "only an open connection can be logged out from the phone")
        world.close_for_good(instance, 401)

    def ban(instance: Instance) -> None:
        if instance.state != "open":
            raise Refusal(409, "only an open connection can be banned")
        world.close_for_good(instance, 403)

    def qr_limit(instance: Instance) -> None:
        if instance.state != "connecting":
            raise Refusal(409, "the QR limit applies only while QR codes are shown")
        world.refuse(instance)

    async def list_instances(request: Request) -> Response:
        return JSONResponse([control_view(i) for i in world.instances.values()])

    async def set_faults(request: Request) -> Response:
        if request.method == "DELETE":
            faults.clear()
            return JSONResponse(faults.__dict__)
        try:
            changes = await read_json(request)
            if not isinstance(changes, dict):
                raise ValueError("faults must be a JSON object")
            faults.update(changes)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(faults.__dict__)

    async def deliveries(request: Request) -> Response:
        return JSONResponse([
            {"url": d.url, "event": d.event, "instance": d.instance, "attempts": d.attempts,
             "delivered": d.delivered}
            for d in world.deliverer.deliveries
        ])  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if config.state_file is None:
            yield
            await world.aclose()
            return
        storage.load(world, config.state_file)
        saver = asyncio.create_task(storage.keep_saved(world, config.state_file, config.save_every))
        yield
        saver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saver
        storage.save(world, config.state_file)
        await world.aclose()

    restart_method = "PUT" if v1 else "POST"
    app = Starlette(
        routes=[
            Route("/", root, methods=["GET"]),
            Route("/instance/create", with_faults(create), methods=["POST"]),
            Route("/instance/connect/{name:path}", instance_route(connect), methods=["GET"]),
            Route(
                "/instance/connectionState/{name:path}",
                instance_route(connection_state),
                methods=["GET"],
            ),
            Route(
                "/instance/restart/{name:path}", instance_route(restart), methods=[restart_method]
            ),
            Route("/instance/logout/{name:path}", instance_route(logout), methods=["DELETE"]),
            Route("/instance/delete/{name:path}", instance_route(delete), methods=["DELETE"]),
            Route("/instance/fetchInstances", with_faults(fetch_instances), methods=["GET"]),
            Route("/webhook/set/{name:path}", instance_route(set_webhook), methods=["POST"]),
            Route("/webhook/find/{name:path}", instance_route(find_webhook), methods=["GET"]),
            Route("/_sandbox/instances", list_instances, methods=["GET"]),
            Route("/_sandbox/instances/{name}/scan", scan_with, methods=["POST"]),
            Route("/_sandbox/instances/{name}/drop", control(drop), methods=["POST"]),
            Route("/_sandbox/instances/{name}/logout", control(phone_logout), methods=["POST"]),
            Route("/_sandbox/instances/{name}/ban", control(ban), methods=["POST"]),
            Route("/_sandbox/instances/{name}/qr-limit", control(qr_limit), methods=["POST"]),
            Route("/_sandbox/faults", set_faults, methods=["POST", "DELETE"]),
            Route("/_sandbox/deliveries", deliveries, methods=["GET"]),
            Route("/{path:path}", unknown_route, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ],
        lifespan=lifespan,
    )
    app.state.world = world
    app.state.faults = faults
    return app
