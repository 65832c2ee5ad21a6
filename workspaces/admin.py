"""Admin of the built-in control plane: workspaces with their members, and access tokens.

Creating a token shows it once, on the response to the POST that created it (no-store), with
copy-paste lines for a shell and for ``codex --remote``; nothing can display it again. Tokens are
listed by their visible prefix and revoked with the "Revoke" action; a revoked row stays (who
had access, until when) until it is deleted.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import AdminForm
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_cache_control
from django.utils.html import format_html

from workspaces import tokens
from workspaces.models import AccessToken, Membership, Scope, Workspace

EXPIRY_CHOICES = [
    ("", "Never"),
    ("1", "1 day"),
    ("7", "7 days"),
    ("30", "30 days"),
    ("90", "90 days"),
    ("365", "1 year"),
]
TOKEN_ENV = "CODEXGW_TOKEN"  # noqa: S105 - the variable's name, not a token


class MembershipInline(admin.TabularInline[Membership, Workspace]):
    model = Membership
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]
    autocomplete_fields = ["user"]
    extra = 0


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin[Workspace]):
    list_display = ["id", "name", "created_at"]
    search_fields = ["id", "name"]
    fields = ["id", "name", "executors", "created_at"]
    inlines = [MembershipInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Workspace | None = None) -> list[str]:
        # The id is what bindings, app-servers and tokens refer to: fixed once created.
        return ["id", "executors", "created_at"] if obj is not None else ["executors", "created_at"]

    @admin.display(description="executors")
    def executors(self, obj: Workspace) -> str:
        # Bindings belong to the executors app (above this one): link to them, filtered.
        url = reverse("admin:executors_workspaceexecutor_changelist") + "?" + urlencode({"workspace_id": obj.pk})
        return format_html('<a href="{}">Executors bound to {}</a>', url, obj.pk)


class NewTokenForm(forms.Form):
    workspace = forms.ModelChoiceField(queryset=Workspace.objects.all())
    user = forms.ModelChoiceField(
        queryset=Membership.user.field.related_model.objects.filter(is_active=True).order_by("username"),  # type: ignore[attr-defined]
        help_text="Must be a member of the workspace.",
    )
    name = forms.CharField(max_length=128, required=False, help_text="What the token is for, e.g. 'laptop TUI'.")
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices, initial=list(Scope.values), widget=forms.CheckboxSelectMultiple
    )
    expires = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False, initial="90")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        workspace, user = data.get("workspace"), data.get("user")
        member = Membership.objects.filter(workspace=workspace, user=user).exists()
        if workspace is not None and user is not None and not member:
            self.add_error("user", f"{user} is not a member of workspace {workspace}.")
        return data


_NEW_TOKEN_FIELDSETS: list[tuple[str | None, dict[str, Any]]] = [
    (None, {"fields": ["workspace", "user", "name", "scopes", "expires"]}),
]


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [("active", "Active"), ("revoked", "Revoked"), ("expired", "Expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        live = queryset.filter(revoked_at__isnull=True)
        if self.value() == "expired":
            return live.filter(expires_at__lte=now)
        if self.value() == "active":
            return live.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        return queryset


@admin.register(AccessToken)
class AccessTokenAdmin(admin.ModelAdmin[AccessToken]):
    list_display = ["prefix", "name", "workspace", "user", "scope_list", "token_status", "last_used_at"]
    list_filter = [StatusFilter, "workspace"]
    list_select_related = ["workspace", "user"]
    search_fields = ["prefix", "name", "user__username", "workspace__id"]
    actions = ["revoke"]
    fields = (
        "prefix",
        "name",
        "workspace",
        "user",
        "scope_list",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    readonly_fields = fields

    @admin.display(description="scopes")
    def scope_list(self, obj: AccessToken) -> str:
        return ", ".join(obj.scopes)

    @admin.display(description="status")
    def token_status(self, obj: AccessToken) -> str:
        return tokens.status(obj)

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[AccessToken]) -> None:
        count = tokens.revoke(queryset)
        self.message_user(request, f"Revoked {count} token(s); they stop working at once.", messages.SUCCESS)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # A token cannot be edited: the page is for reading (revoking is the list's action).
        context = {**(extra_context or {}), "show_save": False, "show_save_and_continue": False}
        context["show_save_and_add_another"] = False
        return super().change_view(request, object_id, form_url, context)

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Create a token, then show it once."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = NewTokenForm(request.POST if request.method == "POST" else None)
        if form.is_valid():
            data = form.cleaned_data
            days = data.get("expires")
            created = tokens.mint(
                data["workspace"],
                data["user"],
                name=data["name"],
                scopes=data["scopes"],
                expires_in=timedelta(days=int(days)) if days else None,
            )
            self.log_addition(request, created.record, [{"added": {}}])
            return self._created_response(request, created)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Create access token",
            "adminform": AdminForm(form, _NEW_TOKEN_FIELDSETS, {}),  # type: ignore[arg-type] # a plain Form renders alike
            "has_view_permission": self.has_view_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/workspaces/accesstoken/create.html", context)

    def _created_response(self, request: HttpRequest, created: tokens.NewToken) -> HttpResponse:
        host = request.get_host()
        scheme = "wss" if request.is_secure() else "ws"
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Access token created",
            "record": created.record,
            "token": created.token,
            "token_env": TOKEN_ENV,
            "remote_url": f"{scheme}://{host}",
            "http_url": f"{request.scheme}://{host}",
            "has_view_permission": self.has_view_permission(request),
        }
        response = TemplateResponse(request, "admin/workspaces/accesstoken/created.html", context)
        # The only response that carries the raw token: no browser or proxy cache may keep it.
        patch_cache_control(response, no_store=True)
        return response
