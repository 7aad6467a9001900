"""Real servers on loopback for end-to-end tests: the evochips CLI and a fake Evolution."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import uvicorn

from tests.conftest import SECRET

# Commands run outside the checkout, so a developer's .evochips.env cannot leak into them.
NEUTRAL_DIR = tempfile.mkdtemp(prefix="evochips-cli-")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def receiver_env(database_url: str, port: int) -> dict[str, str]:
    """Settings for an ``evochips serve`` that only receives webhooks (Evolution unused)."""
    return {
        "EVOLUTION_API_URL": "http://127.0.0.1:9",
        "EVOLUTION_API_KEY": "unused",
        "EVOCHIPS_DATABASE_URL": database_url,
        "EVOCHIPS_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "EVOCHIPS_WEBHOOK_SECRET": SECRET,
    }


def evochips(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the ``evochips`` command and return what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "evochips", *args],
        cwd=NEUTRAL_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextlib.contextmanager
def serving_evochips(
    port: int, env: Mapping[str, str], *args: str, ready: str = "/healthz"
) -> Iterator[subprocess.Popen[str]]:
    """``evochips serve`` (or ``evochips <args>``) in a child process, stopped on exit."""
    command = args or ("serve", "--port", str(port))
    process = subprocess.Popen(
        [sys.executable, "-m", "evochips", *command],
        cwd=NEUTRAL_DIR,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}{ready}", process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def serving_app(app: Any, port: int) -> Iterator[None]:
    """An ASGI app under uvicorn in a thread, stopped on exit."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_until_up(url: str, process: subprocess.Popen[str], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise RuntimeError(f"server exited with {process.returncode}: {output}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {seconds} s")
