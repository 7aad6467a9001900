"""Keeping the sandbox's instances across restarts, as Evolution keeps them in its
database: on start, every stored instance connects again (reference section 3.4, step 6),
so a paired number comes back open and an unpaired one shows QR codes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from evochips.sandbox.delivery import Webhook
from evochips.sandbox.world import Instance, QrState, World

logger = logging.getLogger(__name__)

# What survives a restart; the rest (sockets, QR images, timers) is made anew.
_KEPT = ("name", "token", "integration", "number", "instance_id", "wuid", "profile_name",
         "created_at", "updated_at", "disconnection_code", "disconnection_at",
         "disconnection_object")  # fmt: skip


def save(world: World, path: Path) -> None:
    """Write the instances to ``path`` (atomically, so a crash leaves the old file)."""
    _write(path, _serialised(world))


async def keep_saved(world: World, path: Path, every: float) -> None:
    """Save the instances whenever they have changed, looking every ``every`` seconds, so
    that a sandbox killed without warning forgets at most that much (until cancelled)."""
    written = _serialised(world)
    while True:
        await asyncio.sleep(every)
        current = _serialised(world)
        if current != written:
            _write(path, current)
            written = current


def _serialised(world: World) -> str:
    rows = []
    for instance in world.instances.values():
        row: dict[str, Any] = {key: getattr(instance, key) for key in _KEPT}
        row["paired"] = instance.session
        row["qr_count"] = instance.qr.count
        row["webhook"] = dataclasses.asdict(instance.webhook) if instance.webhook else None
        rows.append(row)
    return json.dumps(rows, indent=1, ensure_ascii=True)


def _write(path: Path, text: str) -> None:
    partial = path.with_suffix(path.suffix + ".tmp")
    partial.write_text(text)
    os.replace(partial, path)


def load(world: World, path: Path) -> None:
    """Bring back the instances stored in ``path`` and connect each of them again."""
    if not path.exists():
        return
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("sandbox state in %s unreadable (%s); starting empty", path, exc)
        return
    for row in rows:
        hook = row.get("webhook")
        instance = Instance(
            **{key: row.get(key) for key in _KEPT if key in row},
            webhook=Webhook(**{**hook, "events": tuple(hook["events"])}) if hook else None,
            qr=QrState(count=row.get("qr_count", 0)),
        )
        world.instances[instance.name] = instance
        if row.get("paired"):
            world.reconnect(instance)
        else:
            world.start_socket(instance)
    logger.info("sandbox restored %d instances from %s", len(rows), path)
