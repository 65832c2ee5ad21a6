"""``Authorization: Bearer <token>`` and secrets presented with it: one reading for every route."""

from __future__ import annotations

import hmac

PREFIX = "Bearer "


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` header value (exact, case-sensitive prefix); None when
    the header is missing, has another scheme or an empty token."""
    if not authorization or not authorization.startswith(PREFIX):
        return None
    return authorization[len(PREFIX) :] or None


def secret_matches(presented: str | None, expected: str) -> bool:
    """Constant-time: ``presented`` is ``expected`` (a missing one never is)."""
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())
