"""The API's one error shape, ``{"error": {"code": ..., "message": ...}}``, and the HTTP
status of each kind of failure."""

from __future__ import annotations

from typing import Any

RETRY_AFTER_SECONDS = "5"

# InstanceManager's error codes (evochips.manager.ERROR_CODES) and the API's own.
STATUS_BY_CODE = {
    "validation": 400,
    "invalid_input": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "qr_not_available": 404,
    "name_in_use": 409,
    "invalid_transition": 409,
    "instance_missing": 409,
    "concurrent_change": 409,
    "idempotency_key_reused": 409,
    "request_in_progress": 409,
    "body_too_large": 413,
    "evolution_rejected": 502,
    "evolution_protocol_error": 502,
    "evolution_unavailable": 503,
    "database_unavailable": 503,
    "evolution_timeout": 504,
    "internal": 500,
}
# Worth retrying as is: the same request may succeed in a few seconds.
RETRYABLE = frozenset({"request_in_progress", "evolution_unavailable", "database_unavailable",
                       "evolution_timeout", "internal"})  # fmt: skip


class ApiError(Exception):
    def __init__(self, code: str, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields

    @property
    def status(self) -> int:
        return STATUS_BY_CODE[self.code]

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}

    def headers(self) -> dict[str, str]:
        headers = {"Retry-After": RETRY_AFTER_SECONDS} if self.code in RETRYABLE else {}
        if self.code == "unauthorized":
            headers["WWW-Authenticate"] = 'Bearer realm="evochips"'
        return headers


def invalid(fields: dict[str, str]) -> ApiError:
    """A 400 naming every bad field."""
    listed = "; ".join(f"{name}: {problem}" for name, problem in fields.items())
    return ApiError("validation", f"invalid request: {listed}", fields)


def from_result(result: dict[str, Any]) -> ApiError:
    """The ApiError for an InstanceManager failure dict."""
    code = result.get("error_code", "internal")
    if code == "invalid_input":
        return ApiError("validation", result["error"])
    return ApiError(code if code in STATUS_BY_CODE else "internal", result["error"])
