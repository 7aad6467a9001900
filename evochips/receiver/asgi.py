"""The receiver as a module-level ``app``, for uvicorn's import string, which is what lets
``evochips serve --workers N`` run several worker processes (replicas on one machine).
Each process reads its settings from the environment when it imports this module."""

from __future__ import annotations

from evochips import settings
from evochips.db import Database
from evochips.receiver.app import create_app

_settings = settings.load()
_db = Database(_settings.database_url)
app = create_app(_db, _settings.webhook_secret, on_shutdown=_db.dispose)
