"""The whole service as one Starlette app: the webhook receiver and the ``/api/v1`` API,
sharing one database pool and one Evolution client."""

from __future__ import annotations

from starlette.applications import Starlette

from evochips.api.routes import api_routes
from evochips.db import Database
from evochips.manager import InstanceManager
from evochips.receiver.app import create_app
from evochips.settings import Settings


def build_app(settings: Settings) -> Starlette:
    db = Database(settings.database_url)
    manager = InstanceManager.from_settings(settings, db)

    async def close() -> None:
        await manager.aclose()
        await db.dispose()

    api = api_routes(db, manager, settings.api_keys)
    return create_app(db, settings.webhook_secret, on_shutdown=close, api=api)
