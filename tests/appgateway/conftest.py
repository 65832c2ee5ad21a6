"""Fixtures for the app gateway: a fake model, a configured supervisor and an app-server client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.layers import channel_layers

from appgateway.supervisor import get_supervisor
from tests.appgateway.fake_model import FakeModel
from tests.e2e.harness import RpcClient

MODEL_KEY_NAME = "CXG_TEST_MODEL_KEY"
MODEL_KEY = "sk-fake-model-key"


@pytest.fixture
def fake_model() -> Iterator[FakeModel]:
    with FakeModel(default_text="Hello from the fake model") as model:
        yield model


@pytest.fixture
def appgw(settings, tmp_path: Path, codex_bin: Path, fake_model: FakeModel) -> Iterator[Any]:
    """Supervisor settings on a private tmp root and archive store, codex pointed at the fake model."""
    settings.CXG_CODEX_BIN = str(codex_bin)
    settings.CXG_TMP_ROOT = str(tmp_path / "homes")
    settings.STORAGES = {
        **settings.STORAGES,
        "codexhome": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "archives")},
        },
    }
    settings.CXG_MODEL_PROVIDER = "fake"
    settings.CXG_MODEL_PROVIDER_NAME = "Fake"
    settings.CXG_MODEL = fake_model.model
    settings.CXG_MODEL_PROVIDER_BASE_URL = fake_model.base_url
    settings.CXG_MODEL_PROVIDER_ENV_KEY = MODEL_KEY_NAME
    settings.CXG_CODEX_API_KEY = MODEL_KEY
    settings.CXG_PROJECT_TRUSTED_PATHS = [str(tmp_path)]
    settings.CXG_IDLE_SHUTDOWN = 1800.0
    settings.CXG_APP_SERVER_STOP_GRACE = 10.0
    settings.CXG_APP_SERVER_LEASE_TTL = 15.0
    # The channel layer caches per-loop state; every test runs on its own event loop.
    channel_layers.backends.clear()
    get_supervisor().set_spawn_builder(None)
    yield settings
    get_supervisor().set_spawn_builder(None)
    channel_layers.backends.clear()


@pytest.fixture
async def sup(appgw) -> AsyncIterator[Any]:
    """This process's supervisor, with every child of this test stopped at teardown."""
    supervisor = get_supervisor()
    try:
        yield supervisor
    finally:
        await supervisor.shutdown_all("test teardown")


async def app_client(ws_url: str) -> RpcClient:
    """A WebSocket JSON-RPC client of app-server, initialized (codex-wire §C.4)."""
    client = await RpcClient.connect(ws_url)
    await client.call_result("initialize", {"clientInfo": {"name": "codexgw-tests", "version": "0.0.1"}})
    await client.notify("initialized")
    return client


async def run_turn(client: RpcClient, cwd: str, text: str = "say hi", thread_id: str | None = None) -> dict[str, Any]:
    """Start a thread (unless given) and one turn; returns the turn/completed params."""
    if thread_id is None:
        started = await client.call_result("thread/start", {"cwd": cwd})
        thread_id = started["thread"]["id"]
    await client.call_result("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": text}]})
    while True:
        notification = await client.next_notification("turn/completed", timeout=60)
        if notification["params"]["threadId"] == thread_id:
            params: dict[str, Any] = notification["params"]
            return params
