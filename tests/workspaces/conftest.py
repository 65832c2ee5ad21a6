"""Fixtures of the built-in control plane's tests: built-in mode, a workspace with an owner."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model

from workspaces.models import Membership, Role, Workspace


@pytest.fixture
def builtin(settings: Any) -> None:
    settings.CODEXGW_IDENTITY_BACKEND = "builtin"


@pytest.fixture
def owner(db: None) -> Any:
    return get_user_model().objects.create_user("alice", password="pw-alice")


@pytest.fixture
def workspace(owner: Any) -> Workspace:
    workspace = Workspace.objects.create(id="ws-a", name="A")
    Membership.objects.create(workspace=workspace, user=owner, role=Role.OWNER)
    return workspace
