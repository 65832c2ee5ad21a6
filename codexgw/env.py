"""Typed readers for environment variables that fail loudly on bad values.

Every reader takes the variable name and a default. A variable that is set but cannot be
parsed raises ``ImproperlyConfigured`` naming the variable, so a typo in a deployment stops
the process at start-up instead of silently running on a default. ``*_FILE`` variants are
honoured for secrets (``CXG_FOO_FILE=/run/secrets/foo``), as container platforms mount them.
"""

from __future__ import annotations

import os
import re

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str = "") -> str:
    value = _raw(name)
    return default if value is None else value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use one of true/false, 1/0, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum {minimum}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is above the maximum {maximum}")
    return number


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``300s``, ``5m``, ``1h30m``, ``250ms``; also days, ``90d``) or plain
    seconds into seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        raise ValueError(f"not a duration: {text!r}")
    return total


def env_duration(name: str, default: float, *, minimum: float = 0.0) -> float:
    """Seconds, from a Go-style duration string or a plain number of seconds."""
    value = _raw(name)
    if value is None:
        return default
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a duration (e.g. 300s, 5m, 1h30m)") from None
    if seconds < minimum:
        raise ImproperlyConfigured(f"{name}={value!r} is below the minimum of {minimum} seconds")
    return seconds


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: set[str]) -> str:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of {sorted(choices)}")
    return value.lower()


def env_secret(name: str) -> str:
    """A secret from ``NAME`` or from the file named by ``NAME_FILE`` (not both)."""
    direct = _raw(name)
    path = _raw(f"{name}_FILE")
    if direct is not None and path is not None:
        raise ImproperlyConfigured(f"set either {name} or {name}_FILE, not both")
    if path is None:
        return direct or ""
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.read().strip()
    except OSError as exc:
        raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}") from None
    if not secret:
        raise ImproperlyConfigured(f"{name}_FILE={path!r} is empty")
    return secret
