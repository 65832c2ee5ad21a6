"""The supervisor's spawn builder: what each workspace app-server gets besides the defaults.

* Model calls: ``appgateway.model_credentials.spawn_settings`` (env and provider base_url).
* env-mcp, as ``[mcp_servers.agentserver]``: this process's ``/mcp/env/<workspace_id>``
  (``appgateway.envmcp_http``, streamable HTTP on loopback), authenticated with a capability
  token minted for this spawn (turn id ``trn_<random>``, workspace-wide, no user,
  ``CXG_CAPTOKEN_TTL``). codex reads the token from ``CXG_WORKSPACE_TOKEN`` in its own
  environment (``bearer_token_env_var``): it is in no file, argv or URL.

* Executors as native environments: ``SpawnConfig.after_start`` registers every executor bound to
  the workspace with the running app-server (``appgateway.environment_registration``), each with a
  token of the spawn's turn limited to that executor (so revoking the turn stops them too). Before
  the turn expires (the last ``RENEW_SHARE`` of ``CXG_CAPTOKEN_TTL``) it is extended and the
  environments get fresh tokens; env-mcp's token, in the child's environment, cannot be replaced,
  so env-mcp accepts it while its turn lives (``envmcp_auth.set_turn_lifetime``).

Each spawn's turn id is remembered per workspace, and the next spawn of that workspace in this
process (a restart or a crash respawn) revokes it; revocation through the exec gateway also
closes the bridges env-mcp opened for the old spawn; its tool context is dropped too.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Final

from asgiref.sync import sync_to_async
from django.conf import settings

from appgateway import environment_registration, envmcp, envmcp_auth, model_credentials
from appgateway.app_server_process import AppServerHandle
from appgateway.codexhome import McpServer
from appgateway.supervisor import SpawnConfig, Supervisor, get_supervisor
from codexgw import runtime
from executors import captoken
from executors.revocation import revoke_turn

logger = logging.getLogger(__name__)

SERVER_NAME = "agentserver"
TOKEN_ENV = "CXG_WORKSPACE_TOKEN"  # noqa: S105 - the variable's name, not a secret
RENEW_SHARE: Final = 0.2  # of the TTL left when the environments' tokens are renewed


@dataclass(frozen=True)
class SpawnTurn:
    turn_id: str
    exp: int


_turns: dict[str, SpawnTurn] = {}  # workspace_id → the turn of its latest spawn in this process


def mint_turn(workspace_id: str, now: float | None = None) -> tuple[SpawnTurn, str]:
    """A new spawn turn for the workspace and its capability token."""
    issued = time.time() if now is None else now
    ttl = settings.CXG_CAPTOKEN_TTL
    turn = SpawnTurn(turn_id=f"trn_{secrets.token_hex(8)}", exp=int(issued) + int(ttl))
    token = captoken.mint(
        settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id=turn.turn_id, workspace_id=workspace_id, ttl=ttl, now=issued
    )
    return turn, token


def environment_token(workspace_id: str, turn: SpawnTurn, exe_id: str, now: float | None = None) -> str:
    """The capability token an environment of the spawn reaches its executor's bridge with: the
    spawn's turn (revoked with it), limited to that one executor, expiring with the turn."""
    issued = time.time() if now is None else now
    return captoken.mint(
        settings.CXG_CAPTOKEN_HMAC_SECRET,
        turn_id=turn.turn_id,
        workspace_id=workspace_id,
        ttl=max(1.0, turn.exp - issued),
        exe_ids=[exe_id],
        now=issued,
    )


def env_mcp_server(workspace_id: str, self_http_base_url: str) -> McpServer:
    """env-mcp on this process's own address; codex sends the token from ``TOKEN_ENV``."""
    return McpServer(
        name=SERVER_NAME,
        url=f"{self_http_base_url}{envmcp_auth.PATH_PREFIX}{workspace_id}",
        bearer_token_env_var=TOKEN_ENV,
    )


def _token_for(workspace_id: str, turn_id: str) -> environment_registration.TokenFor:
    """Environment tokens of the spawn's turn as it stands (renewal extends it)."""

    def token_for(exe_id: str) -> str:
        turn = _turns.get(workspace_id)
        if turn is None or turn.turn_id != turn_id:
            raise RuntimeError(f"the spawn turn of {workspace_id} is over")
        return environment_token(workspace_id, turn, exe_id)

    return token_for


async def _renew(workspace_id: str, turn_id: str) -> None:
    """While the spawn's turn is the workspace's latest here: before it expires, extend it by
    ``CXG_CAPTOKEN_TTL`` and give the app-server's environments fresh tokens."""
    ttl = settings.CXG_CAPTOKEN_TTL
    while (turn := _turns.get(workspace_id)) is not None and turn.turn_id == turn_id:
        await asyncio.sleep(max(1.0, turn.exp - time.time() - ttl * RENEW_SHARE))
        if _turns.get(workspace_id) != turn:
            continue
        _turns[workspace_id] = replace(turn, exp=int(time.time() + ttl))
        await environment_registration.register_again(workspace_id)
        logger.info("environment tokens renewed", extra={"workspace_id": workspace_id, "turn_id": turn_id})


async def revoke(workspace_id: str) -> None:
    """Revoke the workspace's latest spawn turn, if this process minted one."""
    turn = _turns.pop(workspace_id, None)
    if turn is not None:
        await sync_to_async(revoke_turn, thread_sensitive=False)(turn.turn_id, turn.exp)
        await envmcp.close_turn(turn.turn_id)
        logger.info("revoked the previous spawn's turn", extra={"workspace_id": workspace_id, "turn_id": turn.turn_id})


async def build(workspace_id: str) -> SpawnConfig:
    model = await model_credentials.spawn_settings(workspace_id)
    await revoke(workspace_id)
    try:
        self_http_base_url = runtime.self_http_base_url()
    except RuntimeError:
        # Only a process that serves (manage.py serve) has env-mcp and bridges; a script driving
        # the supervisor gets an app-server without executor tools.
        logger.warning("spawning without env-mcp: this process serves no routes", extra={"workspace_id": workspace_id})
        return model
    exec_gateway_url = runtime.self_ws_base_url()
    turn, token = mint_turn(workspace_id)
    _turns[workspace_id] = turn
    return replace(
        model,
        env={**model.env, TOKEN_ENV: token},
        mcp_servers=[env_mcp_server(workspace_id, self_http_base_url)],
        # Every bound executor becomes a native environment of the app-server, reached at this
        # process's /bridge with a token of the spawn's turn for that executor alone (sent over
        # the loopback WebSocket only).
        after_start=_register_and_renew(workspace_id, exec_gateway_url, turn.turn_id),
    )


def _register_and_renew(
    workspace_id: str, gateway_url: str, turn_id: str
) -> Callable[[AppServerHandle], Awaitable[None]]:
    register = environment_registration.after_start(gateway_url, _token_for(workspace_id, turn_id))

    async def hook(handle: AppServerHandle) -> None:
        get_supervisor().in_background(_renew(workspace_id, turn_id), f"renew environment tokens of {workspace_id}")
        await register(handle)

    return hook


def _turn_lifetime(workspace_id: str, turn_id: str) -> float | None:
    turn = _turns.get(workspace_id)
    return float(turn.exp) if turn is not None and turn.turn_id == turn_id else None


def install(supervisor: Supervisor) -> None:
    supervisor.set_spawn_builder(build)
    environment_registration.install(supervisor)
    envmcp_auth.set_turn_lifetime(_turn_lifetime)  # env-mcp's token, in the child's environment, lives on
    # The spawn's env-mcp token dies with its app-server, however that ends.
    supervisor.add_stop_hook(revoke)
