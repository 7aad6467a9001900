"""JSON as RFC 8259 defines it, for bodies that come from outside.

Python's decoder also accepts ``NaN`` and ``Infinity``, and turns a number too large for
a float (``1e999``) into infinity; none of them is JSON, and PostgreSQL's ``jsonb`` refuses
to store them. Here each is a ``ValueError``, like any other malformed body.
"""

from __future__ import annotations

import json
import math
from typing import Any


def loads(data: bytes | str, *, unique_keys: bool = False) -> Any:
    """Decode ``data``; raises ValueError for anything that is not JSON (and, with
    ``unique_keys``, for an object that names a key twice, which JSON leaves undefined),
    and RecursionError for nesting deeper than Python's stack allows."""
    return json.loads(
        data,
        parse_constant=_refuse_constant,
        parse_float=_finite,
        object_pairs_hook=_unique if unique_keys else None,
    )


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, value in pairs:
        if key in decoded:
            raise DuplicateKey(key)
        decoded[key] = value
    return decoded


class DuplicateKey(ValueError):
    """An object names ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the key {key!r} appears twice")
        self.key = key


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range for a number")
    return value
