"""ProxyTokenAuth: a bearer token → (workspace_id, user_id), checked through the identity
interface (``workspaces.identity``) for the ``sdk`` scope: a built-in access token, or, with an
agentserver, a sandbox's proxy token verified there as follows.

``POST {CXG_AGENTSERVER_INTERNAL_URL}/internal/validate-proxy-token`` with ``X-Internal-Secret``.
Results are cached per process in a small LRU: accepted tokens for 5 minutes, rejected ones for
30 seconds. Concurrent misses for one token share a single upstream call. A token the agentserver
rejects is 401; an agentserver that cannot answer is 503 — never 401, or a client would throw
away a good token during an outage.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import httpx
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from codexgw.bearer import bearer_token
from workspaces import identity

logger = logging.getLogger(__name__)

POSITIVE_TTL = 300.0
NEGATIVE_TTL = 30.0
CACHE_SIZE = 1024
UPSTREAM_TIMEOUT = 5.0


@dataclass(frozen=True)
class ProxyIdentity:
    workspace_id: str
    user_id: str


class SdkAuthError(exceptions.APIException):
    code = "invalid_token"


class MissingBearer(SdkAuthError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "Authorization: Bearer <token> required"
    code = "missing_bearer"


class InvalidToken(SdkAuthError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "token rejected"
    code = "invalid_token"


class ScopeMissing(SdkAuthError):
    status_code = status.HTTP_403_FORBIDDEN
    default_detail = "token not allowed here"
    code = "forbidden"


class AgentserverUnavailable(SdkAuthError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "cannot verify the token now (agentserver unavailable); retry"
    code = "auth_unavailable"


@dataclass
class _Entry:
    identity: ProxyIdentity | None  # None: rejected
    expires: float


class _InFlight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.identity: ProxyIdentity | None = None
        self.error: SdkAuthError | None = None


class ProxyTokenVerifier:
    def __init__(self, base_url: str, secret: str) -> None:
        self.config = (base_url.rstrip("/"), secret)
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._in_flight: dict[str, _InFlight] = {}
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=UPSTREAM_TIMEOUT)

    def verify(self, token: str) -> ProxyIdentity:
        key = hashlib.sha256(token.encode()).hexdigest()  # the raw token never sits in memory maps
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry.expires > time.monotonic():
                self._cache.move_to_end(key)
                if entry.identity is None:
                    raise InvalidToken()
                return entry.identity
            flight = self._in_flight.get(key)
            leader = flight is None
            if flight is None:
                flight = self._in_flight[key] = _InFlight()
        if not leader:
            flight.done.wait(UPSTREAM_TIMEOUT + 1)
            if flight.error is not None:
                raise flight.error
            if flight.identity is None:
                raise AgentserverUnavailable()
            return flight.identity
        try:
            flight.identity = self._ask(key, token)
            return flight.identity
        except SdkAuthError as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                del self._in_flight[key]
            flight.done.set()

    def _ask(self, key: str, token: str) -> ProxyIdentity:
        base_url, secret = self.config
        try:
            response = self._client.post(
                f"{base_url}/internal/validate-proxy-token",
                json={"token": token},
                headers={"X-Internal-Secret": secret},
            )
        except httpx.HTTPError as exc:
            logger.warning("proxy token check: agentserver unreachable", extra={"error": str(exc)})
            raise AgentserverUnavailable() from None
        if response.status_code == status.HTTP_401_UNAUTHORIZED:
            self._remember(key, None, NEGATIVE_TTL)
            raise InvalidToken()
        if response.status_code != status.HTTP_200_OK:
            logger.warning("proxy token check: agentserver answered %s", response.status_code)
            raise AgentserverUnavailable()
        try:
            body = response.json()
            identity = ProxyIdentity(workspace_id=str(body["workspace_id"]), user_id=str(body.get("user_id", "")))
        except (ValueError, KeyError, TypeError):
            logger.warning("proxy token check: undecodable agentserver answer")
            raise AgentserverUnavailable() from None
        if not identity.workspace_id:
            # An identity without a workspace can do nothing; don't cache a half answer.
            raise AgentserverUnavailable()
        self._remember(key, identity, POSITIVE_TTL)
        return identity

    def _remember(self, key: str, identity: ProxyIdentity | None, ttl: float) -> None:
        with self._lock:
            self._cache[key] = _Entry(identity, time.monotonic() + ttl)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)


_verifier: ProxyTokenVerifier | None = None
_verifier_lock = threading.Lock()


def verifier() -> ProxyTokenVerifier:
    """The process's verifier for the configured agentserver (rebuilt if the settings change)."""
    global _verifier
    with _verifier_lock:
        config = (settings.CXG_AGENTSERVER_INTERNAL_URL.rstrip("/"), settings.CXG_AGENTSERVER_INTERNAL_SECRET)
        if _verifier is None or _verifier.config != config:
            _verifier = ProxyTokenVerifier(*config)
        return _verifier


async def verify_for_identity(token: str) -> identity.Grant:
    """The agentserver backend of the ``sdk`` scope (registered in ``SdkConfig.ready``)."""
    try:
        verified = await sync_to_async(verifier().verify, thread_sensitive=False)(token)
    except InvalidToken:
        raise identity.Unauthorized(str(InvalidToken.default_detail)) from None
    except AgentserverUnavailable:
        raise identity.Unavailable(str(AgentserverUnavailable.default_detail)) from None
    return identity.Grant(verified.workspace_id, verified.user_id, "", frozenset({identity.SDK}))


class ProxyTokenAuthentication(BaseAuthentication):
    """DRF authentication for ``/api/connectors/*``: ``request.auth`` is the ``ProxyIdentity``.
    Runs in a worker thread (``AsyncAPIView``), so it may wait for the identity interface."""

    def authenticate(self, request: Request) -> tuple[None, ProxyIdentity]:
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            raise MissingBearer()
        try:
            grant = async_to_sync(identity.authenticate)(token, identity.SDK)
        except identity.Unavailable:
            raise AgentserverUnavailable() from None
        except identity.Forbidden as exc:
            raise ScopeMissing(exc.reason) from None
        except identity.IdentityError as exc:
            raise InvalidToken(exc.reason) from None
        return None, ProxyIdentity(workspace_id=grant.workspace_id, user_id=grant.user_id)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="connectors"'
