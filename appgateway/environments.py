"""The workspace's executors as native Codex environments of its app-server (issue #14).

* **Registration** (``appgateway.environment_registration``): every executor bound to the
  workspace is added to its app-server with ``environment/add`` at spawn and again whenever the
  bindings change; the names it accepted are recorded here (``save_registered``).
* **Selection** (``thread_start_environments`` and ``with_environments``, pure; ``default_selection``
  reads the bindings): a ``thread/start`` that names no environments (absent or ``null``, as the TUI
  sends it) gets the workspace's default executor first, with the client's ``cwd`` or else the
  executor's own working directory, then the other registered executors (the model reaches them
  with ``environment_id``); without a registered default, the accepted bindings oldest first;
  without any, ``[]``, so codex never falls back to its local environment (the gateway host).
  ``rpc_filter`` refuses requests that name ``local`` themselves. codex accepts ``environments``
  only from a connection that declared ``capabilities.experimentalApi``, so a TUI-proxy client's
  ``initialize`` is made to declare it. Threads codex resumes or forks without environments get
  them on their next turn (``appgateway.thread_environments``).

Measured facts behind this: ``docs/app-gateway.md``, "Native environments (measured on 0.171.0)".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async

from appgateway import supervisor
from appgateway.rpc_filter import Frame, encode, request_named
from appgateway.thread_environments import ThreadsWithoutEnvironments
from bridge import exec_session_store
from codexgw import redis as gwredis
from executors.environment_block import bridge_url
from executors.models import WorkspaceExecutor

logger = logging.getLogger(__name__)

FALLBACK_CWD: Final = "/"  # exists on every executor, holds nothing of the gateway's

# --- pure ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """An executor bound to the workspace, as an environment of its app-server."""

    name: str
    exe_id: str
    is_default: bool


def environment_add_params(binding: Binding, ws_base_url: str, token: str) -> dict[str, Any]:
    return {
        "environmentId": binding.name,
        "execServerUrl": bridge_url(ws_base_url, binding.exe_id),
        "authBearerToken": token,
    }


def path_from_file_uri(uri: Any) -> str | None:
    """``file:///a%20b`` → ``/a b``; anything else (no string, another scheme, a relative path) → None."""
    if not isinstance(uri, str):
        return None
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    path = unquote(parts.path)
    return path if path.startswith("/") else None


def thread_bindings(bindings: list[Binding], registered_names: Collection[str]) -> list[Binding]:
    """The bindings a new thread gets, the default first (codex runs a tool without
    ``environment_id`` in the first): those the app-server accepted (a name it does not know
    would make codex refuse the whole thread). Without a registered default (none is flagged, or
    codex refused it), the oldest accepted binding comes first: a workspace's only executor is
    used whether or not it was marked default."""
    registered = [binding for binding in bindings if binding.name in registered_names]
    default = next((binding for binding in registered if binding.is_default), None)
    if default is None:
        return registered
    return [default, *(binding for binding in registered if binding is not default)]


def selection(
    chosen: list[Binding], cwds: Mapping[str, str | None], client_cwd: str | None = None
) -> list[dict[str, Any]]:
    """The ``environments`` a thread gets: each chosen binding in its executor's directory
    (``cwds`` by exe_id; else ``/``), the first one in the client's ``cwd`` when it named one."""
    return [
        {
            "environmentId": binding.name,
            "cwd": (client_cwd if index == 0 else None) or cwds.get(binding.exe_id) or FALLBACK_CWD,
        }
        for index, binding in enumerate(chosen)
    ]


def thread_start_environments(frame: Frame) -> tuple[dict[str, Any], str | None] | None:
    """For a ``thread/start`` request that names no environments: the decoded request and the
    ``cwd`` the client named (or None). Anything else: None (the frame passes unchanged)."""
    message = request_named(frame, "thread/start")
    if message is None:
        return None
    params = message.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict) or params.get("environments") is not None:
        return None
    cwd = params.get("cwd")
    return message, cwd if isinstance(cwd, str) and cwd.startswith("/") else None


def initialize_without_experimental_api(frame: Frame) -> dict[str, Any] | None:
    """An ``initialize`` request that does not declare ``capabilities.experimentalApi: true``
    (decoded), else None. codex refuses ``thread/start.environments`` on such a connection."""
    message = request_named(frame, "initialize")
    params = message.get("params") if message is not None else None
    if message is None or not isinstance(params, dict):
        return None
    capabilities = params.get("capabilities")
    if isinstance(capabilities, dict) and capabilities.get("experimentalApi") is True:
        return None
    return message


def with_experimental_api(message: dict[str, Any]) -> str:
    """The ``initialize`` request with ``capabilities.experimentalApi: true`` (the rest kept)."""
    params = message["params"]
    capabilities = params.get("capabilities")
    capabilities = {**(capabilities if isinstance(capabilities, dict) else {}), "experimentalApi": True}
    return encode({**message, "params": {**params, "capabilities": capabilities}})


# turn/start keys that, without ``environments``, make codex re-select its default environments
# (the local one, the gateway host, first) in that directory. Measured on 0.171.0: after
# ``turn/start {cwd}`` on a thread of ``[box]``, exec_command ran on the gateway host. The TUI
# sends its own machine's directory there on every turn.
_TURN_PLACEMENT: Final = ("cwd", "runtimeWorkspaceRoots")


def turn_start_without_environments(frame: Frame) -> dict[str, Any] | None:
    """A ``turn/start`` request that names a ``cwd`` or ``runtimeWorkspaceRoots`` but no
    environments (decoded), else None."""
    message = request_named(frame, "turn/start")
    params = message.get("params") if message is not None else None
    if message is None or not isinstance(params, dict) or params.get("environments") is not None:
        return None
    if all(params.get(key) is None for key in _TURN_PLACEMENT):
        return None
    return message


def without_turn_placement(message: dict[str, Any]) -> str:
    """The ``turn/start`` without ``cwd`` and ``runtimeWorkspaceRoots``: the turn keeps the
    thread's environments, each in its own directory."""
    params = {key: value for key, value in message["params"].items() if key not in _TURN_PLACEMENT}
    return encode({**message, "params": params})


def with_environments(message: dict[str, Any], environments: list[dict[str, Any]]) -> str:
    """The request with ``params.environments`` set (everything else kept)."""
    params = message.get("params")
    rewritten = {**message, "params": {**(params if isinstance(params, dict) else {}), "environments": environments}}
    return encode(rewritten)


# --- reading the bindings -----------------------------------------------------------------------


def _bindings_sync(workspace_id: str) -> list[Binding]:
    rows = WorkspaceExecutor.objects.filter(workspace_id=workspace_id).order_by("created_at", "id")
    return [Binding(name=row.name, exe_id=row.executor_id, is_default=row.is_default) for row in rows]


bindings = database_sync_to_async(_bindings_sync)


# --- what the running app-server accepted ----------------------------------------------------------
# Redis key <prefix>environments:<workspace_id>: the names registered with the workspace's running
# app-server, for whichever process rewrites a thread/start of that workspace (the TUI's, not
# necessarily the owner's). Each spawn empties it before registering, under the spawn lock, so no
# thread of a new app-server sees the old names.


def _registered_key(workspace_id: str) -> str:
    return gwredis.key("environments", workspace_id)


def _save_registered(workspace_id: str, names: list[str]) -> None:
    gwredis.sync_client().set(_registered_key(workspace_id), json.dumps(names), ex=exec_session_store.KEEP_SECONDS)


def _load_registered(workspace_id: str) -> list[str]:
    raw = gwredis.sync_client().get(_registered_key(workspace_id))
    return [str(name) for name in json.loads(raw)] if isinstance(raw, str) else []


save_registered = sync_to_async(_save_registered, thread_sensitive=False)
load_registered = sync_to_async(_load_registered, thread_sensitive=False)


async def executor_cwd(exe_id: str) -> str | None:
    """The executor's working directory, from its exec-server's ``initialize`` answer
    (``environmentInfo.cwd``, a file URI), as the gateway saved it; None if never seen."""
    saved = await exec_session_store.load(exe_id)
    return path_from_file_uri(saved.environment_info.get("cwd")) if saved is not None else None


async def default_selection(workspace_id: str, client_cwd: str | None = None) -> list[dict[str, Any]]:
    """``environments`` for a new thread of the workspace that names none (see ``selection``).
    When the bindings cannot be read (an outage): none, so the thread still starts, on no machine."""
    try:
        if await supervisor.get_supervisor().lease_owner(workspace_id) is None:
            return []
        chosen = thread_bindings(await bindings(workspace_id), await load_registered(workspace_id))
        cwds = {binding.exe_id: await executor_cwd(binding.exe_id) for binding in chosen}
    except Exception:
        logger.warning(
            "default environment unknown: the thread gets none", extra={"workspace_id": workspace_id}, exc_info=True
        )
        return []
    return selection(chosen, cwds, client_cwd)


async def rewrite_client_frame(
    workspace_id: str, frame: Frame, threads: ThreadsWithoutEnvironments | None = None
) -> Frame:
    """A client's frame as the app-server gets it: ``initialize`` declares ``experimentalApi``
    (codex accepts ``thread/start.environments`` only then), a ``thread/start`` that names no
    environments gets the workspace's executors, and so does the first ``turn/start`` naming none
    on a thread that codex resumed or forked without any (``threads``, the connection's); another
    ``turn/start`` that names no environments loses its ``cwd`` and ``runtimeWorkspaceRoots``
    (which would bring back the local environment); any other frame is returned itself."""
    initialize = initialize_without_experimental_api(frame)
    if initialize is not None:
        return with_experimental_api(initialize)
    if threads is not None:
        threads.client_frame(frame)
        homeless = threads.turn_needing_environments(frame)
        if homeless is not None:
            placed = json.loads(without_turn_placement(homeless))
            return with_environments(placed, await default_selection(workspace_id))
    turn = turn_start_without_environments(frame)
    if turn is not None:
        return without_turn_placement(turn)
    found = thread_start_environments(frame)
    if found is None:
        return frame
    message, client_cwd = found
    environments = await default_selection(workspace_id, client_cwd)
    logger.info(
        "thread/start: environments filled in",
        extra={"workspace_id": workspace_id, "environments": [env["environmentId"] for env in environments]},
    )
    return with_environments(message, environments)


__all__ = [
    "Binding",
    "default_selection",
    "environment_add_params",
    "initialize_without_experimental_api",
    "path_from_file_uri",
    "rewrite_client_frame",
    "selection",
    "thread_bindings",
    "thread_start_environments",
    "turn_start_without_environments",
    "with_environments",
    "with_experimental_api",
    "without_turn_placement",
]
