"""The supervisor's messages between gateway processes, on each one's channel (``bridge.process_rpc``).

Only a workspace's owner can act on its child. A shutdown or restart asked for in another
process becomes ``appserver.shutdown`` on the owner's channel (named in its lease). The periodic
checkpoint runs in a Celery worker, which has neither the children nor their files, so it only
publishes ``appserver.checkpoint`` to each owner's channel, and each owner persists its live
workspaces itself, without stopping them: beat keeps the single schedule for the cluster, and a
process that is busy or gone simply misses one round. Other message types go to handlers
registered with ``on_message`` (the TUI proxy's relays).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from appgateway.leases import LeaseInfo
from bridge import process_rpc
from codexgw import redis as gwredis

CHECKPOINT = "appserver.checkpoint"
SHUTDOWN = "appserver.shutdown"


class Owner(Protocol):
    """What these messages ask of the supervisor (it sends them too, so it is not imported here)."""

    def in_background(self, coroutine: Awaitable[Any], name: str) -> None: ...

    async def checkpoint_all(self) -> int: ...

    async def shutdown(self, workspace_id: str, reason: str) -> None: ...


def install(supervisor: Owner) -> None:
    """Act on the supervisor's own messages arriving on this process's channel (``AppGatewayConfig.ready()``).
    The work runs in a task of its own: handlers run on the channel's reader task."""

    async def on_checkpoint(message: dict[str, Any]) -> None:
        supervisor.in_background(supervisor.checkpoint_all(), "appserver checkpoint")

    async def on_shutdown(message: dict[str, Any]) -> None:
        workspace_id = str(message["workspace_id"])
        reason = str(message.get("reason", "requested"))
        supervisor.in_background(supervisor.shutdown(workspace_id, reason), f"shutdown {workspace_id}")

    process_rpc.on_message(CHECKPOINT, on_checkpoint)
    process_rpc.on_message(SHUTDOWN, on_shutdown)


def on_message(message_type: str, handler: process_rpc.MessageHandler) -> None:
    """Handle ``message_type`` arriving on this process's channel (``process_rpc.process_channel()``).
    Handlers run in arrival order on the channel's reader task, so they must return quickly."""
    if message_type in (CHECKPOINT, SHUTDOWN):
        raise ValueError(f"{message_type} is the supervisor's own message type")
    process_rpc.on_message(message_type, handler)


async def ask_owner_to_shut_down(owner: LeaseInfo, workspace_id: str, reason: str) -> None:
    layer = get_channel_layer()
    assert layer is not None
    await layer.send(owner.channel_name, {"type": SHUTDOWN, "workspace_id": workspace_id, "reason": reason})


def tell_owner(owner: LeaseInfo | None, message: dict[str, Any], owner_loop: asyncio.AbstractEventLoop | None) -> bool:
    """Send ``message`` to ``owner``'s channel from sync code (blocking). ``owner_loop``: this
    process's supervisor loop, for the embedded default, whose in-memory channel layer is bound to
    it (one process: the owner is this one). False when there is nobody to tell."""
    layer = get_channel_layer()
    if owner is None or not owner.channel_name or layer is None:
        return False
    if gwredis.embedded():
        if owner_loop is None:
            return False
        asyncio.run_coroutine_threadsafe(layer.send(owner.channel_name, message), owner_loop)
        return True
    async_to_sync(layer.send)(owner.channel_name, message)
    return True
