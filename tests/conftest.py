"""Shared fixtures: real PostgreSQL (pytest-django's test database) and real Redis."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from rest_framework.test import APIClient

from codexgw import redis as gwredis

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_redis() -> Iterator[None]:
    """Every test starts and ends with no keys under the test run's prefix."""

    def wipe() -> None:
        client = gwredis.sync_client()
        assert client is not None, "tests run against real Redis: REDIS_URL must be set"
        keys = list(client.scan_iter(match=settings.CODEXGW_REDIS_PREFIX + "*", count=1000))
        if keys:
            client.delete(*keys)

    wipe()
    yield
    wipe()


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def agentserver_headers() -> dict[str, str]:
    return {"HTTP_X_INTERNAL_SECRET": settings.CXG_AGENTSERVER_INTERNAL_SECRET}


@pytest.fixture
def shared_headers() -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {settings.CXG_INTERNAL_SHARED_SECRET}"}


@pytest.fixture
def database_down(transactional_db: None) -> Iterator[None]:
    """Point the default connection at a port where no database listens, as in an outage."""
    connection = connections["default"]
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update({"HOST": "127.0.0.1", "PORT": "1"})
    connection.settings_dict.setdefault("OPTIONS", {})["connect_timeout"] = 1
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


@pytest.fixture
def redis_down(settings) -> None:
    """Point the Redis-backed stores at a port where nothing listens, as in an outage."""
    settings.REDIS_URL = "redis://127.0.0.1:1/0"


@dataclass
class GatewayProcess:
    """A real gateway (``manage.py serve``) in a subprocess, on the test database."""

    process: subprocess.Popen[str]
    base_url: str
    output: list[str] = field(default_factory=list)

    @property
    def host_port(self) -> str:
        return self.base_url.removeprefix("http://")

    def log(self) -> str:
        return "".join(self.output)


def _test_database_url() -> str:
    db = connections["default"].settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def gateway_server(transactional_db: None) -> Iterator[GatewayProcess]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": _test_database_url(),
            "CODEXGW_REDIS_PREFIX": settings.CODEXGW_REDIS_PREFIX,
            "PYTHONUNBUFFERED": "1",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    gateway = GatewayProcess(process=process, base_url="")
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            gateway.output.append(line)
            match = re.search(r"codexgw listening on (http://\S+)", line)
            if match and not ready.is_set():
                gateway.base_url = match.group(1)
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(30):
        process.kill()
        pytest.fail(f"gateway did not start:\n{gateway.log()}")
    try:
        yield gateway
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def codex_bin() -> Path:
    """The pinned real codex binary, installed by ``scripts/test`` (npm ci)."""
    base = REPO / "node_modules" / "@openai"
    candidates = sorted(base.glob("codex-linux-*/vendor/*/bin/codex")) if base.exists() else []
    if not candidates:
        pytest.fail("the pinned @openai/codex npm package is not installed: run scripts/test (it runs npm ci)")
    return candidates[0]
