"""Who may attach a TUI: a bearer token checked through the identity interface
(``workspaces.identity``): a built-in access token with the ``tui`` scope, or, with an
agentserver, an agentserver-issued token verified there (``workspaces.agentserver``):

``POST {CXG_AGENTSERVER_INTERNAL_URL}/api/internal/codex/tokens/verify`` with
``X-Internal-Secret`` and ``{"token": ...}`` answers 200 ``{user_id, workspace_id}`` or 401.
A 401 is a bad token (our 401); anything else (network error, timeout, 5xx, another status, an
undecodable body) is an outage and becomes 503, so a client retries rather than concluding its
token is bad (the Go gateway answered 401 to all of them). Acceptances are cached for
``CACHE_TTL``, so a revoked token still opens new connections for at most that long; refusals
and outages are never cached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from bridge.ws_auth import Denial
from codexgw.bearer import bearer_token
from workspaces import agentserver, identity

logger = logging.getLogger(__name__)

VERIFY_PATH: Final = "/api/internal/codex/tokens/verify"
CACHE_TTL = 30.0
# The agentserver backend of the ``tui`` scope (registered in ``AppGatewayConfig.ready``).
TOKENS = agentserver.TokenVerifier(VERIFY_PATH, identity.TUI, accept_ttl=CACHE_TTL)


@dataclass(frozen=True)
class Identity:
    user_id: str
    workspace_id: str
    token_id: str = ""  # the grant's loggable token name: built-in tokens are revoked by it
    expires_at: float | None = None  # epoch seconds the token stops working, if it does


async def authenticate_tui(headers: dict[str, str]) -> Identity | Denial:
    """The upgrade's identity, or the HTTP status to refuse it with (401, 403 or 503)."""
    token = bearer_token(headers.get("authorization"))
    if token is None:
        return Denial(401, "missing Bearer")
    try:
        grant = await identity.authenticate(token, identity.TUI)
    except identity.Unavailable as exc:
        logger.warning("TUI token verification unavailable", extra={"error": exc.reason})
        return Denial(503, "token verification unavailable, retry later")
    except identity.IdentityError as exc:
        # codex shows only the status: the reason is for whoever reads the gateway's log.
        logger.info("TUI token refused (%s): %s", exc.status, exc.reason, extra={"status": exc.status})
        return Denial(exc.status, exc.reason)
    expires = grant.expires_at.timestamp() if grant.expires_at is not None else None
    return Identity(user_id=grant.user_id, workspace_id=grant.workspace_id, token_id=grant.token_id, expires_at=expires)
