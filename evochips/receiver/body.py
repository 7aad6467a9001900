"""Reading a delivery's body without trusting its size.

Evolution puts ``event`` first in every body, and users often point message events at the
same URL, with bodies of several megabytes. So an event evochips does not handle, named by
the "webhook by events" URL suffix or at the start of the body, streams past unparsed and
unkept (only its hash is taken), whatever its size; anything else is read whole, up to a
limit, and refused beyond it before the rest is read.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from starlette.requests import Request

from evochips.evolution.events import HANDLED_EVENTS, UNHANDLED_EVENTS, normalise_event_name

# Enough to hold the envelope's first keys: {"event": "...", "instance": "...", ...
PEEK_BYTES = 512
_EVENT = re.compile(rb'\A\s*\{\s*"event"\s*:\s*"([A-Za-z0-9._-]{1,64})"')
_INSTANCE = re.compile(rb'"instance"\s*:\s*"([^"\\]{1,255})"')


class BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Skimmed:
    """A delivery of an event evochips does not handle, read without being parsed."""

    event: str
    instance: str | None
    digest: str
    size: int


async def read_delivery(request: Request, limit: int, suffix: str | None = None) -> bytes | Skimmed:
    """The body to parse, or a Skimmed summary of an unhandled event's delivery.

    ``suffix`` is the by-events URL suffix (``/messages-upsert``), if any. Raises
    BodyTooLarge when a body that may matter is larger than ``limit``.
    """
    digest = hashlib.sha256()
    kept = bytearray()
    size = 0
    head: bytes | None = None
    # The event, once it is known to be one evochips skips.
    skipped = _named_by(suffix)
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
        if head is not None and skipped is not None:
            continue
        kept += chunk
        if head is None and len(kept) >= PEEK_BYTES:
            head = bytes(kept[:PEEK_BYTES])
            skipped = skipped or _skippable(head)
            if skipped is not None:
                kept.clear()
                continue
        if skipped is None and len(kept) > limit:
            raise BodyTooLarge
    if head is None:  # the whole body is shorter than the peek
        head = bytes(kept)
        skipped = skipped or _skippable(head)
    if skipped is None:
        return bytes(kept)
    instance = _INSTANCE.search(head)
    return Skimmed(
        event=skipped,
        instance=instance.group(1).decode("utf-8", "replace") if instance else None,
        digest=digest.hexdigest(),
        size=size,
    )


def _skippable(head: bytes) -> str | None:
    """The event named at the start of ``head`` if evochips does not handle it."""
    found = _EVENT.match(head)
    return _skippable_name(found.group(1).decode("ascii")) if found else None


def _skippable_name(name: str) -> str | None:
    event = normalise_event_name(name)
    return None if not event or event in HANDLED_EVENTS else event


def _named_by(suffix: str | None) -> str | None:
    """The event a by-events URL suffix names, if it is one Evolution sends and evochips
    does not handle; any other suffix (a path of the user's own, say) decides nothing."""
    event = normalise_event_name(suffix.rsplit("/", 1)[-1]) if suffix else ""
    return event if event in UNHANDLED_EVENTS else None
