"""Running things: the receiver, the migrations, and the Evolution API sandbox."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import click
import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from evochips import settings as settings_module
from evochips.cli.output import configure_logging, or_exit
from evochips.sandbox.config import DEFAULT_GLOBAL_KEY, SandboxConfig

logger = logging.getLogger(__name__)

SANDBOX_URL = "http://127.0.0.1:8080"
# On shutdown, requests still running after this long are cancelled (a hung Evolution
# call, or the sandbox's own "hang" fault, must not keep the process alive).
SHUTDOWN_GRACE_SECONDS = 5
SIMULATED = (
    "WhatsApp is SIMULATED: Evolution API is the built-in sandbox at %s; no real number is "
    "paired. Play the phone with POST %s/_sandbox/instances/<name>/scan (or drop, logout, "
    "ban, qr-limit)."
)


@click.command(help="Run the webhook receiver (uvicorn).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--sandbox",
    is_flag=True,
    envvar="EVOCHIPS_SANDBOX",
    help="Also run the Evolution API sandbox and point evochips at it (env EVOCHIPS_SANDBOX).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes sharing the port (each its own database pool).",
)
def serve(host: str, port: int, sandbox: bool, workers: int) -> None:
    from evochips.receiver.service import build_app

    if sandbox:
        os.environ.setdefault("EVOLUTION_API_URL", SANDBOX_URL)
        os.environ.setdefault("EVOLUTION_API_KEY", DEFAULT_GLOBAL_KEY)
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    os.environ.setdefault("EVOCHIPS_PUBLIC_URL", f"http://{local}:{port}")
    settings = or_exit(settings_module.load)
    configure_logging()
    _warn_if_elsewhere(settings.public_url, port)
    if workers > 1:
        if sandbox:
            raise click.ClickException("--sandbox keeps its state in one process: use 1 worker")
        logger.info("evochips receiving Evolution webhooks at %s with %d workers",
                    settings.webhook_url, workers)  # fmt: skip
        uvicorn.run(
            "evochips.receiver.asgi:app",
            host=host,
            port=port,
            workers=workers,
            access_log=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
        return
    app = build_app(settings)
    logger.info(
        "evochips receiving Evolution webhooks at %s; Evolution API at %s",
        settings.webhook_url,
        settings.evolution_api_url,
    )
    # uvicorn's access log would print the secret of /webhooks/evolution/k/<secret>;
    # the receiver logs one line per delivery itself.
    servers = [
        uvicorn.Config(
            app,
            host=host,
            port=port,
            access_log=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
    ]
    if sandbox:
        sandbox_server = _sandbox_server(settings.evolution_api_url, settings.evolution_api_key)
        _refuse_if_taken(servers[0], "the receiver's port")
        _refuse_if_taken(sandbox_server, "the sandbox's port (from EVOLUTION_API_URL)")
        servers.append(sandbox_server)
    asyncio.run(_serve_all(servers))


@click.command(help="Run the Evolution API sandbox alone: WhatsApp simulated, for tests and demos.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--version", "version", type=click.Choice(["2", "1"]), default="2", show_default=True)
@click.option("--key", default=DEFAULT_GLOBAL_KEY, show_default=True, help="Global API key.")
@click.option("--time-scale", default=1.0, show_default=True, type=click.FloatRange(0.001, 100))
@click.option("--global-webhook", default=None, help="URL of Evolution's global webhook.")
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="EVOCHIPS_SANDBOX_STATE",
    help="Keep instances in this file across restarts (env EVOCHIPS_SANDBOX_STATE).",
)
def sandbox(
    host: str,
    port: int,
    version: str,
    key: str,
    time_scale: float,
    global_webhook: str | None,
    state_file: Path | None,
) -> None:
    from evochips.sandbox import create_sandbox

    configure_logging()
    url = f"http://{host}:{port}"
    config = SandboxConfig(
        version=int(version),
        global_key=key,
        server_url=url,
        time_scale=time_scale,
        global_webhook_url=global_webhook,
        state_file=state_file,
    )
    server = uvicorn.Config(
        create_sandbox(config),
        host=host,
        port=port,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    _refuse_if_taken(server, "the sandbox's port")
    _claim_state_file(state_file)
    logger.warning(SIMULATED, url, url)
    uvicorn.Server(server).run()


@click.command(help="Create or upgrade the database schema.")
def migrate() -> None:
    from evochips.db.migrate import upgrade

    url = or_exit(settings_module.database_url)
    configure_logging()
    try:
        upgrade(url)
    except (OSError, SQLAlchemyError) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"could not migrate the database: {reason}") from exc
    click.echo("database schema is up to date")


def _sandbox_server(url: str, key: str) -> uvicorn.Config:
    from evochips.sandbox import create_sandbox

    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
        raise click.ClickException(
            f"--sandbox needs EVOLUTION_API_URL on this machine with a port, not {url}"
        )
    state = os.environ.get("EVOCHIPS_SANDBOX_STATE")
    config = SandboxConfig(
        global_key=key, server_url=url, state_file=Path(state) if state else None
    )
    _claim_state_file(config.state_file)
    logger.warning(SIMULATED, url, url)
    return uvicorn.Config(
        create_sandbox(config),
        host=parts.hostname,
        port=parts.port,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )


def _warn_if_elsewhere(public_url: str, port: int) -> None:
    """A loopback EVOCHIPS_PUBLIC_URL on another port is a settings file from another run:
    chips created now would have their webhooks sent where this server is not."""
    parts = urlsplit(public_url)
    if parts.hostname in ("127.0.0.1", "localhost") and parts.port not in (None, port):
        logger.warning(
            "EVOCHIPS_PUBLIC_URL is %s but this server listens on port %d: chips created "
            "now will have Evolution post their webhooks there; set EVOCHIPS_PUBLIC_URL to "
            "this server's address",
            public_url,
            port,
        )


# Locks on sandbox state files, held for as long as this process runs.
_HELD_STATE_FILES: list[TextIO] = []


def _claim_state_file(path: Path | None) -> None:
    """Refuse a state file another sandbox is using: both would load the same instances
    and post their webhooks, so one's simulated phone would move the other's chips."""
    if path is None:
        return
    lock = path.with_name(path.name + ".lock")
    try:
        handle = lock.open("a")
    except OSError as exc:
        raise click.ClickException(f"cannot use the sandbox state file {path}: {exc}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise click.ClickException(
            f"another sandbox is using the state file {path}; stop it, or give this one "
            "its own --state-file"
        ) from exc
    _HELD_STATE_FILES.append(handle)


def _refuse_if_taken(config: uvicorn.Config, what: str) -> None:
    """Say so in one sentence when a port is in use: uvicorn, serving beside another
    server, would end the process with a traceback from each."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET  # --host :: or ::1
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((config.host, config.port))
        except OSError as exc:
            raise click.ClickException(
                f"cannot listen on {config.host}:{config.port}, {what}: {exc.strerror}; "
                "stop what uses it, or choose another port"
            ) from exc


async def _serve_all(configs: list[uvicorn.Config]) -> None:
    servers = [uvicorn.Server(config) for config in configs]
    await asyncio.gather(*(server.serve() for server in servers))
