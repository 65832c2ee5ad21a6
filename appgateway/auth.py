"""Who may attach a TUI: a bearer token checked through the identity interface
(``workspaces.identity``): a built-in access token with the ``tui`` scope, or, with an
agentserver, an agentserver-issued token verified there as follows.

``POST {CXG_AGENTSERVER_INTERNAL_URL}/api/internal/codex/tokens/verify`` with
``X-Internal-Secret`` and ``{"token": ...}`` answers 200 ``{user_id, workspace_id}`` or 401.
A 401 is a bad token (our 401); anything else (network error, timeout, 5xx, another status, an
undecodable body) is an outage and becomes 503, so a client retries rather than concluding its
token is bad (the Go gateway answered 401 to all of them).

Successful verifications are cached briefly under a hash of the token (never the token itself),
so reconnect storms do not hammer agentserver; a revoked token still opens new connections for
at most ``CACHE_TTL``. Refusals and outages are never cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import httpx
from django.conf import settings

from bridge.ws_auth import Denial
from codexgw.bearer import bearer_token
from workspaces import identity

logger = logging.getLogger(__name__)

VERIFY_PATH: Final = "/api/internal/codex/tokens/verify"
VERIFY_TIMEOUT = 5.0
CACHE_TTL = 30.0
CACHE_MAX_ENTRIES = 10_000
BODY_LOG_LIMIT = 1024


@dataclass(frozen=True)
class Identity:
    user_id: str
    workspace_id: str
    token_id: str = ""  # the grant's loggable token name: built-in tokens are revoked by it
    expires_at: float | None = None  # epoch seconds the token stops working, if it does


class InvalidToken(Exception):
    """agentserver refused the token (401)."""


class VerifierUnavailable(Exception):
    """agentserver could not give an answer: the token may well be valid."""


_cache: dict[str, tuple[Identity, float]] = {}


def _cache_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _cached(key: str) -> Identity | None:
    entry = _cache.get(key)
    if entry is None:
        return None
    identity, expires = entry
    if expires <= time.monotonic():
        del _cache[key]
        return None
    return identity


def _remember(key: str, identity: Identity) -> None:
    now = time.monotonic()
    if len(_cache) >= CACHE_MAX_ENTRIES:
        for stale in [k for k, (_, expires) in _cache.items() if expires <= now]:
            del _cache[stale]
        while len(_cache) >= CACHE_MAX_ENTRIES:  # still full of live entries: drop the oldest
            del _cache[next(iter(_cache))]
    _cache[key] = (identity, now + CACHE_TTL)


def _identity(response: httpx.Response) -> Identity:
    try:
        data = response.json()
        user_id, workspace_id = data["user_id"], data["workspace_id"]
    except (ValueError, TypeError, KeyError) as exc:
        raise VerifierUnavailable(f"undecodable verify response: {response.text[:BODY_LOG_LIMIT]!r}") from exc
    if not isinstance(user_id, str) or not isinstance(workspace_id, str) or not workspace_id:
        raise VerifierUnavailable(f"verify response without ids: {response.text[:BODY_LOG_LIMIT]!r}")
    return Identity(user_id=user_id, workspace_id=workspace_id)


async def ask_agentserver(path: str, body: dict[str, str]) -> httpx.Response:
    """POST ``body`` to an agentserver internal route; the 200 response. Raises ``InvalidToken``
    on a 401 and ``VerifierUnavailable`` when agentserver cannot give an answer."""
    base_url = settings.CXG_AGENTSERVER_INTERNAL_URL.rstrip("/")
    secret = settings.CXG_AGENTSERVER_INTERNAL_SECRET
    if not base_url or not secret:
        raise VerifierUnavailable("CXG_AGENTSERVER_INTERNAL_URL or CXG_AGENTSERVER_INTERNAL_SECRET is not set")
    try:
        # A client per call: they are rare (cached, once per connection), and a long-lived
        # client would be tied to one event loop.
        async with httpx.AsyncClient(timeout=VERIFY_TIMEOUT) as client:
            response = await client.post(base_url + path, json=body, headers={"X-Internal-Secret": secret})
    except httpx.HTTPError as exc:
        raise VerifierUnavailable(f"{type(exc).__name__}: {exc}") from exc
    if response.status_code == httpx.codes.UNAUTHORIZED:
        raise InvalidToken()
    if response.status_code != httpx.codes.OK:
        raise VerifierUnavailable(f"status={response.status_code} body={response.text[:BODY_LOG_LIMIT]!r}")
    return response


async def verify_token(token: str) -> Identity:
    """The token's identity; raises ``InvalidToken`` or ``VerifierUnavailable``."""
    key = _cache_key(token)
    identity = _cached(key)
    if identity is not None:
        return identity
    response = await ask_agentserver(VERIFY_PATH, {"token": token})
    identity = _identity(response)
    _remember(key, identity)
    return identity


@contextlib.contextmanager
def agentserver_answers() -> Iterator[None]:
    """The agentserver's refusal and outage as the identity interface's 401 and 503."""
    try:
        yield
    except InvalidToken:
        raise identity.Unauthorized("unauthorized") from None
    except VerifierUnavailable as exc:
        raise identity.Unavailable(str(exc)) from exc


async def verify_for_identity(token: str) -> identity.Grant:
    """The agentserver backend of the ``tui`` scope (registered in ``AppGatewayConfig.ready``)."""
    with agentserver_answers():
        verified = await verify_token(token)
    return identity.Grant(verified.workspace_id, verified.user_id, "", frozenset({identity.TUI}))


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
