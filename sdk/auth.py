"""ProxyTokenAuth: a bearer token → (workspace_id, user_id), checked through the identity
interface (``workspaces.identity``) for the ``sdk`` scope: a built-in access token, or, with an
agentserver, a sandbox's proxy token verified there as follows.

``POST {CXG_AGENTSERVER_INTERNAL_URL}/internal/validate-proxy-token`` with ``X-Internal-Secret``
(``workspaces.agentserver``). Results are cached per process in a small LRU: accepted tokens for
5 minutes, rejected ones for 30 seconds. Concurrent misses for one token share a single upstream
call. A token the agentserver rejects is 401; an agentserver that cannot answer is 503 — never
401, or a client would throw away a good token during an outage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from rest_framework import exceptions, status
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from codexgw.bearer import bearer_token
from workspaces import agentserver, identity

logger = logging.getLogger(__name__)

POSITIVE_TTL = 300.0
NEGATIVE_TTL = 30.0


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


# The agentserver backend of the ``sdk`` scope (registered in ``SdkConfig.ready``).
TOKENS = agentserver.TokenVerifier(
    "/internal/validate-proxy-token", identity.SDK, accept_ttl=POSITIVE_TTL, reject_ttl=NEGATIVE_TTL, max_entries=1024
)


class ProxyTokenAuthentication(BaseAuthentication):
    """DRF authentication for ``/api/connectors/*``: ``request.auth`` is the ``ProxyIdentity``.
    Runs in a worker thread (``AsyncAPIView``), so it may wait for the identity interface."""

    def authenticate(self, request: Request) -> tuple[None, ProxyIdentity]:
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            raise MissingBearer()
        try:
            grant = async_to_sync(identity.authenticate)(token, identity.SDK)
        except identity.Unavailable as exc:
            logger.warning("SDK token verification unavailable", extra={"error": exc.reason})
            raise AgentserverUnavailable() from None
        except identity.Forbidden as exc:
            raise ScopeMissing(exc.reason) from None
        except identity.IdentityError as exc:
            raise InvalidToken(exc.reason) from None
        return None, ProxyIdentity(workspace_id=grant.workspace_id, user_id=grant.user_id)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="connectors"'
