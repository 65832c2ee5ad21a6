"""The management commands that read the database, run against one the gateway never set up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from codexgw.settings import BASE_DIR


@pytest.mark.parametrize("command", [["createtoken", "default"], ["environmentblock", "default", "laptop"]])
def test_an_empty_data_dir_gets_a_clear_error_not_a_traceback(tmp_path: Path, command: list[str]) -> None:
    # The embedded default's SQLite file of a CODEXGW_DATA_DIR the gateway never ran with.
    # A new user's shell: none of the test run's settings.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEXGW_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "manage.py", *command], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"the database {tmp_path / 'codexgw.sqlite3'} is not set up" in done.stderr
    assert "CODEXGW_DATA_DIR" in done.stderr
    assert "Traceback" not in done.stderr
