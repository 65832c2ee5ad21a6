"""What the identity interface (``workspaces.identity``) answers with: the scopes, a grant, and
the refusals with the HTTP status each stands for. Shared by the interface and the built-in
backend (``workspaces.tokens``), so neither imports the other's module for them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

TUI = "tui"
TURNS = "turns:submit"
SDK = "sdk"
ENVIRONMENTS = "environments"  # /bridge/<exe_id> of the workspace's executors, from a user's own codex


@dataclass(frozen=True)
class Grant:
    workspace_id: str
    user_id: str
    token_id: str  # a loggable name of the token (its visible prefix, or the agentserver's key id)
    scopes: frozenset[str]
    expires_at: datetime | None = None


class IdentityError(Exception):
    status = 401

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unauthorized(IdentityError):
    status = 401


class Forbidden(IdentityError):
    status = 403


class Unavailable(IdentityError):
    status = 503
