"""The soak runner (``python -m bench.soak``) runs end to end: two ``reconnect`` runs with a short
ticker, every line accounted for. The long soak itself is run by hand (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINES = 40

pytestmark = pytest.mark.e2e


def test_the_soak_runs_two_reconnects_and_accounts_for_every_line(tmp_path: Path) -> None:
    # A subprocess: the soak creates, migrates and drops its own database and sets up Django on
    # it, which cannot happen inside this already-configured test process.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST", "DJANGO_", "DATABASE_"))}
    env.pop("CODEXGW_REDIS_PREFIX", None)
    report = tmp_path / "soak.json"
    command = [sys.executable, "-m", "bench.soak", "--scenarios", "reconnect=2", "--lines", str(LINES)]
    command += ["--cut-within", "0.05", "--minutes", "2", "--logs", str(tmp_path / "logs"), "--json", str(report)]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| scenario | busy loops | runs | lossy runs |" in run.stdout
    assert "| reconnect | 0 | 2 | 0 | 80 | 80 | 0 |" in run.stdout, run.stdout
    data = json.loads(report.read_text())
    (summary,) = data["summary"]
    assert (summary["runs"], summary["lossy_runs"], summary["lines_missing"]) == (2, 0, 0)
    for each in data["runs"]:
        assert each["notes"]["connections_cut"] >= 1, each  # the executor's connection really was cut
        (stream,) = each["streams"]
        assert (stream["missing_lines"], stream["seq_gaps"], stream["output_lost"]) == ([], [], []), stream
        assert (stream["exited"], stream["closed"]) == (True, True), stream
