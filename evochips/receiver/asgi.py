"""The service as a module-level ``app``, for uvicorn's import string, which is what lets
``evochips serve --workers N`` run several worker processes (replicas on one machine).
Each process reads its settings from the environment when it imports this module."""

from __future__ import annotations

from evochips import settings
from evochips.receiver.service import build_app

app = build_app(settings.load())
