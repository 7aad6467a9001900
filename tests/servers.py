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
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
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


class Server:
    """A running ``evochips`` command: its process, and what it has printed so far (kept
    in a file, so that a chatty server never blocks on a full pipe)."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serving_evochips(
    port: int, env: Mapping[str, str], *args: str, ready: str = "/healthz"
) -> Iterator[Server]:
    """``evochips serve`` (or ``evochips <args>``) in a child process, stopped on exit."""
    with serving_many([(port, env, args)], ready=ready) as (server,):
        yield server


@contextlib.contextmanager
def serving_many(
    commands: Sequence[tuple[int, Mapping[str, str], Sequence[str]]], ready: str = "/healthz"
) -> Iterator[tuple[Server, ...]]:
    """Several ``evochips`` commands, each ``(port, env, args)``, started together (so that
    they boot side by side) and all stopped on exit."""
    with contextlib.ExitStack() as stack:
        servers = tuple(stack.enter_context(_started(*command)) for command in commands)
        for (port, _, _), server in zip(commands, servers, strict=True):
            wait_until_up(f"http://127.0.0.1:{port}{ready}", server)
        yield servers


@contextlib.contextmanager
def _started(port: int, env: Mapping[str, str], args: Sequence[str]) -> Iterator[Server]:
    command = tuple(args) or ("serve", "--port", str(port))
    log = Path(NEUTRAL_DIR) / f"server-{port}-{uuid.uuid4().hex[:8]}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "evochips", *command],
            cwd=NEUTRAL_DIR,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Server(process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.unlink(missing_ok=True)


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


# Linux's view of loopback TCP sockets, for telling which process holds a connection.
PROC_TCP = Path("/proc/net/tcp")
_ESTABLISHED, _LISTEN = "01", "0A"


def workers_of(server: Server, port: int) -> list[int]:
    """The processes ``serve --workers`` started that listen on ``port`` (the supervisor's
    children; a helper such as multiprocessing's resource tracker holds no such socket)."""
    children = [
        int(stat.parent.name)
        for stat in Path("/proc").glob("[0-9]*/stat")
        if _parent_pid(stat) == server.pid
    ]
    listening = _sockets(port, _LISTEN)
    return sorted(pid for pid in children if _socket_inodes(pid) & listening.keys())


def connection_owners(port: int, pids: Sequence[int]) -> dict[int, int]:
    """For each established connection to ``port``: the client's port, mapped to which of
    ``pids`` holds the server's end of it."""
    established = _sockets(port, _ESTABLISHED)
    return {
        established[inode]: pid
        for pid in pids
        for inode in _socket_inodes(pid) & established.keys()
    }


def _parent_pid(stat: Path) -> int | None:
    try:
        # The command name, in parentheses, may hold spaces; the parent follows the state.
        return int(stat.read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _sockets(port: int, state: str) -> dict[str, int]:
    """Inode of each loopback socket in ``state`` whose local port is ``port``, mapped to
    its remote port."""
    found = {}
    for line in PROC_TCP.read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, socket_state, inode = fields[1], fields[2], fields[3], fields[9]
        if int(local.rpartition(":")[2], 16) == port and socket_state == state:
            found[inode] = int(remote.rpartition(":")[2], 16)
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def wait_until_up(url: str, server: Server, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}: {server.output()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {seconds} s")
