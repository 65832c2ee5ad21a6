"""The benchmark harness runs end to end with tiny sizes and prints its tables. No timing is
asserted: the numbers are for people (docs/performance.md), not for the test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_the_bench_runs_with_tiny_sizes_and_prints_a_table() -> None:
    # A subprocess: the bench creates, migrates and drops its own database and sets up Django on
    # it, which cannot happen inside this already-configured test process.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST", "DJANGO_", "DATABASE_"))}
    env.pop("CODEXGW_REDIS_PREFIX", None)
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--rounds", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "| measurement | unit | (a) direct |" in out
    for measurement in (
        "fs/getMetadata p50",
        "fs/getMetadata p99",
        "fs/getMetadata p50, floor | ms |",
        "fs/readFile",
        "fs/readFile 1 MiB, floor | MB/s |",
        "fs/readFile 1 MiB: gateway CPU per read | ms | n/a |",
        "process/output",
        "process/output 1 MiB, floor | MB/s |",
        "process/output 1 MiB: gateway CPU per MiB | ms | n/a |",
        "process/output 1 MiB: floor CPU per MiB | ms | n/a |",
        "concurrent requests/s",
        "relay",
        "idle executors: presence online | 5/5",
        "app gateway: TUI connect",
        "exec_command round trip p50",
        "median of 2 rounds, per round b/a",
    ):
        assert measurement in out, out
