"""Model credentials that never go stale inside a long-lived ``codex app-server``.

Each workspace may have its own upstream token from the agentserver
(``GET {CXG_AGENTSERVER_INTERNAL_URL}/internal/workspaces/{id}/modelserver-token``, about an hour
long). A child reads its key from its environment once, so the token is never given to it:
the child gets a long-lived opaque *proxy credential* for its workspace and a ``base_url`` at
the gateway's model proxy (``appgateway.model_proxy``), which swaps the credential for the
workspace's current upstream token on every request. Rotation then needs no respawn.

The proxy credential is ``cxgm.<workspace_id>.<HMAC-SHA256 of the id under a key derived from
SECRET_KEY>``: stateless, so every gateway process accepts it and it survives restarts and
takeovers. It grants only model calls as that workspace, which the child can make anyway.

In built-in mode (``workspaces.identity``) there is no agentserver: the proxy injects the static
key, ``CXG_CODEX_API_KEY`` (or ``OPENAI_API_KEY``).

Current tokens are cached per workspace (Redis, cluster-wide) with their expiry. The periodic
``refresh_live`` (Celery beat) re-fetches the tokens of live workspaces before they expire; the
proxy fetches on demand only when a token is missing or expired (a late or missing beat costs
latency, never a failed call).
Fallbacks: 404 (no ModelServer connection) → the static ``CXG_CODEX_API_KEY``, remembered for
``NO_TOKEN_TTL``; any other failure → the last good token while it is unexpired, else the
static key.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from urllib.parse import quote

import httpx
from django.conf import settings
from django.utils.crypto import salted_hmac

from appgateway import supervisor
from appgateway.codexhome import CodexHomeError, validate_workspace_id
from codexgw import redis as gwredis
from codexgw.runtime import self_http_base_url
from workspaces import identity

logger = logging.getLogger(__name__)

FETCH_TIMEOUT = 5.0
REFRESH_BEFORE = 600.0  # refresh when less than this many seconds remain…
REFRESH_FRACTION = 0.2  # …or less than this share of the lifetime, whichever comes first for short tokens
NO_TOKEN_TTL = 300.0  # how long a 404 ("use the static key") is believed
PROXY_PATH = "/api/model-proxy/"
PROXY_BASE_PATH = PROXY_PATH + "v1"
_CREDENTIAL_PREFIX = "cxgm."
_HMAC_SALT = "codexgw.appgateway.model-proxy-credential"
_BODY_LOG_LIMIT = 1024


class TokenFetchError(RuntimeError):
    """The agentserver did not answer with a token or a 404."""


@dataclass(frozen=True)
class Token:
    """A workspace's upstream credential; ``access_token == ""`` means "use the static key"."""

    access_token: str
    expires_at: float  # epoch seconds
    fetched_at: float

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def due(self, now: float) -> bool:
        """Time to fetch a fresh one: less than min(10 min, 20 % of its lifetime) remains."""
        margin = min(REFRESH_BEFORE, REFRESH_FRACTION * max(0.0, self.expires_at - self.fetched_at))
        return self.expires_at - now < margin


# --- the agentserver ------------------------------------------------------------------------


def _epoch(value: object) -> float:
    if not isinstance(value, str) or not value:
        raise TokenFetchError(f"expires_at {value!r} is not a timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise TokenFetchError(f"expires_at {value!r} is not ISO 8601") from exc
    if parsed.tzinfo is None:
        raise TokenFetchError(f"expires_at {value!r} has no timezone")
    return parsed.timestamp()


async def fetch_token(workspace_id: str) -> Token | None:
    """The workspace's token from the agentserver; None on 404. Raises ``TokenFetchError``."""
    base_url = settings.CXG_AGENTSERVER_INTERNAL_URL.rstrip("/")
    if not base_url:
        raise TokenFetchError("CXG_AGENTSERVER_INTERNAL_URL is not set")
    url = f"{base_url}/internal/workspaces/{quote(validate_workspace_id(workspace_id), safe='')}/modelserver-token"
    # The route needs no auth; the shared secret still identifies the gateway where it is checked.
    secret = settings.CXG_AGENTSERVER_INTERNAL_SECRET
    headers = {"X-Internal-Secret": secret} if secret else {}
    fetched_at = time.time()
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT) as client:
            response = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise TokenFetchError(f"{type(exc).__name__}: {exc}") from exc
    if response.status_code == httpx.codes.NOT_FOUND:
        return None
    if response.status_code != httpx.codes.OK:
        raise TokenFetchError(f"status={response.status_code} body={response.text[:_BODY_LOG_LIMIT]!r}")
    try:
        body = response.json()
    except ValueError as exc:
        raise TokenFetchError("the token response is not JSON") from exc
    access_token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(access_token, str) or not access_token:
        raise TokenFetchError("the token response has no access_token")
    return Token(access_token, _epoch(body.get("expires_at")), fetched_at)


# --- the cache -------------------------------------------------------------------------------


def _cache_key(workspace_id: str) -> str:
    return gwredis.key("modeltoken", workspace_id)


async def cached_token(workspace_id: str) -> Token | None:
    async with gwredis.async_client() as client:
        raw = await client.get(_cache_key(workspace_id))
    if raw is None:
        return None
    data = json.loads(raw)
    return Token(str(data["access_token"]), float(data["expires_at"]), float(data["fetched_at"]))


async def _store(workspace_id: str, token: Token) -> None:
    ttl_ms = int((token.expires_at - time.time()) * 1000)
    if ttl_ms <= 0:
        return
    async with gwredis.async_client() as client:
        await client.set(_cache_key(workspace_id), json.dumps(asdict(token)), px=ttl_ms)


async def refresh(workspace_id: str) -> Token | None:
    """Fetch and cache the workspace's token now; the last cached one (or None) on failure."""
    try:
        fetched = await fetch_token(workspace_id)
    except (TokenFetchError, CodexHomeError) as exc:
        logger.warning("model token fetch failed", extra={"workspace_id": workspace_id, "error": str(exc)})
        return await cached_token(workspace_id)
    now = time.time()
    token = fetched if fetched is not None else Token("", now + NO_TOKEN_TTL, now)
    await _store(workspace_id, token)
    return token


async def current_token(workspace_id: str) -> str:
    """The upstream bearer for the workspace's model calls (possibly the static key, possibly "")."""
    if identity.builtin():
        return str(settings.CXG_CODEX_API_KEY)
    now = time.time()
    token = await cached_token(workspace_id)
    # Refreshing ahead of expiry is the beat's job; a request only waits for a fetch when it must.
    if (token is None or token.expired(now)) and settings.CXG_AGENTSERVER_INTERNAL_URL:
        token = await refresh(workspace_id)
    if token is not None and token.access_token and not token.expired(time.time()):
        return token.access_token
    return str(settings.CXG_CODEX_API_KEY)


async def refresh_live(now: float | None = None) -> int:
    """Refresh the due (or missing) tokens of every live workspace; returns how many were fetched."""
    if not settings.CXG_AGENTSERVER_INTERNAL_URL:
        return 0
    at = time.time() if now is None else now
    fetched = 0
    for workspace_id in sorted({session.workspace_id for session in supervisor.get_supervisor().live_sessions()}):
        token = await cached_token(workspace_id)
        if token is None or token.due(at):
            await refresh(workspace_id)
            fetched += 1
    return fetched


# --- proxy credentials and spawns ------------------------------------------------------------


def _signature(workspace_id: str) -> str:
    return salted_hmac(_HMAC_SALT, workspace_id, algorithm="sha256").hexdigest()


def proxy_credential(workspace_id: str) -> str:
    return f"{_CREDENTIAL_PREFIX}{validate_workspace_id(workspace_id)}.{_signature(workspace_id)}"


def workspace_for_credential(credential: str) -> str | None:
    """The workspace a proxy credential was issued for, or None if it is not one of ours."""
    workspace_id, _, signature = credential.removeprefix(_CREDENTIAL_PREFIX).rpartition(".")
    if not credential.startswith(_CREDENTIAL_PREFIX) or not workspace_id:
        return None
    if not hmac.compare_digest(signature.encode(), _signature(workspace_id).encode()):
        return None
    return workspace_id


async def spawn_settings(workspace_id: str) -> supervisor.SpawnConfig:
    """The model env and base_url for a spawn (the spawn builder adds the rest): the proxy and the
    workspace's proxy credential.

    Built-in mode always goes through the proxy too, so the static key stays in the gateway and
    a missing key is explained by the proxy. An agentserver backend without its URL has no
    per-workspace tokens: the supervisor's defaults apply (the static key,
    ``CXG_MODEL_PROVIDER_BASE_URL``)."""
    if not identity.builtin() and not settings.CXG_AGENTSERVER_INTERNAL_URL:
        return supervisor.SpawnConfig()
    return supervisor.SpawnConfig(
        env={settings.CXG_MODEL_PROVIDER_ENV_KEY: proxy_credential(workspace_id)},
        provider_base_url=self_http_base_url() + PROXY_BASE_PATH,
    )
