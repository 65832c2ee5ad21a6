"""base64url without padding (RFC 7515), strict: padding, foreign characters and non-canonical
forms (unused low bits set in the last character) are rejected, so one value has one spelling
and a signature cannot be respelled into another accepted string."""

from __future__ import annotations

import base64
import binascii
import re

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode(text: str) -> bytes:
    if not _ALPHABET.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url without padding")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url without padding") from exc
    if encode(data) != text:
        raise ValueError("not canonical base64url")
    return data
