"""The identity interface: who a bearer token belongs to, for one of the user-facing surfaces.

Every surface asks the same question, ``await authenticate(token, scope)``, and gets a ``Grant``
or an ``IdentityError`` carrying the HTTP status to refuse with:

* 401 ``Unauthorized``: not a valid token (unknown, malformed, revoked, expired);
* 403 ``Forbidden``: a valid token that may not do this (scope, workspace);
* 503 ``Unavailable``: the backend could not answer (only the agentserver can be down).

Which backend answers is configuration (``CODEXGW_IDENTITY_BACKEND``), never the call site's
business:

* ``builtin``: this gateway's own access tokens (``workspaces.tokens``), checked in the database
  on every call, so revocation is immediate on every process.
* ``agentserver``: the external control plane, which has one route per surface. The app that owns
  a surface registers its agentserver verifier here in ``AppConfig.ready()`` (appgateway: ``tui``
  and ``turns:submit``; sdk: ``sdk``), keeping this floor free of upward imports.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from channels.db import database_sync_to_async
from django.conf import settings

from workspaces import tokens

# The interface's vocabulary: defined in grants.py, shared with the built-in backend (tokens.py).
from workspaces.grants import SDK, TUI, TURNS, Forbidden, Grant, IdentityError, Unauthorized, Unavailable
from workspaces.models import Workspace

__all__ = ["SDK", "TUI", "TURNS", "Forbidden", "Grant", "IdentityError", "Unauthorized", "Unavailable"]


Verifier = Callable[[str], Awaitable[Grant]]
_agentserver: dict[str, Verifier] = {}


def register_agentserver(scope: str, verifier: Verifier) -> None:
    """How the agentserver backend checks tokens of ``scope`` (called from ``AppConfig.ready``)."""
    _agentserver[scope] = verifier


def backend() -> str:
    """``builtin`` or ``agentserver``."""
    return str(settings.CODEXGW_IDENTITY_BACKEND)


def builtin() -> bool:
    return backend() == "builtin"


async def authenticate(token: str, scope: str) -> Grant:
    """The token's grant for ``scope``; raises an ``IdentityError``."""
    if not token:
        raise Unauthorized("missing Bearer token")
    if builtin():
        # Off the event loop, in Django's sync thread, which closes connections past their age.
        return await database_sync_to_async(tokens.check)(token, scope)
    verifier = _agentserver.get(scope)
    if verifier is None:
        raise Unavailable(f"no agentserver verifier for scope {scope!r}")
    grant = await verifier(token)
    if scope not in grant.scopes:
        raise Forbidden(f"missing scope: {scope}")
    return grant


async def workspace_known(workspace_id: str) -> bool:
    """Whether ``workspace_id`` may be served. Built-in mode knows its workspaces, so a made-up
    id is refused before an app-server is spawned for it; an agentserver's are not known here."""
    if not builtin():
        return True
    return await Workspace.objects.filter(id=workspace_id).aexists()
