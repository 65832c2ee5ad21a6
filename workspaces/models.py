"""The built-in control plane: workspaces, their members (Django users with a role) and personal
access tokens. Used when ``CODEXGW_IDENTITY_BACKEND`` is ``builtin``; with an agentserver these
tables stay empty and the agentserver answers instead.

A workspace's id is the ``workspace_id`` everything else uses (executor bindings, app-servers,
capability tokens), so executors bind to built-in workspaces exactly as to agentserver ones.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

WORKSPACE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z"  # what CODEX_HOME paths accept


class Workspace(models.Model):
    id = models.CharField(
        primary_key=True,
        max_length=128,
        validators=[RegexValidator(WORKSPACE_ID_PATTERN, "Letters, digits, '_', '.', '-'; starting alphanumeric.")],
        help_text="The workspace id executors are bound to and tokens grant (e.g. 'default').",
    )
    name = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.id


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


class Membership(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="workspace_memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["workspace_id", "created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["workspace", "user"], name="uniq_membership_workspace_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace_id} ({self.role})"


class Scope(models.TextChoices):
    TUI = "tui", "tui: attach a Codex TUI (codex --remote)"
    TURNS = "turns:submit", "turns:submit: POST /api/turns"
    SDK = "sdk", "sdk: /api/connectors/* (tools on executors)"
    ENVIRONMENTS = "environments", "environments: the workspace's executors as environments of your own codex"


class AccessToken(models.Model):
    """A personal access token. Only its SHA-256 digest is stored (tokens carry 256 random bits,
    so a fast hash is enough) plus a short visible prefix to tell tokens apart in listings."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="tokens")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens")
    name = models.CharField(max_length=128, blank=True, default="")
    prefix = models.CharField(max_length=32, editable=False, help_text="The token's visible start.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name or 'token'} ({self.prefix}…)"
