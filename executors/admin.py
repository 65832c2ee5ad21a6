"""Operator admin: executors (with live presence), their workspace bindings, and registration.

The registration token hash and its encrypted copy never appear here: registering shows the raw
token once, in the response to the POST that created it, and nothing can display it again.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.helpers import AdminForm
from django.contrib.admin.views.main import ChangeList
from django.contrib.admin.widgets import RelatedFieldWidgetWrapper
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.cache import patch_cache_control
from django.utils.html import format_html

from executors import services
from executors.environment_block import DEFAULT_LIFETIME, BlockError, make_block
from executors.executor_command import codex_install_command, executor_launch, public_base_url, public_ws_base_url
from executors.models import Executor, WorkspaceExecutor
from executors.presence import presence_store
from workspaces import identity
from workspaces.models import Workspace

# Instance attribute carrying an executor's presence, looked up once per changelist page.
_ONLINE_ATTR = "_cxg_online"


class OnlineFilter(admin.SimpleListFilter):
    title = "presence"
    parameter_name = "online"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [("yes", "Online"), ("no", "Offline")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(exe_id__in=presence_store().all_online())
        if self.value() == "no":
            return queryset.exclude(exe_id__in=presence_store().all_online())
        return queryset


class ExecutorChangeList(ChangeList):
    """Looks up the page's presence in one store round trip rather than one per row."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        # Evaluating the page's queryset fills its cache, so rendering reuses these instances.
        page: list[Executor] = list(self.result_list)
        online = presence_store().online(executor.exe_id for executor in page)
        for executor in page:
            setattr(executor, _ONLINE_ATTR, executor.exe_id in online)


def known_workspace(workspace_id: str) -> None:
    """With the built-in control plane, a binding must name one of its workspaces (a typo would
    bind the executor where no token can reach it); an agentserver's workspaces are not known here."""
    if workspace_id and identity.builtin() and not Workspace.objects.filter(id=workspace_id).exists():
        raise ValidationError(f"No workspace {workspace_id!r}: create it under Workspaces first.")


class KnownWorkspaceField:
    """Admin mixin: the ``workspace_id`` field is checked by ``known_workspace``."""

    def formfield_for_dbfield(
        self, db_field: models.Field[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> forms.Field | None:
        formfield: forms.Field | None = super().formfield_for_dbfield(db_field, request, **kwargs)  # type: ignore[misc]
        if formfield is not None and db_field.name == "workspace_id":
            formfield.validators.append(known_workspace)
        return formfield


class WorkspaceExecutorInline(KnownWorkspaceField, admin.TabularInline[WorkspaceExecutor, Executor]):
    model = WorkspaceExecutor
    fields = ["workspace_id", "name", "description", "is_default", "created_at"]
    readonly_fields = ["created_at"]
    extra = 0
    verbose_name = "workspace binding"
    formfield_overrides = {models.TextField: {"widget": forms.Textarea(attrs={"rows": 2, "cols": 40})}}


_REGISTER_FIELDSETS: list[tuple[str | None, dict[str, Any]]] = [
    (None, {"fields": ["user_id", "display_name"]}),
    ("Workspace binding (optional)", {"fields": ["workspace_id", "binding_name", "description", "is_default"]}),
]


class RegisterExecutorForm(forms.ModelForm[Executor]):
    """Validates the executor's fields like its model; saving goes through ``services.register_executor``."""

    workspace_id = forms.CharField(
        max_length=255,
        required=False,
        validators=[known_workspace],
        help_text="Bind the new executor to this workspace right away.",
    )
    binding_name = forms.CharField(
        max_length=128,
        required=False,
        label="Environment name",
        help_text="The name the workspace's tools use for this executor; unique per workspace.",
    )
    description = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 2}), help_text="Shown to the model."
    )
    is_default = forms.BooleanField(required=False)

    class Meta:
        model = Executor
        fields = ["user_id", "display_name"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("workspace_id") and not data.get("binding_name"):
            self.add_error("binding_name", "Required to bind the executor to a workspace.")
        if data.get("binding_name") and not data.get("workspace_id"):
            self.add_error("workspace_id", "Required to bind the executor under this name.")
        return data


# Characters of an id the changelist shows: "exe_" and 8 hex digits of the UUID.
ID_CHARS = 12


def _abridged(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, in full in the tooltip."""
    if len(value) <= limit:
        return value
    return format_html('<span title="{}">{}…</span>', value, value[:limit])


# What the executor's connections recorded: shown, never edited.
CONNECTION_FIELDS: tuple[str, ...] = (
    "registered_at",
    "last_seen_at",
    "connected_at",
    "disconnected_at",
    "codex_version",
    "client_os",
    "client_ip",
    "client_ua",
)


@admin.register(Executor)
class ExecutorAdmin(admin.ModelAdmin[Executor]):
    # Narrow enough for a laptop screen: ids shortened (in full on hover and on the change page),
    # one compact timestamp; the rest of the connection record is on the change page.
    list_display = ["executor_id", "display_name", "owner", "online", "last_seen", "codex", "platform"]
    list_filter = [OnlineFilter, "registered_at"]
    search_fields = ["exe_id", "display_name", "user_id", "bindings__name", "bindings__workspace_id"]
    fieldsets = [
        (None, {"fields": ["exe_id", "display_name", "user_id", "online"]}),
        ("Connection", {"fields": CONNECTION_FIELDS}),
    ]
    readonly_fields = ["exe_id", "online", *CONNECTION_FIELDS]
    inlines = [WorkspaceExecutorInline]

    @admin.display(description="executor id", ordering="exe_id")
    def executor_id(self, obj: Executor) -> str:
        return _abridged(obj.exe_id, ID_CHARS)

    @admin.display(description="user id", ordering="user_id")
    def owner(self, obj: Executor) -> str:
        return _abridged(obj.user_id, ID_CHARS)

    @admin.display(description="last seen", ordering="last_seen_at")
    def last_seen(self, obj: Executor) -> str | None:
        if obj.last_seen_at is None:
            return None
        return timezone.localtime(obj.last_seen_at).strftime("%Y-%m-%d %H:%M")

    @admin.display(description="codex", ordering="codex_version")
    def codex(self, obj: Executor) -> str | None:
        return obj.codex_version or None

    @admin.display(description="OS", ordering="client_os")
    def platform(self, obj: Executor) -> str | None:
        return obj.client_os or None

    @admin.display(boolean=True, description="online")
    def online(self, obj: Executor) -> bool:
        known: bool | None = getattr(obj, _ONLINE_ATTR, None)
        return known if known is not None else presence_store().get(obj.exe_id) is not None

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ExecutorChangeList

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Register an executor (and optionally bind it), then show its token and launch command once."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        # Built-in mode: the operator owns what they register, in the embedded default's workspace.
        initial = {"user_id": str(request.user.pk), "workspace_id": "default"} if identity.builtin() else {}
        form = RegisterExecutorForm(request.POST if request.method == "POST" else None, initial=initial)
        if form.is_valid():
            try:
                created, binding = self._register(request, form.cleaned_data)
            except services.NameTaken:
                form.add_error("binding_name", "This name is already taken in that workspace.")
            else:
                return self._registered_response(request, created, binding)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Register executor",
            "adminform": AdminForm(form, _REGISTER_FIELDSETS, {}),
            "codex_install": codex_install_command(),
            "has_view_permission": self.has_view_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/executors/executor/register.html", context)

    def _register(
        self, request: HttpRequest, data: dict[str, Any]
    ) -> tuple[services.NewExecutor, WorkspaceExecutor | None]:
        # One transaction: a taken binding name must not leave an unbound executor behind.
        with transaction.atomic():
            created = services.register_executor(data["user_id"], data["display_name"])
            message: list[dict[str, Any]] = [{"added": {}}]
            binding = None
            if data["workspace_id"]:
                binding = services.bind_executor(
                    data["workspace_id"],
                    created.executor.exe_id,
                    data["binding_name"],
                    data["description"],
                    data["is_default"],
                )
                message.append({"added": {"name": str(WorkspaceExecutor._meta.verbose_name), "object": str(binding)}})
            self.log_addition(request, created.executor, message)
        return created, binding

    def _registered_response(
        self, request: HttpRequest, created: services.NewExecutor, binding: WorkspaceExecutor | None
    ) -> HttpResponse:
        executor = created.executor
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Executor registered",
            "executor": executor,
            "binding": binding,
            "token": created.registration_token,
            "launch": executor_launch(executor.exe_id, created.registration_token, public_base_url(request)),
            "codex_install": codex_install_command(),
            "has_view_permission": self.has_view_permission(request),
        }
        response = TemplateResponse(request, "admin/executors/executor/registered.html", context)
        # The only response that carries the raw token: no browser or proxy cache may keep it.
        patch_cache_control(response, no_store=True)
        return response


@admin.register(WorkspaceExecutor)
class WorkspaceExecutorAdmin(KnownWorkspaceField, admin.ModelAdmin[WorkspaceExecutor]):
    list_display = ["workspace_id", "name", "executor", "is_default", "created_at"]
    list_filter = ["workspace_id", "name", ("executor", admin.RelatedOnlyFieldListFilter), "is_default"]
    list_select_related = ["executor"]
    search_fields = ["workspace_id", "name", "executor__exe_id", "executor__display_name"]
    fields = ["workspace_id", "name", "executor", "description", "is_default", "created_at", "own_codex"]
    readonly_fields = ["created_at", "own_codex"]
    autocomplete_fields = ["executor"]

    @admin.display(description="your own codex")
    def own_codex(self, obj: WorkspaceExecutor) -> str:
        if obj.pk is None or not identity.builtin():
            return "-"
        return format_html(
            '<a href="{}">A ~/.codex/environments.toml block for me</a> (a new token of yours, shown once)',
            reverse("admin:executors_workspaceexecutor_environment_block", args=[obj.pk]),
        )

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.environment_block_view)
        own = [path("<path:object_id>/environment-block/", view, name="executors_workspaceexecutor_environment_block")]
        return own + super().get_urls()

    def environment_block_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: what the block is; POST: mint a token of the logged-in user and show the block once."""
        binding = self.get_object(request, object_id)
        if binding is None or not self.has_view_permission(request, binding):
            raise PermissionDenied
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Your own codex with {binding.name}",
            "binding": binding,
            "has_view_permission": True,
        }
        if request.method == "POST":
            try:
                if not identity.builtin():
                    raise BlockError("environment blocks use built-in tokens: CODEXGW_IDENTITY_BACKEND is not builtin")
                block = make_block(
                    binding, request.user, ws_base_url=public_ws_base_url(request), expires_in=DEFAULT_LIFETIME
                )
            except BlockError as exc:
                context["refusal"] = str(exc)
            else:
                context["environment_block"] = block.text
                context["record"] = block.token.record
        response = TemplateResponse(request, "admin/executors/workspaceexecutor/environment_block.html", context)
        # The block carries the raw token: no browser or proxy cache may keep it.
        patch_cache_control(response, no_store=True)
        return response

    def formfield_for_dbfield(
        self, db_field: models.Field[Any, Any], request: HttpRequest, **kwargs: Any
    ) -> forms.Field | None:
        formfield = super().formfield_for_dbfield(db_field, request, **kwargs)
        # Registering ends on the one-time token page, which cannot hand a new executor back to a popup.
        if formfield is not None and isinstance(formfield.widget, RelatedFieldWidgetWrapper):
            formfield.widget.can_add_related = False
        return formfield
