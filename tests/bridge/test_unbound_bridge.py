"""An executor leaving a workspace (unbound, or deleted with its bindings) closes the bridges that
reached it through that workspace, on every process: they joined the binding's group."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from bridge import ws_auth
from executors import captoken, services
from executors.models import WorkspaceExecutor
from executors.presence import Holder, presence_store

pytestmark = pytest.mark.django_db


@pytest.fixture
def exe_id() -> str:
    exe_id = services.register_executor("user-b", "box").executor.exe_id
    for workspace in ("ws-a", "ws-b"):
        WorkspaceExecutor.objects.create(workspace_id=workspace, executor_id=exe_id, name="box")
    presence_store().claim(exe_id, Holder("inbox-of-the-holder", "conn-1", time.time()))
    return exe_id


@pytest.fixture
def listening(exe_id: str) -> Iterator[dict[str, str]]:
    """A channel in each workspace's binding group, as a bridge of each would be."""
    layer = get_channel_layer()
    assert layer is not None
    channels = {workspace: async_to_sync(layer.new_channel)() for workspace in ("ws-a", "ws-b")}
    for workspace, channel in channels.items():
        async_to_sync(layer.group_add)(ws_auth.binding_group(workspace, exe_id), channel)
    yield channels
    for workspace, channel in channels.items():
        async_to_sync(layer.group_discard)(ws_auth.binding_group(workspace, exe_id), channel)


def told(channel: str) -> dict[str, Any] | None:
    layer = get_channel_layer()
    assert layer is not None

    async def receive() -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(0.3):
                message: dict[str, Any] = await layer.receive(channel)
                return message
        except TimeoutError:
            return None

    return async_to_sync(receive)()


def test_a_capability_tokens_bridge_joins_its_workspaces_binding_group(exe_id):
    token = captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="trn_x", workspace_id="ws-a", ttl=60)
    grant = ws_auth.authorize_bridge(exe_id, {"authorization": f"Bearer {token}"})
    assert isinstance(grant, ws_auth.BridgeGrant)
    assert grant.binding_group == ws_auth.binding_group("ws-a", exe_id)
    assert grant.binding_group != ws_auth.binding_group("ws-b", exe_id)


def test_unbinding_tells_that_workspaces_bridges_only(exe_id, listening, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.unbind_executor("ws-a", exe_id)
    assert told(listening["ws-a"]) == {"type": "bridge.unbound"}
    assert told(listening["ws-b"]) is None
    # And a new bridge through ws-a is refused from now on.
    token = captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="trn_x", workspace_id="ws-a", ttl=60)
    assert ws_auth.authorize_bridge(exe_id, {"authorization": f"Bearer {token}"}) == ws_auth.Denial(
        403, "exe_id not in workspace"
    )


def test_deleting_the_executor_tells_the_bridges_of_each_binding(exe_id, listening, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services.delete_executor(exe_id)
    assert told(listening["ws-a"]) == {"type": "bridge.unbound"}
    assert told(listening["ws-b"]) == {"type": "bridge.unbound"}


def test_nothing_is_told_when_the_transaction_rolls_back(exe_id, listening, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.unbind_executor("ws-a", exe_id)
    assert callbacks  # they wait for the commit; a rollback discards them
    assert told(listening["ws-a"]) is None
