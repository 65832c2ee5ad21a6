"""Who may call env-mcp: the per-spawn capability token of the workspace named in the path.

``POST /mcp/env/<workspace_id>`` (and the GET/DELETE of the same MCP session) must carry
``Authorization: Bearer <capability token>``. The token is verified with the capability-token
secret (its signature is compared in constant time by ``executors.captoken``) and refused once
its turn is revoked (the next spawn of the workspace, or the app-server's stop). A missing, bad,
expired or revoked token is 401; a valid token of another workspace is 403. No token is ever
logged: denials name only the reason.

The token lives in the app-server's environment, so it cannot be renewed there: a token past its
own ``exp`` still passes while its turn is the workspace's live spawn turn in this process and that
turn, renewed by the spawn builder, has not ended (``set_turn_lifetime``); the tools then present
a fresh token of the turn instead of the stale one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings

from bridge.ws_auth import Denial
from codexgw.api_errors import OUTAGES
from codexgw.bearer import bearer_token
from executors import captoken
from executors.revocation import revoked_set

logger = logging.getLogger(__name__)

PATH_PREFIX = "/mcp/env/"


@dataclass(frozen=True)
class Caller:
    """An authenticated env-mcp request: the workspace, the spawn's turn and its token (which the
    tools present to the gateway's bridges and ``/api/exec-gateway/connected``)."""

    workspace_id: str
    turn_id: str
    token: str = field(repr=False)


def workspace_of(path: str) -> str | None:
    """``/mcp/env/<workspace_id>`` (one trailing slash allowed) → the workspace id."""
    if not path.startswith(PATH_PREFIX):
        return None
    workspace_id = path[len(PATH_PREFIX) :].removesuffix("/")
    return workspace_id if workspace_id and "/" not in workspace_id else None


TurnLifetime = Callable[[str, str], float | None]  # (workspace_id, turn_id) → when that live spawn turn ends


def _unknown_turn(workspace_id: str, turn_id: str) -> float | None:
    return None


_turn_lifetime: TurnLifetime = _unknown_turn  # until the spawn builder says


def set_turn_lifetime(lifetime: TurnLifetime) -> None:
    """How long a spawn turn of this process lives now (the spawn builder renews them)."""
    global _turn_lifetime
    _turn_lifetime = lifetime


# An expired spawn token → the fresh token of its live turn that stands in for it, and when that one
# ends: one per live spawn past its first lifetime, so the tools' contexts (keyed by token) are
# made once per renewal, not once per call.
_stand_ins: dict[str, tuple[str, float]] = {}
STAND_IN_MARGIN = 60.0  # seconds: a stand-in this close to its end is replaced


def _stand_in(expired: str, payload: captoken.CapPayload, secret: str, ends: float) -> str:
    now = time.time()
    current = _stand_ins.get(expired)
    if current is not None and now + STAND_IN_MARGIN < current[1] <= ends:
        return current[0]
    for key in [key for key, (_, until) in _stand_ins.items() if until <= now]:
        del _stand_ins[key]
    ttl = max(1.0, ends - now)
    fresh = captoken.mint(secret, turn_id=payload.turn_id, workspace_id=payload.workspace_id, ttl=ttl, now=now)
    _stand_ins[expired] = (fresh, now + ttl)
    return fresh


def _revoked(turn_id: str) -> bool:
    return revoked_set().contains(turn_id)


async def authorize(workspace_id: str, authorization: str | None) -> Caller | Denial:
    """The caller behind ``authorization`` (the raw header) if it may use ``workspace_id``'s
    env-mcp: 401 without a valid, unrevoked capability token, 403 for another workspace's."""
    token = bearer_token(authorization)
    if token is None:
        return Denial(401, "missing Bearer token (the spawn's capability token)")
    secret = settings.CXG_CAPTOKEN_HMAC_SECRET
    if not secret:
        logger.error("CXG_CAPTOKEN_HMAC_SECRET is not set: refusing every env-mcp request")
        return Denial(503, "env-mcp disabled: capability token secret not configured")
    try:
        payload = captoken.verify(token, secret)
    except captoken.Expired as error:
        payload = captoken.verify(token, secret, now=0)  # signed by us; only its own exp has passed
        ends = _turn_lifetime(payload.workspace_id, payload.turn_id)
        if ends is None or time.time() > ends:
            return Denial(401, f"invalid token: {error}")
        token = _stand_in(token, payload, secret, ends)
    except captoken.CapTokenError as error:
        return Denial(401, f"invalid token: {error}")
    try:
        revoked = await sync_to_async(_revoked, thread_sensitive=False)(payload.turn_id)
    except OUTAGES as error:
        logger.warning("env-mcp: revocation list unavailable: %s", error)
        return Denial(503, "service unavailable, retry later")
    if revoked:
        return Denial(401, "invalid token: turn revoked")
    if payload.workspace_id != workspace_id:
        return Denial(403, "token is for another workspace")
    return Caller(workspace_id=workspace_id, turn_id=payload.turn_id, token=token)
