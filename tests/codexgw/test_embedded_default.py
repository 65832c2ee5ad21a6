"""With no environment at all the gateway runs on the embedded default (SQLite, in-memory
channel layer, the stores on an in-process fakeredis, in-process periodic jobs, generated local
secrets)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from codexgw.model_key import MISSING_KEY

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, django
from django.conf import settings
django.setup()
from channels.layers import get_channel_layer
from codexgw import redis as gwredis
from executors.presence import Holder, presence_store
from executors.revocation import revoked_set
presence_store().claim("exe_probe", Holder("chan", "conn", 0.0))
revoked_set().add("trn_probe", 2**40)
print(json.dumps({
    "engine": settings.DATABASES["default"]["ENGINE"],
    "layer": type(get_channel_layer()).__name__,
    "eager": settings.CELERY_TASK_ALWAYS_EAGER,
    "store": type(gwredis.sync_client()).__name__,
    "presence": presence_store().get("exe_probe").connection_id,
    "revoked": revoked_set().contains("trn_probe"),
    "shared": settings.CXG_INTERNAL_SHARED_SECRET,
    "agentserver": settings.CXG_AGENTSERVER_INTERNAL_SECRET,
}))
"""


def clean_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Nothing from the developer's or CI's environment: only what a fresh shell has."""
    return {"PATH": os.environ["PATH"], "HOME": str(data_dir), "CODEXGW_DATA_DIR": str(data_dir), **extra}


def run_probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env={**env, "DJANGO_SETTINGS_MODULE": "codexgw.settings"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_no_environment_means_embedded_default(tmp_path):
    first = run_probe(clean_env(tmp_path))
    assert first.returncode == 0, first.stderr
    values = json.loads(first.stdout.strip().splitlines()[-1])
    assert values["engine"] == "django.db.backends.sqlite3"
    assert values["layer"] == "InMemoryChannelLayer"
    assert values["eager"] is True
    # The shared stores run their Redis code on an in-process fakeredis.
    assert values["store"] == "FakeRedis"
    assert values["presence"] == "conn"
    assert values["revoked"] is True
    secrets_file = tmp_path / "local-secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert values["shared"]
    assert values["agentserver"]
    assert values["shared"] != values["agentserver"]
    # Generated once, then stable across restarts.
    second = json.loads(run_probe(clean_env(tmp_path)).stdout.strip().splitlines()[-1])
    assert second["shared"] == values["shared"]


def test_production_without_secrets_refuses_to_start(tmp_path):
    result = run_probe(clean_env(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1:5432/codexgw"))
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required" in result.stderr
    assert not (tmp_path / "local-secrets.json").exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [("CXG_PORT", "http"), ("CXG_RELAY_DEFAULT_TTL", "five minutes"), ("CODEXGW_LOCAL_SECRETS", "perhaps")],
)
def test_bad_values_stop_the_process_naming_the_variable(tmp_path, name, value):
    result = run_probe(clean_env(tmp_path, **{name: value}))
    assert result.returncode != 0
    assert f"{name}={value!r}" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_embedded_default_serves_admin_and_api(tmp_path):
    env = clean_env(tmp_path)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"], cwd=REPO, env=env, check=True, capture_output=True
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http("GET", f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "embedded gateway did not start"
            time.sleep(0.2)
        status, body = http("GET", f"{base}/readyz")
        assert status == 200, body
        readiness = json.loads(body)
        assert readiness["checks"]["redis"] == "not used"
        assert readiness["backends"]["stores"] == "in-process"
        # No environment means built-in identity and no model key: a warning, not unreadiness.
        assert readiness["warnings"] == [MISSING_KEY]
        status, body = http("GET", f"{base}/admin/login/")
        assert status == 200
        assert b"codexgw administration" in body
        assert http("GET", f"{base}/static/admin/css/base.css")[0] == 200
        secrets = json.loads((tmp_path / "local-secrets.json").read_text())
        status, body = http(
            "POST",
            f"{base}/api/codex-exec/register",
            b'{"display_name": "laptop"}',
            {
                "Content-Type": "application/json",
                "X-Internal-Secret": secrets["CXG_AGENTSERVER_INTERNAL_SECRET"],
                "X-User-Id": "u1",
            },
        )
        assert status == 201, body
        assert json.loads(body)["exe_id"].startswith("exe_")
        assert (tmp_path / "codexgw.sqlite3").exists()
    finally:
        server.terminate()
        output = server.communicate(timeout=10)[0]
    # The admin's address with the port really served (localadmin cannot know --port).
    assert f"admin: {base}/admin/" in output


@pytest.mark.parametrize(("key", "warnings"), [("", 1), ("sk-test", 0)])
def test_serve_warns_once_at_start_about_a_missing_model_key(tmp_path, key, warnings):
    server = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(free_port())],
        cwd=REPO,
        env=clean_env(tmp_path, CXG_CODEX_API_KEY=key),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    lines = []
    try:
        for line in server.stdout:
            lines.append(line)
            if "codexgw listening on" in line:
                break
    finally:
        server.terminate()
        server.wait(10)
    output = "".join(lines)
    assert "codexgw listening on" in output, output
    logged = [json.loads(line) for line in lines if MISSING_KEY in line]
    assert [(entry["level"], entry["msg"]) for entry in logged] == [("warning", MISSING_KEY)] * warnings, output
