"""``manage.py localadmin`` on the embedded default: the admin login and, in built-in mode, the
``default`` workspace it owns, so ``createtoken default`` works on a fresh install."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from workspaces import tokens
from workspaces.models import Workspace

pytestmark = pytest.mark.django_db


@pytest.fixture
def local(settings: Any, tmp_path: Path) -> Path:
    secrets_file = tmp_path / "local-secrets.json"
    secrets_file.write_text("{}")
    settings.LOCAL_SECRETS = True
    settings.LOCAL_SECRETS_FILE = secrets_file
    return secrets_file


def localadmin() -> str:
    out = io.StringIO()
    call_command("localadmin", stdout=out)
    return out.getvalue()


def test_builtin_mode_gets_a_default_workspace_owned_by_admin(local: Path, builtin: None) -> None:
    output = localadmin()
    assert "workspace 'default' (owner admin)" in output
    assert f"password in {local}" in output
    assert "6060" not in output  # the port is serve's to print: only it knows --port
    localadmin()  # idempotent
    workspace = Workspace.objects.get()
    assert tokens.default_user(workspace).username == "admin"


def test_agentserver_mode_creates_no_workspace(local: Path, settings: Any) -> None:
    settings.CODEXGW_IDENTITY_BACKEND = "agentserver"
    localadmin()
    assert not Workspace.objects.exists()
