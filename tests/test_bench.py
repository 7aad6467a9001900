"""A smoke run of every benchmark case with tiny numbers, so the benchmark cannot rot.

It checks that each case runs and reports figures, never how fast anything is: speed is
the benchmark's business (``bench/run``), not the test suite's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import POSTGRES_ADMIN_URL, ROOT, _asyncpg_dsn

CASES = {
    "unhandled event (messages.upsert, 5 KB)",
    "no-op connecting, known chip (storm)",
    "state-changing event, durable (postgresql)",
    "state-changing event (postgresql) against the bare endpoint",
    "state-changing event, durable (sqlite)",
    "state-changing event (sqlite) against the bare endpoint",
    "p50 latency at 20 req/s (state-changing, SQLite)",
    "p99 latency at 20 req/s (state-changing, SQLite)",
    "database round trips per applied webhook (sqlite)",
    "database round trips per applied webhook (postgresql)",
    "InstanceManager.verificar_conexao against the same call made with httpx",
}


def test_every_benchmark_case_runs_and_reports(postgres_url: str, tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    env = {**os.environ, "BENCH_POSTGRES_URL": _asyncpg_dsn(POSTGRES_ADMIN_URL)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--quick", "--json", str(results)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(results.read_text())
    figures = {figure["case"]: figure for figure in report["figures"]}
    assert set(figures) >= CASES, set(figures) ^ CASES
    assert any(case.startswith("resident memory after") for case in figures)
    for figure in report["figures"]:
        assert figure["ours"] > 0 and figure["reference"] > 0, figure
    assert "durable (sqlite)" in done.stdout and "met" in done.stdout
