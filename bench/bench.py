"""evochips benchmarks: every figure measured beside its reference, in the same run.

Run through ``bench/run``; ``--quick`` is the smoke run the test suite makes. See
``bench/README.md`` for what each case means and the latest figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SECRET = "bench-secret-0123456789abcdefghijklmnop"
PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CHIPS = 1000
EVOCHIPS_APP = "evochips.receiver.asgi:app"
MESSAGE_BODY = {  # a messages.upsert of about 5 KB, as a mis-subscribed URL receives
    "event": "messages.upsert",
    "instance": "bench-0001",
    "data": {"key": {"remoteJid": "5511900000002@s.whatsapp.net", "fromMe": False,
                     "id": "3EB0C767D26A1D8E6B3A"},
             "pushName": "Cliente", "message": {"conversation": "x" * 4800},
             "messageType": "conversation", "messageTimestamp": 1761058000},
    "destination": "http://127.0.0.1/webhooks/evolution",
    "date_time": "2025-10-21T12:00:00.000Z",
    "sender": "5511900000001@s.whatsapp.net",
    "apikey": None,
}  # fmt: skip


@dataclass
class Figure:
    case: str
    workers: int
    ours: float
    reference: float
    unit: str
    goal: str
    met: bool
    runs: int
    spread: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference else 0.0


@dataclass
class Options:
    duration: float
    runs: int
    connections: int
    workers: list[int]
    deliveries: int
    rates: list[int]
    generator: str
    figures: list[Figure] = field(default_factory=list)


# -- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(
    app: str, env: dict[str, str], workers: int
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``app`` under uvicorn, with the same settings for evochips and the references."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--log-level", "warning", "--no-access-log",
               "--app-dir", str(BENCH)]  # fmt: skip
    # The servers' own logs (a line per delivery) go nowhere: written, not shown.
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.post(f"{url}/webhooks/evolution", content=b"{}", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=15)


def evochips_env(database_url: str) -> dict[str, str]:
    return {
        "EVOCHIPS_DATABASE_URL": database_url,
        "EVOCHIPS_WEBHOOK_SECRET": SECRET,
        "EVOLUTION_API_URL": "http://127.0.0.1:9",
        "EVOLUTION_API_KEY": "unused",
        "EVOLUTION_API_VERSION": "2",
        "EVOCHIPS_PUBLIC_URL": "http://127.0.0.1:8000",
        "EVOCHIPS_RECONCILE_INTERVAL": "0",
    }


@contextmanager
def database(kind: str, *, seed: bool = True) -> Iterator[str]:
    """A fresh, migrated evochips database with ``CHIPS`` chips (unless not ``seed``),
    deleted afterwards."""
    from evochips.db.migrate import upgrade

    if kind == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="evochips-bench-"))
        url = f"sqlite+aiosqlite:///{folder / 'bench.db'}"
        upgrade(url)
        if seed:
            asyncio.run(_seed(url))
        try:
            yield url
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    name = f"evochips_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    sqlalchemy_url = url.replace("postgresql://", "postgresql+asyncpg://")
    try:
        upgrade(sqlalchemy_url)
        if seed:
            asyncio.run(_seed(sqlalchemy_url))
        yield sqlalchemy_url
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(PG_ADMIN)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def _seed(url: str) -> None:
    from evochips import lifecycle
    from evochips.db import Database

    db = Database(url)
    try:
        for n in range(CHIPS):
            await lifecycle.register(db, f"bench-{n:04d}", "5511900000001")
    finally:
        await db.dispose()


# -- load generators -----------------------------------------------------------------------

WRK_SCRIPT = """
local kind, chips, secret, day = "%(kind)s", %(chips)d, "%(secret)s", "%(day)s"
local counter, threads = 0, %(threads)d
id = 0
local message = [[%(message)s]]
function setup(thread) thread:set("id", setup_id or 0); setup_id = (setup_id or 0) + 1 end
function init(args) wrk.method = "POST"; wrk.headers["Content-Type"] = "application/json"
  wrk.headers["x-evochips-token"] = secret end
function request()
  counter = counter + 1
  if kind == "unhandled" then return wrk.format(nil, "/webhooks/evolution", nil, message) end
  local n = counter * threads + id
  local chip = string.format("bench-%%04d", n %% chips)
  local round = math.floor(n / chips)
  local ms = round * 1000 + (n %% chips)
  local stamp = day .. string.format("T%%02d:%%02d:%%02d.%%03dZ",
    math.floor(ms / 3600000) %% 24, math.floor(ms / 60000) %% 60,
    math.floor(ms / 1000) %% 60, ms %% 1000)
  local state = '"connecting","statusReason":200'
  if kind == "changing" and round %% 2 == 1 then state = '"close","statusReason":428' end
  local body = '{"event":"connection.update","instance":"' .. chip .. '","data":{"instance":"'
    .. chip .. '","state":' .. state .. '},"date_time":"' .. stamp .. '"}'
  return wrk.format(nil, "/webhooks/evolution", nil, body)
end
"""


def body_for(kind: str, n: int, day: str = "2025-01-01") -> bytes:
    """The same bodies the wrk script makes, for the Python generator."""
    if kind == "unhandled":
        return json.dumps(MESSAGE_BODY).encode()
    chip, round_ = f"bench-{n % CHIPS:04d}", n // CHIPS
    ms = round_ * 1000 + n % CHIPS
    stamp = (f"{day}T{ms // 3600000 % 24:02d}:{ms // 60000 % 60:02d}:"
             f"{ms // 1000 % 60:02d}.{ms % 1000:03d}Z")  # fmt: skip
    state = {"state": "connecting", "statusReason": 200}
    if kind == "changing" and round_ % 2 == 1:
        state = {"state": "close", "statusReason": 428}
    body = {"event": "connection.update", "instance": chip, "data": {"instance": chip, **state},
            "date_time": stamp}  # fmt: skip
    return json.dumps(body).encode()


_days = iter(range(1, 10**6))


def next_day() -> str:
    """Each load run sends its events on a later day than the one before, so that a run
    on a database an earlier run used sends new events, not copies of old ones."""
    return (date(2025, 1, 1) + timedelta(days=next(_days))).isoformat()


def throughput(url: str, kind: str, options: Options) -> tuple[float, int]:
    """Requests per second, and how many answers were not 2xx."""
    if options.generator == "wrk":
        return _wrk(url, kind, options)
    return asyncio.run(_python_load(url, kind, options))


def _wrk(url: str, kind: str, options: Options) -> tuple[float, int]:
    threads = 2
    script = WRK_SCRIPT % {"kind": kind, "chips": CHIPS, "secret": SECRET, "threads": threads,
                           "message": json.dumps(MESSAGE_BODY), "day": next_day()}  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    command = ["wrk", "-t", str(threads), "-c", str(options.connections),
               "-d", f"{max(1, round(options.duration))}s", "-s", file.name, url]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    os.unlink(file.name)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    return rate, int(errors.group(1)) if errors else 0


async def _python_load(url: str, kind: str, options: Options) -> tuple[float, int]:
    """A closed-loop generator in this process (the server runs in others)."""
    counter = iter(range(10**9))
    day = next_day()
    failures = 0
    done = 0
    deadline = time.monotonic() + options.duration
    headers = {"x-evochips-token": SECRET, "content-type": "application/json"}

    async def sender(client: httpx.AsyncClient) -> None:
        nonlocal failures, done
        while time.monotonic() < deadline:
            answer = await client.post(
                "/webhooks/evolution", content=body_for(kind, next(counter), day)
            )
            done += 1
            failures += answer.status_code >= 300

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        await asyncio.gather(*(sender(client) for _ in range(options.connections)))
    return done / (time.monotonic() - started), failures


async def _fixed_rate(url: str, kind: str, rate: int, seconds: float) -> list[float]:
    """Open-loop load at ``rate`` requests per second; the latency of each, in ms."""
    headers = {"x-evochips-token": SECRET, "content-type": "application/json"}
    latencies: list[float] = []
    failures: list[int] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30,
                                 limits=httpx.Limits(max_connections=200)) as client:  # fmt: skip
        day = next_day()

        async def one(n: int) -> None:
            started = time.perf_counter()
            try:
                await client.post("/webhooks/evolution", content=body_for(kind, n, day))
            except httpx.TransportError:  # overloaded: counts, at the time it took to fail
                failures.append(n)
            latencies.append((time.perf_counter() - started) * 1000)

        tasks = []
        begin = time.perf_counter()
        for n in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, begin + n / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    if failures:
        print(f"  {len(failures)} of {len(latencies)} requests failed at {rate} req/s", flush=True)
    return latencies


# -- cases ----------------------------------------------------------------------------------


def _compare(
    options: Options,
    case: str,
    workers: int,
    ours: Callable[[], float],
    reference: Callable[[], float],
    goal: float,
    unit: str = "req/s",
    note: str = "",
) -> Figure:
    """Run ours and the reference alternately; the median of each, and the spread of the
    per-run ratios."""
    pairs = [(ours(), reference()) for _ in range(options.runs)]
    ratios = [a / b for a, b in pairs if b]
    mine = statistics.median(a for a, _ in pairs)
    theirs = statistics.median(b for _, b in pairs)
    ratio = mine / theirs if theirs else 0.0
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
    figure = Figure(case, workers, mine, theirs, unit, f">= {goal:.0%}", ratio >= goal,
                    options.runs, spread, note)  # fmt: skip
    options.figures.append(figure)
    print(f"{case} ({workers} worker{'s' * (workers > 1)}): {mine:.0f} vs {theirs:.0f} {unit} "
          f"= {ratio:.0%} (goal {figure.goal}, spread {spread})", flush=True)  # fmt: skip
    return figure


def _served(app: str, env: dict[str, str], workers: int, kind: str, options: Options) -> float:
    with serving(app, env, workers) as (address, _):
        return throughput(address, kind, options)[0]


def case_throughput(options: Options) -> None:
    for workers in options.workers:
        with database("sqlite") as url:
            ours = partial(_served, EVOCHIPS_APP, evochips_env(url), workers, options=options)
            bare = partial(_served, "reference:app", {"BENCH_MODE": "parse"}, workers,
                           options=options)  # fmt: skip
            _compare(options, "unhandled event (messages.upsert, 5 KB)", workers,
                     partial(ours, "unhandled"), partial(bare, "unhandled"), 0.70)  # fmt: skip
            _compare(options, "no-op connecting, known chip (storm)", workers,
                     partial(ours, "noop"), partial(bare, "noop"), 0.50)  # fmt: skip


def _durable_ours(kind: str, workers: int, options: Options, errors: list[int]) -> float:
    with database(kind) as url, serving(EVOCHIPS_APP, evochips_env(url), workers) as (address, _):
        rate, failed = throughput(address, "changing", options)
        errors.append(failed)
        return rate


def _durable_reference(kind: str, mode: str, workers: int, options: Options) -> float:
    with database(kind, seed=False) as url:
        raw = url.replace("postgresql+asyncpg://", "postgresql://")
        raw = raw.replace("sqlite+aiosqlite:///", "")
        return _served("reference:app", {"BENCH_MODE": mode, "BENCH_DATABASE": raw}, workers,
                       "changing", options)  # fmt: skip


def case_durable(options: Options) -> None:
    for kind, mode in (("postgresql", "asyncpg"), ("sqlite", "aiosqlite")):
        for workers in options.workers:
            errors: list[int] = []
            figure = _compare(
                options,
                f"state-changing event, durable ({kind})",
                workers,
                partial(_durable_ours, kind, workers, options, errors),
                partial(_durable_reference, kind, mode, workers, options),
                0.60,
            )
            figure.note = f"non-2xx answers: {sum(errors)}"
            bare = _served("reference:app", {"BENCH_MODE": "parse"}, workers, "changing", options)
            share = figure.ours / bare if bare else 0.0
            options.figures.append(Figure(
                f"state-changing event ({kind}) against the bare endpoint", workers,
                figure.ours, bare, "req/s", ">= 12%", share >= 0.12, options.runs, "-",
            ))  # fmt: skip


def case_latency(options: Options) -> None:
    seconds = options.duration
    with database("sqlite") as url:
        for rate in options.rates:
            with serving(EVOCHIPS_APP, evochips_env(url), 1) as (address, _):
                ours = asyncio.run(_fixed_rate(address, "changing", rate, seconds))
            with serving("reference:app", {"BENCH_MODE": "parse"}, 1) as (address, _):
                bare = asyncio.run(_fixed_rate(address, "changing", rate, seconds))
            for name, pick in (("p50", 0.50), ("p99", 0.99)):
                mine, theirs = _percentile(ours, pick), _percentile(bare, pick)
                goal = 3.0
                options.figures.append(Figure(
                    f"{name} latency at {rate} req/s (state-changing, SQLite)", 1, mine, theirs,
                    "ms", "p99 <= 3x" if name == "p99" else "-",
                    name != "p99" or mine <= goal * theirs, 1, "-",
                ))  # fmt: skip
                print(f"{name} at {rate} req/s: {mine:.2f} ms vs {theirs:.2f} ms", flush=True)


def _percentile(values: list[float], pick: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(pick * len(ordered)))] if ordered else 0.0


def case_round_trips(options: Options) -> None:
    """Database round trips per applied (state-changing) webhook, counted in process."""
    for kind in ("sqlite", "postgresql"):
        with database(kind) as url:
            count = asyncio.run(_count_round_trips(url))
        options.figures.append(Figure(
            f"database round trips per applied webhook ({kind})", 1, count, 3, "round trips",
            "<= 3", count <= 3, 1, "-",
        ))  # fmt: skip
        print(f"round trips per applied webhook ({kind}): {count:.1f}", flush=True)


async def _count_round_trips(url: str) -> float:
    from sqlalchemy import event

    from evochips.db import Database
    from evochips.receiver import create_app

    db = Database(url)
    trips = 0

    def counted(*args: Any) -> None:
        nonlocal trips
        trips += 1

    app = create_app(db, SECRET)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b",
                                 headers={"x-evochips-token": SECRET}) as client:  # fmt: skip
        for n in range(200):  # the first round: each chip starts connecting
            await client.post("/webhooks/evolution", content=body_for("changing", n, "2025-02-01"))
        for name in ("before_cursor_execute", "commit", "rollback"):
            event.listen(db.engine.sync_engine, name, counted)
        if db.engine.dialect.name == "postgresql":
            event.listen(db.engine.sync_engine, "begin", counted)
        applied = 0
        for n in range(CHIPS, CHIPS + 200):  # the second round closes each: a real change
            body = body_for("changing", n, "2025-02-01")
            answer = await client.post("/webhooks/evolution", content=body)
            applied += answer.json().get("outcome") == "applied"
    await db.dispose()
    return trips / max(applied, 1)


def case_command_overhead(options: Options) -> None:
    port = free_port()
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "evochips", "sandbox", "--port", str(port), "--time-scale", "0.01"],
        cwd=tempfile.gettempdir(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        with database("sqlite") as db_url:
            ours, direct = asyncio.run(_command_overhead(url, db_url, max(20, options.runs * 50)))
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
    mine, theirs = statistics.median(ours), statistics.median(direct)
    options.figures.append(Figure(
        "InstanceManager.verificar_conexao against the same call made with httpx", 1, mine,
        theirs, "ms (median)", "<= +2 ms", mine - theirs <= 2.0, len(ours), "-",
        f"added {mine - theirs:.2f} ms",
    ))  # fmt: skip
    print(f"command overhead: {mine:.2f} ms vs {theirs:.2f} ms", flush=True)


async def _command_overhead(url: str, db_url: str, calls: int) -> tuple[list[float], list[float]]:
    """Each call timed both ways, alternately: the manager (which also records the answer
    in the database) and a bare httpx request for the same state."""
    from evochips.db import Database
    from evochips.evolution.client import EvolutionClient
    from evochips.evolution.shapes import WebhookTarget
    from evochips.manager import InstanceManager

    db = Database(db_url)
    client = EvolutionClient(url, "sandbox-global-key", api_version=2)
    manager = InstanceManager(db, client, WebhookTarget("http://127.0.0.1:9/hook"))
    assert (await manager.criar_instancia("bench-cmd", "5511900000001"))["sucesso"]
    raw = httpx.AsyncClient(base_url=url, headers={"apikey": "sandbox-global-key"})
    ours, direct = [], []
    for _ in range(calls):
        started = time.perf_counter()
        await raw.get("/instance/connectionState/bench-cmd")
        direct.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await manager.verificar_conexao("bench-cmd")
        ours.append((time.perf_counter() - started) * 1000)
    await raw.aclose()
    await manager.aclose()
    await db.dispose()
    return ours, direct


def case_memory(options: Options) -> None:
    with (
        database("sqlite") as url,
        serving("evochips.receiver.asgi:app", evochips_env(url), 1) as (address, process),
    ):
        time.sleep(1)
        before = _rss(process.pid)
        sent = 0
        burst = Options(**{**asdict(options), "duration": max(1.0, options.duration),
                           "figures": []})  # fmt: skip
        while sent < options.deliveries:
            rate, _ = throughput(address, "noop" if sent % 2 else "changing", burst)
            sent += int(rate * burst.duration)
        after = _rss(process.pid)
    growth = (after - before) / before
    options.figures.append(Figure(
        f"resident memory after {sent:,} deliveries over {CHIPS:,} chips", 1, after / 2**20,
        before / 2**20, "MiB", "growth <= 20%", growth <= 0.20, 1, "-", f"growth {growth:.0%}",
    ))  # fmt: skip
    print(f"memory: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB after {sent} deliveries")


def _rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(kib.group(1)) * 1024 if kib else 0


CASES = {
    "throughput": case_throughput,
    "durable": case_durable,
    "latency": case_latency,
    "round-trips": case_round_trips,
    "commands": case_command_overhead,
    "memory": case_memory,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="A smoke run with tiny numbers.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per measurement.")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--json", help="Where to write the figures (default: "
                        "bench/results.json, or bench/results-quick.json with --quick, so a "
                        "smoke run never replaces the figures of a full one).")  # fmt: skip
    args = parser.parse_args(argv)
    if args.json is None:
        args.json = str(BENCH / ("results-quick.json" if args.quick else "results.json"))
    generator = "wrk" if shutil.which("wrk") else "python"
    options = Options(
        duration=1.0 if args.quick else args.duration,
        runs=1 if args.quick else args.runs,
        connections=4 if args.quick else args.connections,
        workers=[1] if args.quick else [int(w) for w in args.workers.split(",")],
        deliveries=500 if args.quick else args.deliveries,
        rates=[20] if args.quick else [100, 200],
        generator=generator,
    )
    for name in args.cases.split(","):
        CASES[name](options)
    _print_table(options.figures)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "generator": generator,
        "quick": args.quick,
        "figures": [{**asdict(f), "ratio": round(f.ratio, 3)} for f in options.figures],
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


def _print_table(figures: list[Figure]) -> None:
    row = "{:<66} {:>2} {:>10} {:>10} {:>6} {:>14} {:>4} {:>10}"
    print("\n" + row.format("case", "w", "ours", "reference", "ratio", "goal", "met", "spread"))
    for f in figures:
        met = "yes" if f.met else "NO"
        print(row.format(f.case[:66], f.workers, f"{f.ours:.2f}", f"{f.reference:.2f}",
                         f"{f.ratio:.2f}", f.goal, met, f.spread))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
