"""Secrets for the embedded default: generated once, kept in the data directory (mode 0600).

Only used when ``CODEXGW_LOCAL_SECRETS`` is on (the default when no ``DATABASE_URL`` is set),
so the quick start needs no environment while a production deployment, which sets
``DATABASE_URL``, never runs on a secret nobody chose.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

LOCAL_SECRET_NAMES = (
    "DJANGO_SECRET_KEY",
    "CODEXGW_TOKEN_ENCRYPTION_KEYS",
    "CXG_CAPTOKEN_HMAC_SECRET",
    "CXG_INTERNAL_SHARED_SECRET",
    "CXG_AGENTSERVER_INTERNAL_SECRET",
    "CXG_METRICS_TOKEN",
)


def load_or_create(path: Path) -> dict[str, str]:
    """Return the stored local secrets, generating (and storing) any that are missing."""
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
    missing = [name for name in LOCAL_SECRET_NAMES if not stored.get(name)]
    if missing:
        for name in missing:
            stored[name] = secrets.token_urlsafe(32)
        _write(path, stored)
    return stored


def read_stored(path: Path) -> dict[str, str]:
    """What the file holds; nothing when it was never written (every secret came from the
    environment, so settings had nothing to generate)."""
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}


def store_extra(path: Path, name: str, value: str) -> None:
    """Add one more generated value (e.g. the local admin password) to the file."""
    stored = read_stored(path)
    stored[name] = value
    _write(path, stored)


def _write(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2)
    os.replace(temporary, path)
