"""``/bridge`` upgrades with a built-in access token (``environments`` scope: a user's own codex,
``~/.codex/environments.toml``): each refusal with its status, and revocation telling the
bridges opened with the token."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model

from bridge import ws_auth
from executors import services
from executors.models import WorkspaceExecutor
from executors.presence import Holder, presence_store
from workspaces import tokens
from workspaces.grants import ENVIRONMENTS, SDK
from workspaces.models import AccessToken, Membership, Role, Workspace


@pytest.fixture
def setup(settings: Any) -> dict[str, Any]:
    settings.CODEXGW_IDENTITY_BACKEND = "builtin"
    user = get_user_model().objects.create_user("bob")
    mine, other = Workspace.objects.create(id="ws-mine"), Workspace.objects.create(id="ws-other")
    for workspace in (mine, other):
        Membership.objects.create(workspace=workspace, user=user, role=Role.MEMBER)
    exe_id = services.register_executor("user-b", "box").executor.exe_id
    WorkspaceExecutor.objects.create(workspace_id="ws-mine", executor_id=exe_id, name="box")
    presence_store().claim(exe_id, Holder("inbox-of-the-holder", "conn-1", time.time()))
    return {"user": user, "mine": mine, "other": other, "exe_id": exe_id}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.django_db
def test_an_environments_token_reaches_the_workspaces_executors_and_nothing_else(setup):
    user, exe_id = setup["user"], setup["exe_id"]
    good = tokens.mint(setup["mine"], user, scopes=[ENVIRONMENTS], expires_in=timedelta(hours=1))
    grant = ws_auth.authorize_bridge(exe_id, bearer(good.token))
    assert isinstance(grant, ws_auth.BridgeGrant)
    assert grant.holder.channel_name == "inbox-of-the-holder"
    assert grant.revocation_group == ws_auth.access_token_group(good.record.prefix)
    assert good.record.expires_at is not None
    assert grant.expires_at == pytest.approx(good.record.expires_at.timestamp())

    def refused(token: str, exe: str = exe_id) -> tuple[int, str]:
        denial = ws_auth.authorize_bridge(exe, bearer(token))
        assert isinstance(denial, ws_auth.Denial)
        return denial.status, denial.message

    assert refused(tokens.mint(setup["mine"], user, scopes=[SDK]).token) == (403, "missing scope: environments")
    other = tokens.mint(setup["other"], user, scopes=[ENVIRONMENTS]).token
    assert refused(other) == (403, "exe_id not in workspace")
    assert refused(good.token, "exe_unbound") == (403, "exe_id not in workspace")
    assert refused(good.token[:-1] + ("A" if good.token[-1] != "A" else "B")) == (401, "unknown token")
    tokens.revoke(AccessToken.objects.filter(pk=good.record.pk))
    assert refused(good.token) == (401, "token revoked")


@pytest.mark.django_db
def test_access_tokens_are_refused_when_an_agentserver_is_the_control_plane(setup, settings):
    token = tokens.mint(setup["mine"], setup["user"], scopes=[ENVIRONMENTS]).token
    settings.CODEXGW_IDENTITY_BACKEND = "agentserver"
    denial = ws_auth.authorize_bridge(setup["exe_id"], bearer(token))
    assert isinstance(denial, ws_auth.Denial)
    assert denial.status == 401
    assert "built-in control plane" in denial.message


@pytest.mark.django_db
def test_revoking_a_token_tells_the_bridges_opened_with_it(setup):
    token = tokens.mint(setup["mine"], setup["user"], scopes=[ENVIRONMENTS])
    layer = get_channel_layer()
    assert layer is not None
    channel = async_to_sync(layer.new_channel)()
    group = ws_auth.access_token_group(token.record.prefix)
    async_to_sync(layer.group_add)(group, channel)
    try:
        assert tokens.revoke(AccessToken.objects.filter(pk=token.record.pk)) == 1
        assert async_to_sync(layer.receive)(channel) == {"type": "bridge.revoke"}
        assert tokens.revoke(AccessToken.objects.filter(pk=token.record.pk)) == 0  # already revoked
    finally:
        async_to_sync(layer.group_discard)(group, channel)
