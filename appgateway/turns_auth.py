"""Who may call ``POST /api/turns`` (app-gateway §1.7): agentserver itself, with
``X-Internal-Secret``, or a workspace API key, ``Authorization: Bearer wak_…``.

API keys are validated by agentserver: ``POST {CXG_AGENTSERVER_INTERNAL_URL}/internal/workspace-api-keys/validate``
with ``X-Internal-Secret`` and ``{"secret": …}`` answers 200 ``{workspace_id, key_id, scopes}``
or 401. As for TUI tokens (``appgateway.auth``), everything but a 401 is an outage (503), never a
bad key. Keys are not cached: a turn costs far more than its validation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from django.conf import settings
from rest_framework.request import Request

from appgateway.auth import BODY_LOG_LIMIT, InvalidToken, VerifierUnavailable, ask_agentserver
from codexgw.api_errors import ServiceUnavailable
from executors.api_auth import Unauthorized, bearer_token, secret_matches

logger = logging.getLogger(__name__)

VALIDATE_PATH: Final = "/internal/workspace-api-keys/validate"
KEY_PREFIX: Final = "wak_"
TURNS_SCOPE: Final = "turns:submit"


@dataclass(frozen=True)
class ApiKey:
    workspace_id: str
    key_id: str
    scopes: frozenset[str]


async def validate_api_key(secret: str) -> ApiKey:
    """The key's grant; raises ``InvalidToken`` or ``VerifierUnavailable``."""
    response = await ask_agentserver(VALIDATE_PATH, {"secret": secret})
    try:
        data = response.json()
        workspace_id, key_id, scopes = data["workspace_id"], data["key_id"], data["scopes"]
    except (ValueError, TypeError, KeyError) as exc:
        raise VerifierUnavailable(f"undecodable validate response: {response.text[:BODY_LOG_LIMIT]!r}") from exc
    if not isinstance(workspace_id, str) or not workspace_id or not isinstance(scopes, list):
        raise VerifierUnavailable(f"validate response without a grant: {response.text[:BODY_LOG_LIMIT]!r}")
    return ApiKey(workspace_id, str(key_id), frozenset(str(scope) for scope in scopes))


async def authenticate(request: Request) -> ApiKey | None:
    """None for agentserver (no further checks), else the caller's API key. Raises 401
    (``Unauthorized``) or 503 (``ServiceUnavailable``: agentserver cannot answer)."""
    expected = settings.CXG_AGENTSERVER_INTERNAL_SECRET
    if expected and secret_matches(request.headers.get("X-Internal-Secret"), expected):
        return None
    token = bearer_token(request)
    if token is None or not token.startswith(KEY_PREFIX):
        if not expected:
            logger.error("CXG_AGENTSERVER_INTERNAL_SECRET is not set: refusing %s", request.path)
        raise Unauthorized()
    try:
        return await validate_api_key(token)
    except InvalidToken:
        raise Unauthorized() from None
    except VerifierUnavailable as exc:
        logger.warning("API key validation unavailable", extra={"error": str(exc)})
        raise ServiceUnavailable("API key validation unavailable, retry later") from exc
