"""Admin of the built-in control plane: a token is shown exactly once, revoking works at once."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from executors.models import WorkspaceExecutor
from workspaces import tokens
from workspaces.identity import Unauthorized
from workspaces.models import AccessToken, Workspace

pytestmark = pytest.mark.django_db

ADD = reverse("admin:workspaces_accesstoken_add")
CHANGELIST = reverse("admin:workspaces_accesstoken_changelist")


@pytest.fixture
def admin_member(admin_user: Any, workspace: Workspace) -> Any:
    workspace.memberships.create(user=admin_user, role="admin")
    return admin_user


def create(client: Client, workspace: Workspace, user: Any, **extra: Any) -> Any:
    data = {"workspace": workspace.pk, "user": user.pk, "name": "laptop", "scopes": ["tui", "sdk"], "expires": "30"}
    return client.post(ADD, {**data, **extra})


def test_the_created_token_is_shown_once_with_usage_lines(
    admin_client: Client, admin_member: Any, workspace: Workspace
) -> None:
    response = create(admin_client, workspace, admin_member)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    html = response.content.decode()
    [token] = re.findall(r'<pre id="access-token">(cxgt_[A-Za-z0-9_-]+)</pre>', html)
    assert f"export CODEXGW_TOKEN='{token}'" in html
    assert "codex --remote ws://testserver --remote-auth-token-env CODEXGW_TOKEN" in html
    grant = tokens.check(token, "tui")
    assert (grant.workspace_id, grant.user_id, grant.scopes) == (
        "ws-a",
        str(admin_member.pk),
        frozenset({"tui", "sdk"}),
    )
    record = AccessToken.objects.get()
    assert record.expires_at is not None
    assert LogEntry.objects.filter(object_id=str(record.pk)).exists()
    # Nowhere else: neither the list nor the token's own page can show it again.
    for page in (CHANGELIST, reverse("admin:workspaces_accesstoken_change", args=[record.pk])):
        shown = admin_client.get(page).content.decode()
        assert record.prefix in shown
        assert token not in shown


def test_a_user_outside_the_workspace_gets_a_form_error(admin_client: Client, workspace: Workspace) -> None:
    stranger = get_user_model().objects.create_user("mallory")
    response = create(admin_client, workspace, stranger)
    assert response.status_code == 200
    assert "mallory is not a member of workspace ws-a." in response.content.decode()
    assert not AccessToken.objects.exists()


def test_revoke_action(admin_client: Client, workspace: Workspace, owner: Any) -> None:
    first, second = tokens.mint(workspace, owner), tokens.mint(workspace, owner)
    response = admin_client.post(CHANGELIST, {"action": "revoke", "_selected_action": [first.record.pk]}, follow=True)
    assert "Revoked 1 token(s)" in response.content.decode()
    with pytest.raises(Unauthorized, match="token revoked"):
        tokens.check(first.token, "tui")
    tokens.check(second.token, "tui")
    assert "revoked" in admin_client.get(CHANGELIST).content.decode()


def test_a_workspace_id_cannot_change_once_created(admin_client: Client, workspace: Workspace) -> None:
    url = reverse("admin:workspaces_workspace_change", args=[workspace.pk])
    html = admin_client.get(url).content.decode()
    assert 'name="id"' not in html
    assert 'name="name"' in html


def test_a_workspace_id_must_be_usable_as_a_path(admin_client: Client) -> None:
    add = reverse("admin:workspaces_workspace_add")
    data = {"id": "../etc", "name": "x", "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0"}
    response = admin_client.post(add, data)
    assert response.status_code == 200
    assert not Workspace.objects.filter(id="../etc").exists()


REGISTER = reverse("admin:executors_executor_add")


def register(client: Client, workspace_id: str) -> Any:
    data = {"user_id": "1", "display_name": "laptop", "workspace_id": workspace_id, "binding_name": "laptop"}
    return client.post(REGISTER, data)


@pytest.mark.usefixtures("builtin")
def test_builtin_mode_binds_executors_only_to_existing_workspaces(admin_client: Client, workspace: Workspace) -> None:
    refused = register(admin_client, "ws-typo")
    assert "No workspace &#x27;ws-typo&#x27;: create it under Workspaces first." in refused.content.decode()
    assert not WorkspaceExecutor.objects.exists()
    accepted = register(admin_client, "ws-a")
    assert "is registered and bound to workspace <code>ws-a</code>" in accepted.content.decode()
    # The binding admin refuses the same typo.
    binding = WorkspaceExecutor.objects.get()
    change = reverse("admin:executors_workspaceexecutor_change", args=[binding.pk])
    data = {"workspace_id": "ws-typo", "name": "laptop", "executor": binding.executor_id, "description": ""}
    assert "No workspace" in admin_client.post(change, data).content.decode()
    assert WorkspaceExecutor.objects.get().workspace_id == "ws-a"


@pytest.mark.usefixtures("builtin")
def test_builtin_mode_fills_in_the_operator_and_the_default_workspace(admin_client: Client, admin_user: Any) -> None:
    html = admin_client.get(REGISTER).content.decode()
    assert f'name="user_id" value="{admin_user.pk}"' in html
    assert 'name="workspace_id" value="default"' in html


def test_agentserver_mode_binds_to_any_workspace_id(admin_client: Client, settings: Any) -> None:
    settings.CODEXGW_IDENTITY_BACKEND = "agentserver"
    assert (
        "is registered and bound to workspace <code>ws-anywhere</code>"
        in register(admin_client, "ws-anywhere").content.decode()
    )
    assert 'name="user_id" value' not in admin_client.get(REGISTER).content.decode()


def test_a_workspace_page_links_to_its_executors(admin_client: Client, workspace: Workspace) -> None:
    html = admin_client.get(reverse("admin:workspaces_workspace_change", args=[workspace.pk])).content.decode()
    link = reverse("admin:executors_workspaceexecutor_changelist") + "?workspace_id=ws-a"
    assert f'<a href="{link}">Executors bound to ws-a</a>' in html
