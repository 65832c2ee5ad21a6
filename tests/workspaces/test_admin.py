"""Admin of the built-in control plane: a token is shown exactly once, revoking works at once."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

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
