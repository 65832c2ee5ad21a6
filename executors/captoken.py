"""Capability tokens for ``/bridge`` (the reference's CODEX_EXEC_GATEWAY_TOKEN format).

``b64url(header) "." b64url(payload) "." b64url(HMAC-SHA256(secret, b64url(header) "." b64url(payload)))``
with header ``{"alg":"HS256","typ":"CXG"}`` and payload
``{turn_id, workspace_id, exe_ids?, user_id?, iat, exp}``. Verification follows the reference's
order exactly: shape, header, signature segment, MAC (constant time), then payload, then expiry
(``now > exp`` is expired, so ``exp == now`` still passes).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from executors import b64

HEADER = b'{"alg":"HS256","typ":"CXG"}'


class CapTokenError(Exception):
    """Base class; ``str()`` is the message the HTTP layer may show."""


class Malformed(CapTokenError):
    def __init__(self) -> None:
        super().__init__("unauthorized")


class BadSignature(CapTokenError):
    def __init__(self) -> None:
        super().__init__("unauthorized")


class Expired(CapTokenError):
    def __init__(self) -> None:
        super().__init__("token expired")


@dataclass(frozen=True)
class CapPayload:
    turn_id: str
    workspace_id: str
    iat: int
    exp: int
    exe_ids: tuple[str, ...] | None = None
    user_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def allows_exe_id(self, exe_id: str) -> bool:
        """Workspace-wide tokens (no ``exe_ids``) allow every executor of the workspace."""
        return self.exe_ids is None or exe_id in self.exe_ids


def _sign(secret: bytes, signing_input: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


def mint(
    secret: str | bytes,
    *,
    turn_id: str,
    workspace_id: str,
    ttl: float,
    exe_ids: list[str] | None = None,
    user_id: str = "",
    now: float | None = None,
) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("capability token secret is empty")
    if not turn_id or not workspace_id:
        raise ValueError("turn_id and workspace_id are required")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"turn_id": turn_id, "workspace_id": workspace_id}
    if exe_ids is not None:
        payload["exe_ids"] = list(exe_ids)
    if user_id:
        payload["user_id"] = user_id
    payload["iat"] = issued
    payload["exp"] = issued + int(ttl)
    signing_input = f"{b64.encode(HEADER)}.{b64.encode(json.dumps(payload, separators=(',', ':')).encode())}"
    return f"{signing_input}.{b64.encode(_sign(key, signing_input.encode()))}"


def verify(token: str, secret: str | bytes, *, now: float | None = None) -> CapPayload:
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ValueError("capability token secret is empty")
    parts = token.split(".")
    # A token is ASCII; anything else (a lone surrogate from a JSON string, say) is malformed
    # here rather than a UnicodeEncodeError when the signing input is encoded for the MAC.
    if len(parts) != 3 or not all(parts) or not token.isascii():
        raise Malformed()
    header_b64, payload_b64, signature_b64 = parts
    try:
        header = json.loads(b64.decode(header_b64))
        signature = b64.decode(signature_b64)
    except ValueError:
        raise Malformed() from None
    if not isinstance(header, dict) or header.get("alg") != "HS256" or header.get("typ") != "CXG":
        raise Malformed()
    if not hmac.compare_digest(signature, _sign(key, f"{header_b64}.{payload_b64}".encode())):
        raise BadSignature()
    try:
        payload = json.loads(b64.decode(payload_b64))
    except ValueError:
        raise Malformed() from None
    if not isinstance(payload, dict):
        raise Malformed()
    exp = payload.get("exp", 0)
    iat = payload.get("iat", 0)
    exe_ids = payload.get("exe_ids")
    if (
        not isinstance(exp, int)
        or not isinstance(iat, int)
        or not isinstance(payload.get("turn_id", ""), str)
        or not isinstance(payload.get("workspace_id", ""), str)
        or not isinstance(payload.get("user_id", ""), str)
        or (exe_ids is not None and (not isinstance(exe_ids, list) or not all(isinstance(x, str) for x in exe_ids)))
    ):
        raise Malformed()
    if int(time.time() if now is None else now) > exp:
        raise Expired()
    known = {"turn_id", "workspace_id", "exe_ids", "user_id", "iat", "exp"}
    return CapPayload(
        turn_id=payload.get("turn_id", ""),
        workspace_id=payload.get("workspace_id", ""),
        iat=iat,
        exp=exp,
        exe_ids=tuple(exe_ids) if exe_ids is not None else None,
        user_id=payload.get("user_id", ""),
        extra={k: v for k, v in payload.items() if k not in known},
    )
