"""Encryption at rest for registration tokens (SigV4 verification needs the raw secret).

Keys come from ``CODEXGW_TOKEN_ENCRYPTION_KEYS`` (comma-separated passphrases); the first
encrypts, every key decrypts, so a key can be rotated without re-registering executors.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


def _fernet_key(passphrase: str) -> bytes:
    digest = hashlib.sha256(b"codexgw registration-token encryption\x00" + passphrase.encode()).digest()
    return base64.urlsafe_b64encode(digest)


@cache
def _box(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(_fernet_key(key)) for key in keys])


def encrypt(plaintext: str) -> str:
    return _box(tuple(settings.TOKEN_ENCRYPTION_KEYS)).encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str | None:
    """The plaintext, or None when no configured key can decrypt it."""
    try:
        return _box(tuple(settings.TOKEN_ENCRYPTION_KEYS)).decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        return None
