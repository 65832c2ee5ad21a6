"""Registering the workspace's executors with its running app-server, and keeping that true while
it runs (issue #14).

* **At spawn** (``after_start``, the spawn builder's ``SpawnConfig.after_start``): over the
  app-server's own loopback WebSocket, ``initialize`` with ``experimentalApi`` and one
  ``environment/add {environmentId: <binding name>, execServerUrl: <this process>/bridge/<exe_id>,
  authBearerToken: <token_for(exe_id)>}`` per bound executor. The token is only ever in that frame:
  not in argv, the child's environment, a URL or CODEX_HOME.
* **When the bindings change** (a binding saved or deleted, after the commit): the process whose
  app-server serves the workspace is told (``environments.changed`` on its channel, so whichever
  process or admin changed it) and adds every binding again, under the supervisor's workspace lock.
  ``environment/add`` with a known id replaces that environment (measured on 0.171.0), so a new
  binding becomes selectable and a name moved to another executor follows it; the recorded names
  lose deleted bindings, so new threads no longer get them (the bridge app closes their open
  bridges and refuses new ones). codex has no ``environment/remove``.
* **Renewal** (``register_again``): the spawn builder calls it, with fresh tokens behind
  ``token_for``, before the spawn's tokens expire.

What each process remembers of its own spawns (``_spawns``) is only about children it runs: no
other process can reach them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from django.db import transaction
from websockets.asyncio.client import connect as ws_connect

from appgateway import environments, process_messages
from appgateway.app_server_process import AppServerHandle
from appgateway.supervisor import Supervisor, get_supervisor
from bridge.protocol import MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

CLIENT_INFO: Final = {"name": "codexgw-environments", "version": "0.1.0"}
BINDINGS_CHANGED: Final = "environments.changed"
REGISTER_TIMEOUT: Final = 15.0

TokenFor = Callable[[str], str]  # exe_id → the capability token its environment uses


@dataclass(frozen=True)
class _Spawn:
    ws_base_url: str  # this process's own WebSocket base, where the environments' bridges are
    token_for: TokenFor


_spawns: dict[str, _Spawn] = {}  # workspace_id → how its app-server in this process registers


class RegistrationError(Exception):
    pass


async def _call(ws: Any, request_id: int, method: str, params: dict[str, Any]) -> Any:
    await ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
    while True:
        message = json.loads(await ws.recv())
        if isinstance(message, dict) and message.get("id") == request_id and "method" not in message:
            if "error" in message:
                raise RegistrationError(f"{method}: {message['error']}")
            return message.get("result")


async def register(workspace_id: str, app_server_ws_url: str, ws_base_url: str, token_for: TokenFor) -> list[str]:
    """Add every executor bound to the workspace as an environment of its app-server; returns the
    names added. A binding codex refuses is logged and skipped."""
    found = await environments.bindings(workspace_id)
    added: list[str] = []
    async with ws_connect(app_server_ws_url, compression=None, max_size=MAX_MESSAGE_BYTES, ping_interval=None) as ws:
        await _call(ws, 0, "initialize", {"clientInfo": CLIENT_INFO, "capabilities": {"experimentalApi": True}})
        await ws.send(json.dumps({"method": "initialized"}))
        for request_id, binding in enumerate(found, start=1):
            try:
                params = environments.environment_add_params(binding, ws_base_url, token_for(binding.exe_id))
                await _call(ws, request_id, "environment/add", params)
            except RegistrationError as exc:
                logger.warning(
                    "executor not added as an environment",
                    extra={"workspace_id": workspace_id, "environment": binding.name, "error": str(exc)},
                )
                continue
            added.append(binding.name)
    logger.info("executors added as environments", extra={"workspace_id": workspace_id, "environments": added})
    return added


def after_start(ws_base_url: str, token_for: TokenFor) -> Callable[[AppServerHandle], Awaitable[None]]:
    """The spawn builder's ``SpawnConfig.after_start`` for one spawn."""

    async def hook(handle: AppServerHandle) -> None:
        await environments.save_registered(handle.workspace_id, [])  # a failed registration leaves none behind
        _spawns[handle.workspace_id] = _Spawn(ws_base_url, token_for)
        added = await register(handle.workspace_id, handle.ws_url, ws_base_url, token_for)
        await environments.save_registered(handle.workspace_id, added)

    return hook


async def register_again(workspace_id: str) -> bool:
    """Add the workspace's current bindings to its app-server in this process again (fresh tokens
    from its spawn's ``token_for``) and record what it accepted; False when it does not run here.
    On a failure the names recorded before stay."""

    async def again(handle: AppServerHandle) -> None:
        spawn = _spawns.get(workspace_id)
        if spawn is None:
            return
        try:
            async with asyncio.timeout(REGISTER_TIMEOUT):
                added = await register(workspace_id, handle.ws_url, spawn.ws_base_url, spawn.token_for)
        except Exception:
            logger.warning(
                "registering the environments again failed", extra={"workspace_id": workspace_id}, exc_info=True
            )
            return
        await environments.save_registered(workspace_id, added)

    return await get_supervisor().with_running(workspace_id, again)


async def forget(workspace_id: str) -> None:
    """A stop hook: the workspace's app-server here is gone."""
    _spawns.pop(workspace_id, None)


def bindings_changed(workspace_id: str) -> None:
    """Tell the process whose app-server serves the workspace that its bindings changed (blocking)."""
    try:
        get_supervisor().tell_owner(workspace_id, {"type": BINDINGS_CHANGED, "workspace_id": workspace_id})
    except Exception:
        # The next spawn registers them anyway; a thread meanwhile sees the bindings as they were.
        logger.warning(
            "could not tell the app-server's owner of a binding change",
            extra={"workspace_id": workspace_id},
            exc_info=True,
        )


def _binding_saved_or_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    workspace_id = str(instance.workspace_id)
    transaction.on_commit(lambda: bindings_changed(workspace_id))


def install(supervisor: Supervisor) -> None:
    """Wire registration into the app (``AppGatewayConfig.ready()``)."""
    from django.db.models.signals import post_delete, post_save

    from executors.models import WorkspaceExecutor

    async def on_bindings_changed(message: dict[str, Any]) -> None:
        workspace_id = str(message["workspace_id"])
        supervisor.in_background(register_again(workspace_id), f"register environments of {workspace_id}")

    process_messages.on_message(BINDINGS_CHANGED, on_bindings_changed)
    supervisor.add_stop_hook(forget)
    for name, signal in (("saved", post_save), ("deleted", post_delete)):
        signal.connect(_binding_saved_or_deleted, sender=WorkspaceExecutor, dispatch_uid=f"appgateway.binding_{name}")
