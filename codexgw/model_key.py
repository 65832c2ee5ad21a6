"""Whether the gateway can make model calls at all: a missing key is reported where a user looks
(the start-up log, the admin banner, ``/readyz`` detail) and by the model proxy, instead of as a
failed turn with no explanation. Only built-in mode needs a static key: the agentserver hands out
per-workspace model tokens."""

from __future__ import annotations

from django.conf import settings

MISSING_KEY = "no model API key: set CXG_CODEX_API_KEY (or OPENAI_API_KEY) in the gateway's environment"


def model_key_problem() -> str | None:
    """What stops model calls from working, or None."""
    if settings.CODEXGW_IDENTITY_BACKEND == "builtin" and not settings.CXG_CODEX_API_KEY:
        return MISSING_KEY
    return None
