"""The ``[[environments]]`` block that makes an executor an environment of a user's own codex.

codex reads environments from ``$CODEX_HOME/environments.toml`` (``~/.codex/environments.toml``
on a laptop; never ``config.toml``, codex-wire §C.10): ``id``, ``url`` and
``auth_bearer_token``, sent as ``Authorization: Bearer`` on the upgrade to the gateway's
``/bridge/<exe_id>``. The token is a built-in access token of that user with only the
``environments`` scope, so it reaches the executors bound to the workspace and nothing else, can
expire, and is revoked in the admin like any other token (open connections close at once).
codex refuses a bearer on a non-loopback ``ws://`` URL: a gateway reached from elsewhere must
be behind TLS (``wss://``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import tomli_w

from executors.models import WorkspaceExecutor
from workspaces import tokens
from workspaces.grants import ENVIRONMENTS
from workspaces.models import Workspace

ENVIRONMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what codex accepts; "local" and "none" are its own
RESERVED_IDS = frozenset({"local", "none"})


class BlockError(ValueError):
    """The block cannot be made as asked (bad id or URL, no such workspace member)."""


@dataclass(frozen=True)
class EnvironmentBlock:
    text: str
    token: tokens.NewToken


def bridge_url(ws_base_url: str, exe_id: str) -> str:
    return f"{ws_base_url.rstrip('/')}/bridge/{quote(exe_id, safe='')}"


def check_url(url: str) -> None:
    """codex sends a bearer only over ``wss://`` or to a loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise BlockError(f"{url!r} is not a ws:// or wss:// URL")
    if parts.scheme == "ws" and not _loopback(parts.hostname):
        raise BlockError(
            f"codex refuses a token over plain ws:// to {parts.hostname}: serve the gateway behind TLS "
            "and set CXG_PUBLIC_WS_BASE_URL=wss://…"
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_block(
    binding: WorkspaceExecutor,
    user: Any,
    *,
    ws_base_url: str,
    expires_in: timedelta | None,
    environment_id: str | None = None,
) -> EnvironmentBlock:
    """Mint an ``environments`` token of ``user`` for the binding's workspace and render the
    block naming the binding's executor (id: the binding's name unless ``environment_id``)."""
    env_id = environment_id or binding.name
    if not ENVIRONMENT_ID.fullmatch(env_id) or env_id in RESERVED_IDS:
        raise BlockError(
            f"{env_id!r} is not an environment id codex accepts ([A-Za-z0-9_-], at most 64, not local/none): "
            "choose another id"
        )
    url = bridge_url(ws_base_url, binding.executor_id)
    check_url(url)
    workspace = Workspace.objects.filter(id=binding.workspace_id).first()
    if workspace is None:
        raise BlockError(f"workspace {binding.workspace_id!r} is not a workspace of the built-in control plane")
    try:
        created = tokens.mint(
            workspace, user, name=f"environment {env_id}", scopes=[ENVIRONMENTS], expires_in=expires_in
        )
    except tokens.TokenError as exc:
        raise BlockError(str(exc)) from None
    expiry = created.record.expires_at
    lifetime = f"expires {expiry.isoformat(timespec='minutes')}" if expiry else "no expiry"
    header = (
        f"# codexgw: executor {binding.executor_id} (binding {binding.name!r} of workspace {workspace.id!r})\n"
        f"# as an environment of your own codex. Append to ~/.codex/environments.toml.\n"
        f"# Token {created.record.prefix}: {lifetime}"
        f"; renew with `manage.py environmentblock {workspace.id} {binding.name}`, revoke in the admin.\n"
    )
    body = tomli_w.dumps({"environments": [{"id": env_id, "url": url, "auth_bearer_token": created.token}]})
    return EnvironmentBlock(header + body, created)
