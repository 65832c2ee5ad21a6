"""Authorisation of the two WebSocket upgrades, decided before the handshake completes.

Status codes steer the real executor: it exits on a 4xx at the upgrade and retries a 5xx
forever, so bad credentials are 401 and outages are 503. Both checks run in a worker thread
(database and Redis lookups are synchronous).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from codexgw.api_errors import OUTAGES
from codexgw.bearer import bearer_token
from executors import captoken, services, sigv4, wsticket
from executors.models import WorkspaceExecutor
from executors.presence import Holder, presence_store
from executors.revocation import turn_group
from workspaces import identity, tokens
from workspaces.grants import ENVIRONMENTS, IdentityError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Denial:
    status: int
    message: str


@dataclass(frozen=True)
class BridgeGrant:
    revocation_group: str  # the channel-layer group told when the credential is revoked
    holder: Holder
    binding_group: str  # the group told when the executor is unbound from the credential's workspace
    expires_at: float | None = None  # epoch seconds at which the bridge must close, if any


def access_token_group(prefix: str) -> str:
    """The group of the live connections (bridges, and the app gateway's TUIs) opened with the
    built-in access token ``prefix``."""
    return turn_group(f"access-token:{prefix}")


def binding_group(workspace_id: str, exe_id: str) -> str:
    """The group of the live bridges that reach ``exe_id`` as an executor of ``workspace_id``."""
    return turn_group(f"binding:{workspace_id}:{exe_id}")


def close_bridges_of_binding(workspace_id: str, exe_id: str) -> None:
    """The executor left the workspace: close the bridges that reached it through it, on every process."""
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(binding_group(workspace_id, exe_id), {"type": "bridge.unbound"})


def close_bridges_of_access_tokens(prefixes: list[str]) -> None:
    """Revoked built-in tokens: close the connections open with them (bridges, TUIs), on every process."""
    layer = get_channel_layer()
    if layer is None:
        return
    for prefix in prefixes:
        async_to_sync(layer.group_send)(access_token_group(prefix), {"type": "bridge.revoke"})


def header_map(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI headers as a dict keyed by lower-case name; repeated headers joined with commas."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


def authenticate_executor(exe_id: str, headers: dict[str, str], raw_path: str, raw_query: str) -> Denial | None:
    """SigV4 (codex 0.169.0 direct transport, signed again on every reconnect), else the
    short-lived ``ticket`` of the bearer registration routes, else the legacy raw ``token``."""
    if not exe_id:
        return Denial(400, "missing parameters")
    try:
        if headers.get("authorization", "").startswith(sigv4.ALGORITHM):
            try:
                sigv4.verify(
                    method="GET",
                    raw_path=raw_path,
                    raw_query=raw_query,
                    headers=headers,
                    body=b"",
                    secret_for=services.registration_secret,
                    expected_access_key_id=exe_id,
                    max_skew=settings.CXG_SIGV4_MAX_SKEW,
                )
            except sigv4.SigV4Error as exc:
                logger.info("executor websocket refused", extra={"exe_id": exe_id, "reason": str(exc)})
                return Denial(401, "unauthorized")
            return None
        query = parse_qs(raw_query)
        if "ticket" in query:
            if wsticket.verify(settings.CXG_CAPTOKEN_HMAC_SECRET, query["ticket"][0], exe_id):
                return None
            return Denial(401, "unauthorized")
        if "token" in query and services.check_registration_token(exe_id, query["token"][0]):
            return None
        return Denial(401, "unauthorized")
    except OUTAGES as exc:
        logger.warning("executor websocket: dependency unavailable", extra={"exe_id": exe_id, "error": str(exc)})
        return Denial(503, "service unavailable, retry later")


def authorize_bridge(exe_id: str, headers: dict[str, str]) -> BridgeGrant | Denial:
    """Token, then revoked turn, then the token's executor list, then the workspace binding,
    then presence: 401, 401, 403, 403, 503 (token checks come first so an unauthenticated
    caller cannot probe which executors are online). A built-in access token with the
    ``environments`` scope (a user's own codex, ``~/.codex/environments.toml``) reaches every
    executor bound to its workspace."""
    presented = bearer_token(headers.get("authorization"))
    if presented is None or not exe_id:
        return Denial(401, "missing Bearer")
    try:
        if presented.startswith(tokens.TOKEN_PREFIX):
            credential = _access_token(exe_id, presented)
        else:
            credential = _capability(exe_id, presented)
        if isinstance(credential, Denial):
            return credential
        revocation_group, workspace_id, expires_at = credential
        if not WorkspaceExecutor.objects.filter(workspace_id=workspace_id, executor_id=exe_id).exists():
            return Denial(403, "exe_id not in workspace")
        holder = presence_store().get(exe_id)
    except OUTAGES as exc:
        logger.warning("bridge: dependency unavailable", extra={"exe_id": exe_id, "error": str(exc)})
        return Denial(503, "service unavailable, retry later")
    if holder is None:
        return Denial(503, "executor not connected")
    return BridgeGrant(revocation_group, holder, binding_group(workspace_id, exe_id), expires_at)


# A credential's revocation group, its workspace, and when the bridge it opens must close (if ever).
Credential = tuple[str, str, float | None]


def _capability(exe_id: str, presented: str) -> Credential | Denial:
    if not settings.CXG_CAPTOKEN_HMAC_SECRET:
        logger.error("CXG_CAPTOKEN_HMAC_SECRET is not set: refusing every bridge")
        return Denial(503, "bridge disabled: capability token secret not configured")
    try:
        token = services.verified_capability(presented)
    except captoken.CapTokenError as exc:
        return Denial(401, str(exc))  # bad, expired or turn revoked
    if not token.allows_exe_id(exe_id):
        return Denial(403, "exe_id not in token allow set")
    return turn_group(token.turn_id), token.workspace_id, None


def _access_token(exe_id: str, bearer: str) -> Credential | Denial:
    if not identity.builtin():
        return Denial(401, "access tokens need the built-in control plane (CODEXGW_IDENTITY_BACKEND=builtin)")
    try:
        grant = tokens.check(bearer, ENVIRONMENTS)
    except IdentityError as exc:
        logger.info("bridge refused an access token", extra={"exe_id": exe_id, "reason": exc.reason})
        return Denial(exc.status, exc.reason)
    expires = grant.expires_at.timestamp() if grant.expires_at is not None else None
    return access_token_group(grant.token_id), grant.workspace_id, expires
