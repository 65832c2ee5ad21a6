from django.db import models


class AppServerSession(models.Model):
    """A workspace's live codex app-server, for the admin. Not a table: sessions live in the
    supervisor's leases (``Supervisor.live_sessions()``); the model carries the admin entry and
    the restart permission."""

    workspace_id = models.CharField(max_length=128, primary_key=True)

    class Meta:
        managed = False
        default_permissions = ("view",)
        permissions = [("restart_appserver", "Can restart a workspace's codex app-server")]
        verbose_name = "app-server session"

    def __str__(self) -> str:
        return self.workspace_id
