"""An async client for the instance-lifecycle part of Evolution API, v2.x and v1.8.

Every call has an explicit timeout, every failure is one of ``evochips.evolution.errors``,
and every answer is parsed into a small typed result, so callers never see raw JSON.
Protocol facts used here are described in the project's Evolution API reference
(sections 1-2 for routes and error envelopes, section 6 for version differences).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from evochips.evolution.errors import (
    EvolutionError,
    EvolutionProtocolError,
    EvolutionRejected,
    EvolutionTimeout,
    EvolutionUnauthorized,
    EvolutionUnavailable,
    InstanceNameInUse,
    InstanceNotFound,
)
from evochips.evolution.shapes import (
    CreatedInstance,
    DeleteOutcome,
    InstanceInfo,
    InstanceState,
    LogoutOutcome,
    QrCode,
    WebhookInfo,
    WebhookTarget,
    create_body,
    expect_dict,
    major_version,
    parse_connect,
    parse_created,
    parse_instances,
    parse_webhook,
    text_or_none,
    webhook_body,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=15.0, write=10.0, pool=5.0)
# Evolution sleeps 5 s before answering a create with ``qrcode: true`` (and longer under
# load or behind a proxy), so create gets its own, longer read timeout.
CREATE_TIMEOUT = httpx.Timeout(connect=5.0, read=45.0, write=10.0, pool=5.0)
# A whole call, however slowly the answer trickles in, ends after this long.
CALL_DEADLINE_SECONDS = 20.0
CREATE_DEADLINE_SECONDS = 60.0
# Reads (GET) are retried on failures that may pass; calls that change something are
# not, because Evolution may have acted on a request whose answer we lost.
READ_ATTEMPTS = 3


class EvolutionClient:
    """Calls Evolution API with the global key; one instance per process is enough."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        api_version: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        read_attempts: int = READ_ATTEMPTS,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"apikey": api_key, "accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        self._version = api_version
        self._read_attempts = read_attempts
        self._version_lock = asyncio.Lock()

    async def __aenter__(self) -> EvolutionClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def api_version(self) -> int:
        """The server's major version, from the setting or else from ``GET /`` (once)."""
        if self._version is not None:
            return self._version
        async with self._version_lock:
            if self._version is None:
                self._version = major_version(await self._request("GET", "/"))
        return self._version

    async def create_instance(self, name: str, webhook: WebhookTarget) -> CreatedInstance:
        """Create an instance that shows a QR at once and posts its events to ``webhook``.

        Raises InstanceNameInUse when Evolution already has ``name``.
        """
        body = create_body(await self.api_version(), name, webhook)
        answer = await self._request("POST", "/instance/create", json=body, timeout=CREATE_TIMEOUT)
        return parse_created(answer)

    async def connect(self, name: str) -> QrCode | InstanceState:
        """Ask for a QR; an already connected instance answers with its state instead."""
        path = f"/instance/connect/{name}"
        # Not retried: on a closed instance connect starts a socket (reference 2.3).
        return parse_connect(await self._request("GET", path, retry=False), path)

    async def connection_state(self, name: str) -> str | None:
        """The instance's live state, or None when Evolution has it on disk but not loaded."""
        path = f"/instance/connectionState/{name}"
        answer = expect_dict(await self._request("GET", path), path)
        return text_or_none(expect_dict(answer.get("instance"), path).get("state"))

    async def restart(self, name: str) -> QrCode | InstanceState:
        """Restart the instance's socket (``PUT`` on v1, ``POST`` on v2)."""
        method = "PUT" if await self.api_version() == 1 else "POST"
        path = f"/instance/restart/{name}"
        return parse_connect(await self._request(method, path), path)

    async def logout(self, name: str) -> LogoutOutcome:
        """Log the number out; an instance that is not connected counts as logged out."""
        path = f"/instance/logout/{name}"
        try:
            expect_dict(await self._request("DELETE", path), path)
        except EvolutionRejected as exc:
            if exc.status == 400 and "is not connected" in exc.detail:
                return LogoutOutcome.NOT_CONNECTED
            raise
        return LogoutOutcome.LOGGED_OUT

    async def delete(self, name: str) -> DeleteOutcome:
        """Delete the instance; one that does not exist counts as deleted.

        Raises EvolutionRejected (status 400) on v1 when the instance is still connected.
        """
        path = f"/instance/delete/{name}"
        try:
            expect_dict(await self._request("DELETE", path), path)
        except InstanceNotFound:
            return DeleteOutcome.ABSENT
        return DeleteOutcome.DELETED

    async def fetch_instances(self) -> list[InstanceInfo]:
        """Every instance the server has (the global key sees them all)."""
        return parse_instances(await self._request("GET", "/instance/fetchInstances"))

    async def fetch_instance(self, name: str) -> InstanceInfo | None:
        """The instance as Evolution lists it, or None when it has no such instance."""
        try:
            answer = await self._request(
                "GET", "/instance/fetchInstances", params={"instanceName": name}
            )
        except InstanceNotFound:
            return None
        return next((info for info in parse_instances(answer) if info.name == name), None)

    async def find_webhook(self, name: str) -> WebhookInfo | None:
        return parse_webhook(await self._request("GET", f"/webhook/find/{name}", allow_null=True))

    async def set_webhook(self, name: str, webhook: WebhookTarget) -> WebhookInfo | None:
        body = webhook_body(await self.api_version(), webhook)
        return parse_webhook(await self._request("POST", f"/webhook/set/{name}", json=body))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        allow_null: bool = False,
        retry: bool = True,
    ) -> Any:
        """Send a request (a read up to READ_ATTEMPTS times) and return its decoded JSON.

        Raises an EvolutionError.
        """
        if method != "GET" or not retry:
            return await self._send(method, path, json, params, timeout, allow_null)
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._read_attempts),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0),
            retry=retry_if_exception(_is_retryable),
            reraise=True,
        ):
            with attempt:
                return await self._send(method, path, json, params, timeout, allow_null)
        raise AssertionError("unreachable: tenacity reraises the last failure")

    async def _send(
        self,
        method: str,
        path: str,
        json: dict[str, Any] | None,
        params: dict[str, str] | None,
        timeout: httpx.Timeout | None,
        allow_null: bool,
    ) -> Any:
        """Send one request and return its decoded JSON, or raise an EvolutionError."""
        started = time.perf_counter()
        deadline = CREATE_DEADLINE_SECONDS if timeout is CREATE_TIMEOUT else CALL_DEADLINE_SECONDS
        try:
            async with asyncio.timeout(deadline):
                response = await self._http.request(
                    method, path, json=json, params=params, timeout=timeout or self._http.timeout
                )
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise EvolutionTimeout(
                f"Evolution API did not answer {method} {path} in time ({type(exc).__name__})",
                method=method,
                path=path,
            ) from exc
        except httpx.HTTPError as exc:
            raise EvolutionUnavailable(
                f"Evolution API is unreachable for {method} {path} ({type(exc).__name__})",
                method=method,
                path=path,
            ) from exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.info(
            "evolution %s %s -> %d in %.0f ms", method, path, response.status_code, elapsed_ms
        )
        body = _decode(response)
        if response.status_code >= 400:
            raise _rejection(method, path, response.status_code, body)
        if body is None and not allow_null:
            raise EvolutionProtocolError(
                f"Evolution API answered {method} {path} with null", method=method, path=path
            )
        if isinstance(body, dict) and body.get("error") is True:
            raise EvolutionProtocolError(
                f"Evolution API answered {method} {path} with HTTP {response.status_code} "
                f"but reported an error: {_flatten(body.get('message')) or 'no message'}",
                method=method,
                path=path,
            )
        if body is _EMPTY:
            raise EvolutionProtocolError(
                f"Evolution API answered {method} {path} with an empty body",
                method=method,
                path=path,
            )
        if body is _NOT_JSON:
            raise EvolutionProtocolError(
                f"Evolution API answered {method} {path} with a body that is not JSON",
                method=method,
                path=path,
            )
        return body


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, EvolutionError) and exc.retryable


_EMPTY = object()
_NOT_JSON = object()


def _decode(response: httpx.Response) -> Any:
    if not response.content.strip():
        return _EMPTY
    try:
        return response.json()
    except (ValueError, RecursionError):
        return _NOT_JSON


def _rejection(method: str, path: str, status: int, body: Any) -> EvolutionRejected:
    """Translate an error status and Evolution's envelope into one exception."""
    reason = ""
    detail = ""
    if isinstance(body, dict):
        reason = str(body.get("error") or "")
        response = body.get("response")
        detail = _flatten(response.get("message") if isinstance(response, dict) else None)
        detail = detail or _flatten(body.get("message"))
    elif body is _NOT_JSON:
        detail = "a body that is not JSON"
    message = f"Evolution API refused {method} {path} with HTTP {status}"
    message += f": {detail}" if detail else ""
    kwargs: dict[str, Any] = {
        "status": status,
        "reason": reason,
        "detail": detail,
        "method": method,
        "path": path,
    }
    if status == 401:
        return EvolutionUnauthorized(message + " (check EVOLUTION_API_KEY)", **kwargs)
    # A 404 is a missing instance only when Evolution says so: an unknown route also
    # answers 404 ("Cannot PUT /instance/restart/x", a version mismatch), and so may a
    # proxy in front of Evolution.
    if status == 404 and ("does not exist" in detail or "not found" in detail):
        return InstanceNotFound(message, **kwargs)
    if status == 403 and path == "/instance/create":
        return InstanceNameInUse(message, **kwargs)
    return EvolutionRejected(message, **kwargs)


def _flatten(message: Any) -> str:
    """Evolution's ``message`` is a string, a list, or a list of lists; make it one line."""
    if message is None:
        return ""
    if isinstance(message, list):
        return "; ".join(part for part in (_flatten(item) for item in message) if part)
    return str(message)
