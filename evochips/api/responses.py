"""JSON answers of the API: times in ISO 8601, and the one error shape."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response

from evochips.api.errors import ApiError


class ApiJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, default=_iso).encode()


def error_response(exc: ApiError) -> Response:
    return ApiJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (times as ISO 8601)."""
    return json.loads(json.dumps(value, default=_iso))


def _iso(value: Any) -> str:
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    raise TypeError(f"cannot encode {type(value).__name__}")
