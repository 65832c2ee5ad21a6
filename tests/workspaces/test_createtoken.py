"""``manage.py createtoken``: the token alone on stdout, clear errors on stderr."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from workspaces import tokens
from workspaces.models import AccessToken, Membership, Role, Workspace

pytestmark = pytest.mark.django_db


def createtoken(*args: str) -> str:
    out = io.StringIO()
    call_command("createtoken", *args, stdout=out)
    return out.getvalue()


def test_prints_only_the_token_which_works_for_the_owner(workspace: Workspace, owner: Any) -> None:
    output = createtoken("ws-a")
    token = output.strip()
    assert output == token + "\n"
    grant = tokens.check(token, "tui")
    assert (grant.workspace_id, grant.user_id) == ("ws-a", str(owner.pk))
    assert grant.scopes == frozenset(tokens.ALL_SCOPES)
    assert AccessToken.objects.get().expires_at is None


def test_user_name_scopes_and_expiry(workspace: Workspace) -> None:
    bob = get_user_model().objects.create_user("bob")
    Membership.objects.create(workspace=workspace, user=bob, role=Role.MEMBER)
    before = timezone.now()
    token = createtoken(
        "ws-a", "--user", "bob", "--name", "ci", "--scope", "sdk", "--scope", "turns:submit", "--expires", "2d"
    ).strip()
    record = AccessToken.objects.get()
    assert (record.user, record.name, record.scopes) == (bob, "ci", ["sdk", "turns:submit"])
    assert record.expires_at is not None
    assert 2 * 86400 - 5 < (record.expires_at - before).total_seconds() < 2 * 86400 + 5
    assert tokens.check(token, "sdk").user_id == str(bob.pk)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no workspace 'nope'"),
        (["ws-a", "--user", "ghost"], "no user 'ghost'"),
        (["ws-a", "--expires", "soon"], "not a duration"),
        (["ws-a", "--expires", "0s"], "must be positive"),
    ],
)
def test_errors_name_the_problem_and_mint_nothing(workspace: Workspace, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        createtoken(*args)
    assert not AccessToken.objects.exists()


def test_a_user_outside_the_workspace_is_refused(workspace: Workspace) -> None:
    get_user_model().objects.create_user("carol")
    with pytest.raises(CommandError, match="not a member"):
        createtoken("ws-a", "--user", "carol")


def test_an_unknown_scope_is_a_usage_error(workspace: Workspace) -> None:
    with pytest.raises(CommandError, match="invalid choice"):
        createtoken("ws-a", "--scope", "everything")
