"""JSON as RFC 8259 defines it, for bodies that come from outside.

Python's decoder also accepts ``NaN`` and ``Infinity``, and turns a number too large for
a float (``1e999``) into infinity; none of them is JSON, and PostgreSQL's ``jsonb`` refuses
to store them. Here each is a ``ValueError``, like any other malformed body.
"""

from __future__ import annotations

import json
import math
from typing import Any


def loads(data: bytes | str) -> Any:
    """Decode ``data``; raises ValueError for anything that is not JSON, and RecursionError
    for nesting deeper than Python's stack allows."""
    return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range for a number")
    return value
