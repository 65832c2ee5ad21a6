"""The ``~/.codex/environments.toml`` block of a binding (``executors/environment_block.py``):
from the admin (a token of the logged-in user, shown once) and its refusals."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
from django.test import Client

from executors import services
from executors.models import WorkspaceExecutor
from workspaces.models import AccessToken, Membership, Role, Workspace

BLOCK = re.compile(r'<pre id="environment-block">(.*?)</pre>', re.S)


@pytest.fixture
def binding(settings: Any) -> WorkspaceExecutor:
    settings.CODEXGW_IDENTITY_BACKEND = "builtin"
    Workspace.objects.create(id="ws-block")
    exe_id = services.register_executor("user-b", "box").executor.exe_id
    return WorkspaceExecutor.objects.create(workspace_id="ws-block", executor_id=exe_id, name="box")


def page(binding: WorkspaceExecutor) -> str:
    return f"/admin/executors/workspaceexecutor/{binding.pk}/environment-block/"


@pytest.mark.django_db
def test_a_member_gets_a_block_with_a_token_of_theirs_shown_once(admin_client: Client, admin_user, binding, settings):
    Membership.objects.create(workspace_id="ws-block", user=admin_user, role=Role.MEMBER)
    change = admin_client.get(f"/admin/executors/workspaceexecutor/{binding.pk}/change/")
    assert page(binding) in change.content.decode()

    offered = admin_client.get(page(binding))
    assert offered.status_code == 200
    assert "environment-block" not in offered.content.decode()  # nothing minted by looking
    assert not AccessToken.objects.exists()

    settings.CXG_PUBLIC_WS_BASE_URL = "wss://gw.example.com"
    made = admin_client.post(page(binding))
    assert made.status_code == 200
    assert "no-store" in made["Cache-Control"]
    found = BLOCK.search(made.content.decode())
    assert found is not None
    entry = tomllib.loads(found.group(1).replace("&quot;", '"').replace("&#x27;", "'"))["environments"][0]
    assert entry["id"] == "box"
    assert entry["url"] == f"wss://gw.example.com/bridge/{binding.executor_id}"
    record = AccessToken.objects.get()
    assert entry["auth_bearer_token"].startswith(record.prefix + "_")
    assert (record.user, record.scopes) == (admin_user, ["environments"])
    assert record.expires_at is not None


@pytest.mark.django_db
def test_refusals_are_said_on_the_page_and_mint_nothing(admin_client: Client, admin_user, binding, settings):
    settings.CXG_PUBLIC_WS_BASE_URL = "wss://gw.example.com"
    not_member = admin_client.post(page(binding))
    assert "is not a member of workspace" in not_member.content.decode()

    Membership.objects.create(workspace_id="ws-block", user=admin_user, role=Role.MEMBER)
    settings.CXG_PUBLIC_WS_BASE_URL = "ws://gw.example.com"
    plain = admin_client.post(page(binding))
    assert "codex refuses a token over plain ws://" in plain.content.decode()

    settings.CODEXGW_IDENTITY_BACKEND = "agentserver"
    assert "is not builtin" in admin_client.post(page(binding)).content.decode()
    assert not AccessToken.objects.exists()
