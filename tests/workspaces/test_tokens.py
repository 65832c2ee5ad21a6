"""Built-in access tokens: minting, storage (hash and prefix only) and every way a check refuses."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from workspaces import tokens
from workspaces.identity import Forbidden, Grant, Unauthorized
from workspaces.models import AccessToken, Membership, Workspace

pytestmark = pytest.mark.django_db


def test_a_minted_token_is_stored_only_as_its_digest_and_prefix(workspace: Workspace, owner: Any) -> None:
    created = tokens.mint(workspace, owner, name="laptop")
    assert created.token.startswith(created.record.prefix + "_")
    assert len(created.token) == len("cxgt_") + 8 + 1 + 43
    row = AccessToken.objects.get(pk=created.record.pk)
    assert row.digest == tokens.digest(created.token) != created.token
    stored = [str(value) for value in AccessToken.objects.filter(pk=row.pk).values_list().get()]
    assert not any(created.token in value for value in stored)
    assert row.scopes == sorted(tokens.ALL_SCOPES)


def test_two_tokens_differ(workspace: Workspace, owner: Any) -> None:
    assert tokens.mint(workspace, owner).token != tokens.mint(workspace, owner).token


def test_check_gives_the_grant_and_records_use(workspace: Workspace, owner: Any) -> None:
    created = tokens.mint(workspace, owner, scopes=["tui"])
    assert tokens.check(created.token, "tui") == Grant("ws-a", str(owner.pk), created.record.prefix, frozenset({"tui"}))
    used = AccessToken.objects.get(pk=created.record.pk).last_used_at
    assert used is not None
    tokens.check(created.token, "tui")  # within a minute: not written again
    assert AccessToken.objects.get(pk=created.record.pk).last_used_at == used


@pytest.mark.parametrize(
    "presented",
    ["", "wak_something", "cxgt_short", "cxgt_ABCDEFGH_" + "x" * 42, "cxgt_ABCDEFGH_" + "x" * 43 + "y", " " * 57],
)
def test_malformed_tokens_are_refused_without_a_lookup(presented: str, django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(0), pytest.raises(Unauthorized, match="not a codexgw access token"):
        tokens.check(presented, "tui")


def test_an_unknown_token_of_the_right_shape_is_refused(workspace: Workspace, owner: Any) -> None:
    created = tokens.mint(workspace, owner)
    forged = created.token[:-1] + ("A" if created.token[-1] != "A" else "B")
    with pytest.raises(Unauthorized, match="unknown token"):
        tokens.check(forged, "tui")


def test_a_revoked_token_is_refused(workspace: Workspace, owner: Any) -> None:
    created = tokens.mint(workspace, owner)
    assert tokens.revoke(AccessToken.objects.filter(pk=created.record.pk)) == 1
    assert tokens.revoke(AccessToken.objects.filter(pk=created.record.pk)) == 0  # already revoked
    with pytest.raises(Unauthorized, match="token revoked"):
        tokens.check(created.token, "tui")


def test_an_expired_token_is_refused(workspace: Workspace, owner: Any) -> None:
    created = tokens.mint(workspace, owner, expires_in=timedelta(hours=1))
    tokens.check(created.token, "sdk")
    AccessToken.objects.filter(pk=created.record.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(Unauthorized, match="token expired"):
        tokens.check(created.token, "sdk")


def test_a_token_without_the_scope_is_forbidden(workspace: Workspace, owner: Any) -> None:
    created = tokens.mint(workspace, owner, scopes=["sdk"])
    with pytest.raises(Forbidden, match="missing scope: tui"):
        tokens.check(created.token, "tui")


def test_a_member_who_left_or_was_deactivated_loses_their_tokens(workspace: Workspace, owner: Any) -> None:
    created = tokens.mint(workspace, owner)
    get_user_model().objects.filter(pk=owner.pk).update(is_active=False)
    with pytest.raises(Unauthorized, match="no longer a member"):
        tokens.check(created.token, "tui")
    get_user_model().objects.filter(pk=owner.pk).update(is_active=True)
    tokens.check(created.token, "tui")
    Membership.objects.filter(user=owner).delete()
    with pytest.raises(Unauthorized, match="no longer a member"):
        tokens.check(created.token, "tui")


def test_only_members_get_tokens_and_scopes_are_checked(workspace: Workspace) -> None:
    stranger = get_user_model().objects.create_user("mallory")
    with pytest.raises(tokens.TokenError, match="not a member"):
        tokens.mint(workspace, stranger)
    member = workspace.memberships.get().user
    with pytest.raises(tokens.TokenError, match="scopes must be"):
        tokens.mint(workspace, member, scopes=["admin"])
    with pytest.raises(tokens.TokenError, match="scopes must be"):
        tokens.mint(workspace, member, scopes=[])


def test_the_default_workspace_is_created_once_with_its_owner(owner: Any) -> None:
    first = tokens.ensure_default_workspace(owner)
    again = tokens.ensure_default_workspace(owner)
    assert first.id == again.id == "default"
    assert tokens.default_user(first) == owner
    assert Membership.objects.filter(workspace=first).count() == 1


def test_a_workspace_without_owner_has_no_default_user(db: None) -> None:
    with pytest.raises(tokens.TokenError, match="no owner"):
        tokens.default_user(Workspace.objects.create(id="empty"))
