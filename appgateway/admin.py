"""Operator surface of the app gateway: the workspaces' live codex app-servers, cluster-wide.

The list comes from the supervisor's leases (Redis), not from a table: ``AppServerSession`` is
an unmanaged model that only gives the admin an entry and the permissions. Viewing needs
``appgateway.view_appserversession``; restarting (stop wherever it runs, start again) needs
``appgateway.restart_appserver``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from appgateway import supervisor
from appgateway.models import AppServerSession

RESTART_PERMISSION = "appgateway.restart_appserver"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    text = f"{hours}h {minutes:02d}m {secs:02d}s" if hours or days else f"{minutes}m {secs:02d}s"
    return f"{days}d {text}" if days else text


@admin.register(AppServerSession)
class AppServerSessionAdmin(admin.ModelAdmin[AppServerSession]):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AppServerSession | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AppServerSession | None = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        restart = self.admin_site.admin_view(require_POST(self.restart_view))
        return [
            path("", self.admin_site.admin_view(self.changelist_view), name="appgateway_appserversession_changelist"),
            path("<str:workspace_id>/restart/", restart, name="appgateway_appserversession_restart"),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        sessions = supervisor.get_supervisor().live_sessions()
        rows = [
            {
                "workspace_id": session.workspace_id,
                "process_id": session.process_id,
                "pid": session.pid or "starting",
                "uptime": _duration(session.uptime),
                "last_activity": datetime.fromtimestamp(session.last_activity, tz=UTC),
                "idle": _duration(max(0.0, datetime.now(tz=UTC).timestamp() - session.last_activity)),
            }
            for session in sessions
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Live app-server sessions",
            "opts": self.opts,
            "rows": rows,
            "can_restart": request.user.has_perm(RESTART_PERMISSION),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/appgateway/appserversession/change_list.html", context)

    def restart_view(self, request: HttpRequest, workspace_id: str) -> HttpResponse:
        if not request.user.has_perm(RESTART_PERMISSION):
            raise PermissionDenied
        if workspace_id not in {session.workspace_id for session in supervisor.get_supervisor().live_sessions()}:
            # Restart, not start: a crafted POST must not spawn app-servers for arbitrary workspaces.
            self.message_user(request, f"{workspace_id} has no running app-server.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:appgateway_appserversession_changelist"))
        try:
            # Runs on the server's event loop, where the supervisor's state lives.
            handle = async_to_sync(supervisor.get_supervisor().restart)(workspace_id)
        except Exception as exc:
            self.message_user(request, f"Restarting {workspace_id} failed: {exc}", messages.ERROR)
        else:
            self.message_user(request, f"Restarted {workspace_id}: app-server pid {handle.pid}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:appgateway_appserversession_changelist"))
