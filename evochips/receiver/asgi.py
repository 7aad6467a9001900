"""The service as a module-level ``app``, for uvicorn's import string, which is what lets
``evochips serve --workers N`` run several worker processes (replicas on one machine).
Each process reads its settings from the environment when it imports this module."""

from __future__ import annotations

from evochips import settings
from evochips.cli.output import configure_logging
from evochips.receiver.service import build_app

configure_logging()  # each worker process logs as `evochips serve` does
app = build_app(settings.load())
