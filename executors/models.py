"""Executors (remote machines running ``codex exec-server``) and their workspace bindings.

Table and column names follow the Go gateway's schema (``executors``, ``workspace_executors``)
so operators can compare the two systems' data directly.
"""

from __future__ import annotations

import uuid

from django.db import models


def new_exe_id() -> str:
    return f"exe_{uuid.uuid4()}"


class Executor(models.Model):
    exe_id = models.CharField(primary_key=True, max_length=64, default=new_exe_id, editable=False)
    user_id = models.CharField(
        max_length=255,
        db_index=True,
        help_text="Owner: a user id (the agentserver's, or in built-in mode this gateway's user id).",
    )
    display_name = models.CharField(max_length=255, blank=True, default="")
    registration_token_hash = models.CharField(
        max_length=128, editable=False, help_text="bcrypt hash of the registration token (bearer routes)."
    )
    registration_token_encrypted = models.TextField(
        editable=False, help_text="The registration token encrypted at rest; SigV4 verification needs the raw secret."
    )
    registered_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    connected_at = models.DateTimeField(null=True, blank=True)
    disconnected_at = models.DateTimeField(null=True, blank=True)
    codex_version = models.CharField(max_length=64, blank=True, default="")
    client_os = models.CharField(max_length=255, blank=True, default="", db_column="os")
    client_ip = models.CharField(max_length=64, blank=True, default="")
    client_ua = models.CharField(max_length=512, blank=True, default="", verbose_name="client user agent")

    class Meta:
        db_table = "executors"
        ordering = ["-registered_at"]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.exe_id})" if self.display_name else self.exe_id


class WorkspaceExecutor(models.Model):
    workspace_id = models.CharField(max_length=255, db_index=True)
    executor = models.ForeignKey(Executor, on_delete=models.CASCADE, related_name="bindings", db_column="exe_id")
    name = models.CharField(
        max_length=128, help_text="Environment name the workspace's tools use; unique per workspace."
    )
    description = models.TextField(blank=True, default="", help_text="Shown to the model.")
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "workspace_executors"
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["workspace_id", "executor"], name="uniq_workspace_executors_exe"),
            models.UniqueConstraint(fields=["workspace_id", "name"], name="uniq_workspace_executors_name"),
        ]

    def __str__(self) -> str:
        return f"{self.workspace_id}/{self.name} → {self.executor_id}"
