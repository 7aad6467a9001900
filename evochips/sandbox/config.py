"""How the sandbox behaves: which Evolution version it plays and how fast time runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_GLOBAL_KEY = "sandbox-global-key"


@dataclass(frozen=True)
class SandboxConfig:
    version: int = 2
    global_key: str = DEFAULT_GLOBAL_KEY
    server_url: str = "http://127.0.0.1:8080"
    # Multiplies every wait Evolution makes (create's 5 s, connect's 2 s, the 45 s a QR
    # lives, webhook retry backoff); tests run with a small value.
    time_scale: float = 1.0
    qr_limit: int = 30
    qr_seconds: float = 45.0
    # Evolution's AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES: the envelope's apikey is then
    # the instance token instead of null.
    expose_tokens: bool = True
    global_webhook_url: str | None = None
    global_webhook_by_events: bool = False
    # With no route to WhatsApp (as the live recordings were made), no QR ever appears.
    offline: bool = False
    webhook_attempts: int = 10
    # Where instances are kept across restarts; None keeps them in memory only. It is
    # written whenever they changed, checked every ``save_every`` seconds, and on exit.
    state_file: Path | None = None
    save_every: float = 1.0

    def seconds(self, real: float) -> float:
        return real * self.time_scale
