"""Personal access tokens of the built-in control plane: minting, and checking one for a scope.

A token is ``cxgt_<8 id chars>_<43 secret chars>`` (256 random bits in all). The database keeps
its SHA-256 digest (unique index: one lookup, never a scan) and the visible prefix
``cxgt_<id chars>``. Every check reads the row, so a revoked or expired token, or one whose user
left the workspace, is refused by every process at once: there is no cache to outlive it.
``last_used_at`` is written at most once a minute per token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from codexgw.env import parse_duration
from workspaces.grants import Forbidden, Grant, Unauthorized
from workspaces.models import AccessToken, Membership, Role, Scope, Workspace

TOKEN_PREFIX = "cxgt_"  # noqa: S105 - a format, not a secret
_TOKEN = re.compile(r"cxgt_([A-Za-z0-9]{8})_([A-Za-z0-9_-]{43})")
_ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
LAST_USED_RESOLUTION = timedelta(seconds=60)
ALL_SCOPES = tuple(Scope.values)
_revocation_hooks: list[Callable[[list[str]], None]] = []


class TokenError(ValueError):
    """A token cannot be minted as asked (unknown workspace, user not a member, bad scope)."""


@dataclass(frozen=True)
class NewToken:
    token: str  # shown once, never stored
    record: AccessToken


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def default_user(workspace: Workspace) -> Any:
    """The user a token is minted for when none is named: the workspace's first owner."""
    membership = workspace.memberships.filter(role=Role.OWNER).select_related("user").order_by("created_at").first()
    if membership is None:
        raise TokenError(f"workspace {workspace.id!r} has no owner; name a member with --user")
    return membership.user


def user_named(username: str) -> Any:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise TokenError(f"no user {username!r}")
    return user


def lifetime(text: str) -> timedelta:
    """A token lifetime such as ``90d``, ``12h`` or ``30m``."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise TokenError(f"{text!r} is not a duration (e.g. 90d, 12h, 30m)") from None
    if seconds <= 0:
        raise TokenError("a token's lifetime must be positive")
    return timedelta(seconds=seconds)


def mint(
    workspace: Workspace,
    user: Any,
    *,
    name: str = "",
    scopes: list[str] | tuple[str, ...] = ALL_SCOPES,
    expires_in: timedelta | None = None,
) -> NewToken:
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown or not scopes:
        raise TokenError(f"scopes must be some of {', '.join(ALL_SCOPES)}; got {', '.join(unknown) or 'none'}")
    if not Membership.objects.filter(workspace=workspace, user=user).exists():
        raise TokenError(f"user {user} is not a member of workspace {workspace.id!r}")
    key_id = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(8))
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = AccessToken.objects.create(
        workspace=workspace,
        user=user,
        name=name,
        prefix=f"{TOKEN_PREFIX}{key_id}",
        digest=digest(token),
        scopes=sorted(set(scopes)),
        expires_at=timezone.now() + expires_in if expires_in is not None else None,
    )
    return NewToken(token, record)


def on_revoked(hook: Callable[[list[str]], None]) -> None:
    """Call ``hook`` with the prefixes of the tokens each ``revoke`` revoked (the bridge closes
    the connections opened with them; registered in its ``AppConfig.ready``)."""
    _revocation_hooks.append(hook)


def revoke(queryset: Any) -> int:
    """Revoke the still-valid tokens of ``queryset``; how many were revoked. Connections already
    open with them are told once the revocation is committed."""
    with transaction.atomic():
        live = dict(queryset.filter(revoked_at__isnull=True).values_list("pk", "prefix"))
        revoked = AccessToken.objects.filter(pk__in=live, revoked_at__isnull=True).update(revoked_at=timezone.now())
    for hook in _revocation_hooks:
        hook(sorted(live.values()))
    return int(revoked)


def status(record: AccessToken, now: datetime | None = None) -> str:
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= (now or timezone.now()):
        return "expired"
    return "active"


def check(token: str, scope: str) -> Grant:
    """The grant of a built-in token used for ``scope``; raises ``Unauthorized`` (not a valid
    token) or ``Forbidden`` (valid, but without that scope). Runs database queries: call it from
    a thread, not the event loop."""
    if not _TOKEN.fullmatch(token):
        raise Unauthorized("not a codexgw access token")
    presented = digest(token)
    record = AccessToken.objects.select_related("user").filter(digest=presented).first()
    # The lookup is by digest; comparing the digests again in constant time costs nothing.
    if record is None or not hmac.compare_digest(record.digest, presented):
        raise Unauthorized("unknown token")
    now = timezone.now()
    state = status(record, now)
    if state != "active":
        raise Unauthorized(f"token {state}")
    if (
        not record.user.is_active
        or not Membership.objects.filter(workspace_id=record.workspace_id, user_id=record.user_id).exists()
    ):
        raise Unauthorized("the token's user is no longer a member of its workspace")
    if scope not in record.scopes:
        raise Forbidden(f"missing scope: {scope}")
    if record.last_used_at is None or now - record.last_used_at >= LAST_USED_RESOLUTION:
        AccessToken.objects.filter(pk=record.pk).update(last_used_at=now)
    return Grant(
        workspace_id=record.workspace_id,
        user_id=str(record.user_id),
        token_id=record.prefix,
        scopes=frozenset(record.scopes),
        expires_at=record.expires_at,
    )


def ensure_default_workspace(owner: Any, workspace_id: str = "default") -> Workspace:
    """The embedded default's first-run workspace, with ``owner`` as its owner (idempotent)."""
    workspace, _ = Workspace.objects.get_or_create(id=workspace_id, defaults={"name": "Default workspace"})
    Membership.objects.get_or_create(workspace=workspace, user=owner, defaults={"role": Role.OWNER})
    return workspace
