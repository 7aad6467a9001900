"""The whole service as one Starlette app: the webhook receiver, the ``/api/v1`` API and
the reconciliation loop, sharing one database pool and one Evolution client."""

from __future__ import annotations

from starlette.applications import Starlette

from evochips.api.routes import api_routes
from evochips.db import Database
from evochips.manager import InstanceManager, evolution_from_settings
from evochips.receiver.app import create_app
from evochips.reconcile import Reconciler, reconcile_forever
from evochips.settings import Settings


def build_app(settings: Settings) -> Starlette:
    db = Database(settings.database_url)
    evolution, webhook = evolution_from_settings(settings)
    manager = InstanceManager(db, evolution, webhook)
    reconciler = Reconciler.from_settings(settings, db, evolution, webhook)

    async def reconcile() -> None:
        await reconcile_forever(reconciler, db, settings.reconcile_interval)

    async def close() -> None:
        await manager.aclose()
        await db.dispose()

    return create_app(
        db,
        settings.webhook_secret,
        max_body_bytes=settings.max_webhook_bytes,
        on_shutdown=close,
        api=api_routes(db, manager, settings.api_keys),
        background=reconcile if settings.reconcile_interval > 0 else None,
    )
