"""Shared fixtures: real PostgreSQL (pytest-django's test database) and real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.layers import channel_layers
from django.conf import settings
from django.db import connections
from rest_framework.test import APIClient

from codexgw import redis as gwredis
from tests.e2e.harness import GatewayProcess, gateway_database_url

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_redis() -> Iterator[None]:
    """Every test starts and ends with no keys under the test run's prefix."""

    def wipe() -> None:
        assert settings.REDIS_URL, "tests run against real Redis: REDIS_URL must be set"
        client = gwredis.sync_client()
        keys = list(client.scan_iter(match=settings.CODEXGW_REDIS_PREFIX + "*", count=1000))
        if keys:
            client.delete(*keys)

    wipe()
    yield
    wipe()


@pytest.fixture
def fresh_channel_layer() -> Iterator[None]:
    """This test's own channel layer: the layer keeps an inbox (a reader task, a Redis client) per
    event loop, and every test runs on an event loop of its own."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(params=["redis", "embedded"])
def store_backend(request: pytest.FixtureRequest, settings: Any) -> Iterator[str]:
    """Run a store test on the real Redis and on the embedded default's in-process fakeredis
    (``REDIS_URL`` empty): the same store code on both."""
    if request.param == "embedded":
        settings.REDIS_URL = ""
        gwredis.sync_client().flushall()
    yield request.param
    if request.param == "embedded":
        gwredis.sync_client().flushall()


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


def _test_database_url() -> str:
    return gateway_database_url()


@pytest.fixture
def gateway_server(transactional_db: None) -> Iterator[GatewayProcess]:
    """One real gateway (``manage.py serve``) on the test database; see ``tests/e2e/harness.py``."""
    gateway = GatewayProcess.start()
    try:
        yield gateway
    finally:
        gateway.terminate()


@pytest.fixture(scope="session")
def codex_bin() -> Path:
    """The pinned real codex binary, installed by ``scripts/test`` (npm ci)."""
    base = REPO / "node_modules" / "@openai"
    candidates = sorted(base.glob("codex-linux-*/vendor/*/bin/codex")) if base.exists() else []
    if not candidates:
        pytest.fail("the pinned @openai/codex npm package is not installed: run scripts/test (it runs npm ci)")
    return candidates[0]
