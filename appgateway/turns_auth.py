"""Who may call ``POST /api/turns`` (app-gateway §1.7): agentserver itself, with
``X-Internal-Secret``, or a bearer token with the ``turns:submit`` scope checked through the
identity interface (``workspaces.identity``): a built-in access token, or, with an agentserver,
a workspace API key ``wak_…`` validated there as follows.

API keys are validated by agentserver: ``POST {CXG_AGENTSERVER_INTERNAL_URL}/internal/workspace-api-keys/validate``
with ``X-Internal-Secret`` and ``{"secret": …}`` answers 200 ``{workspace_id, key_id, scopes}``
or 401. As for TUI tokens (``workspaces.agentserver``), everything but a 401 is an outage (503), never a
bad key. Keys are not cached: a turn costs far more than its validation.
"""

from __future__ import annotations

import logging
from typing import Final

from django.conf import settings
from rest_framework import exceptions
from rest_framework.request import Request

from codexgw.api_errors import ServiceUnavailable
from codexgw.bearer import bearer_token, secret_matches
from executors.api_auth import Unauthorized
from workspaces import agentserver, identity
from workspaces.agentserver import BODY_LOG_LIMIT, VerifierUnavailable

logger = logging.getLogger(__name__)

VALIDATE_PATH: Final = "/internal/workspace-api-keys/validate"
KEY_PREFIX: Final = "wak_"


async def validate_api_key(secret: str) -> identity.Grant:
    """The key's grant; raises ``InvalidToken`` or ``VerifierUnavailable``."""
    response = await agentserver.ask(VALIDATE_PATH, {"secret": secret})
    try:
        data = response.json()
        workspace_id, key_id, scopes = data["workspace_id"], data["key_id"], data["scopes"]
    except (ValueError, TypeError, KeyError) as exc:
        raise VerifierUnavailable(f"undecodable validate response: {response.text[:BODY_LOG_LIMIT]!r}") from exc
    if not isinstance(workspace_id, str) or not workspace_id or not isinstance(scopes, list):
        raise VerifierUnavailable(f"validate response without a grant: {response.text[:BODY_LOG_LIMIT]!r}")
    return identity.Grant(workspace_id, "", str(key_id), frozenset(str(scope) for scope in scopes))


async def validate_for_identity(token: str) -> identity.Grant:
    """The agentserver backend of the ``turns:submit`` scope (registered in ``AppGatewayConfig.ready``)."""
    if not token.startswith(KEY_PREFIX):
        raise identity.Unauthorized("unauthorized")  # not an API key: agentserver is not even asked
    with agentserver.answers():
        return await validate_api_key(token)


async def authenticate(request: Request) -> identity.Grant | None:
    """None for agentserver (no further checks), else the caller's key with the ``turns:submit``
    scope. Raises 401 (``Unauthorized``), 403 (``PermissionDenied``: no scope) or 503
    (``ServiceUnavailable``: the identity backend cannot answer)."""
    expected = settings.CXG_AGENTSERVER_INTERNAL_SECRET
    if expected and secret_matches(request.headers.get("X-Internal-Secret"), expected):
        return None
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        if not expected and not identity.builtin():
            logger.error("CXG_AGENTSERVER_INTERNAL_SECRET is not set: refusing %s", request.path)
        raise Unauthorized()
    try:
        return await identity.authenticate(token, identity.TURNS)
    except identity.Unavailable as exc:
        logger.warning("API key validation unavailable", extra={"error": exc.reason})
        raise ServiceUnavailable("API key validation unavailable, retry later") from exc
    except identity.Forbidden as exc:
        raise exceptions.PermissionDenied(exc.reason) from None
    except identity.IdentityError as exc:
        raise Unauthorized(exc.reason) from None
