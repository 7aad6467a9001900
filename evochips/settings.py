"""Settings, read from the environment once at start-up.

A missing or malformed setting stops start-up with :class:`SettingsError`, whose message
is one sentence naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from evochips.db import DEFAULT_URL

MIN_SECRET_LENGTH = 32
MIN_API_KEY_LENGTH = 24


class SettingsError(Exception):
    pass


@dataclass(frozen=True)
class Settings:
    database_url: str
    evolution_api_url: str
    evolution_api_key: str
    evolution_api_version: int | None
    public_url: str
    webhook_secret: str
    # Bearer keys for /api/v1; several at once so one can be rotated without downtime.
    api_keys: tuple[str, ...] = ()
    # Reconciliation (see evochips.reconcile): seconds between passes (0: never), what to
    # do with an instance evochips created that has no chip, and when a chip is stuck.
    reconcile_interval: float = 60.0
    reconcile_orphans: str = "report"
    stuck_after: float = 600.0
    # Seconds an unstable chip must stay open, unchanged, before a pass clears the flag.
    unstable_clear_after: float = 600.0
    # The largest webhook body read for an event evochips handles; larger ones get 413.
    max_webhook_bytes: int = 1024 * 1024

    @property
    def webhook_url(self) -> str:
        """Where Evolution posts an instance's events (the secret goes in a header)."""
        return f"{self.public_url}/webhooks/evolution"

    @property
    def headerless_webhook_url(self) -> str:
        """The same, with the secret in the path, for senders that cannot add headers."""
        return f"{self.webhook_url}/k/{self.webhook_secret}"

    def __repr__(self) -> str:
        # Never print the API key or the webhook secret.
        return (
            f"Settings(database_url={_hide_password(self.database_url)!r}, "
            f"evolution_api_url={self.evolution_api_url!r}, public_url={self.public_url!r})"
        )


def database_url(env: Mapping[str, str] | None = None) -> str:
    """Only the database URL, for commands that need nothing else."""
    env = os.environ if env is None else env
    url = env.get("EVOCHIPS_DATABASE_URL", "").strip() or DEFAULT_URL
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise SettingsError(f"EVOCHIPS_DATABASE_URL is not a database URL: {exc}.") from exc
    if parsed.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise SettingsError(
            "EVOCHIPS_DATABASE_URL must start with sqlite+aiosqlite:// or "
            f"postgresql+asyncpg://, not {parsed.drivername}://."
        )
    return url


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    return Settings(
        database_url=database_url(env),
        evolution_api_url=_http_url(env, "EVOLUTION_API_URL"),
        evolution_api_key=_required(env, "EVOLUTION_API_KEY"),
        evolution_api_version=_version(env),
        public_url=_http_url(env, "EVOCHIPS_PUBLIC_URL"),
        webhook_secret=_secret(env),
        api_keys=api_keys(env),
        reconcile_interval=_seconds(env, "EVOCHIPS_RECONCILE_INTERVAL", 60.0),
        reconcile_orphans=_orphans(env),
        stuck_after=_seconds(env, "EVOCHIPS_STUCK_AFTER", 600.0),
        unstable_clear_after=_seconds(env, "EVOCHIPS_UNSTABLE_CLEAR_AFTER", 600.0),
        max_webhook_bytes=_bytes(env, "EVOCHIPS_MAX_WEBHOOK_BYTES", 1024 * 1024),
    )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86_400 * 7:
        raise SettingsError(f"{name} must be a number of seconds from 0 to 604800, not {value!r}.")
    return seconds


def _bytes(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or not 1024 <= int(value) <= 1024**3:
        raise SettingsError(
            f"{name} must be a number of bytes from 1024 to 1073741824, not {value!r}."
        )
    return int(value)


def _orphans(env: Mapping[str, str]) -> str:
    value = env.get("EVOCHIPS_RECONCILE_ORPHANS", "").strip() or "report"
    if value not in ("report", "adopt"):
        raise SettingsError(f"EVOCHIPS_RECONCILE_ORPHANS must be report or adopt, not {value!r}.")
    return value


def api_keys(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """``EVOCHIPS_API_KEYS``, comma-separated; unset means the HTTP API refuses everyone."""
    env = os.environ if env is None else env
    keys = tuple(key.strip() for key in env.get("EVOCHIPS_API_KEYS", "").split(","))
    keys = tuple(key for key in keys if key)
    for position, key in enumerate(keys, start=1):
        printable = key.isascii() and key.isprintable() and " " not in key
        if len(key) < MIN_API_KEY_LENGTH or not printable:
            raise SettingsError(
                f"EVOCHIPS_API_KEYS: key {position} must be at least {MIN_API_KEY_LENGTH} "
                "printable ASCII characters, without spaces."
            )
    return keys


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name} is not set.")
    return value


def _http_url(env: Mapping[str, str], name: str) -> str:
    value = _required(env, name).rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{name} must be an http:// or https:// URL, not {value!r}.")
    return value


def _version(env: Mapping[str, str]) -> int | None:
    value = env.get("EVOLUTION_API_VERSION", "").strip()
    if not value:
        return None
    if value not in ("1", "2"):
        raise SettingsError(f"EVOLUTION_API_VERSION must be 1 or 2, not {value!r}.")
    return int(value)


def _secret(env: Mapping[str, str]) -> str:
    value = _required(env, "EVOCHIPS_WEBHOOK_SECRET")
    if len(value) < MIN_SECRET_LENGTH:
        raise SettingsError(
            f"EVOCHIPS_WEBHOOK_SECRET must be at least {MIN_SECRET_LENGTH} characters long."
        )
    if not all(c.isascii() and (c.isalnum() or c in "-_.") for c in value):
        # It travels in a URL path for senders that cannot add headers.
        raise SettingsError(
            "EVOCHIPS_WEBHOOK_SECRET may hold only ASCII letters, digits, '-', '_' and '.'."
        )
    return value


def _hide_password(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
