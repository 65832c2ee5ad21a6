"""The admin shows what stops the gateway from working (``codexgw.model_key``) on every page."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from codexgw.model_key import MISSING_KEY

pytestmark = pytest.mark.django_db

BANNER = f'<li class="warning" id="model-key-problem">{escape(MISSING_KEY)}</li>'
PAGES = [reverse("admin:index"), reverse("admin:executors_executor_changelist"), reverse("admin:auth_user_add")]


@pytest.fixture
def no_model_key(settings):
    settings.CODEXGW_IDENTITY_BACKEND = "builtin"
    settings.CXG_CODEX_API_KEY = ""


@pytest.mark.parametrize("page", PAGES)
def test_every_admin_page_shows_a_missing_model_key(admin_client: Client, no_model_key: None, page: str) -> None:
    response = admin_client.get(page)

    assert response.status_code == 200
    assert response.content.decode().count(BANNER) == 1


def test_no_banner_with_a_model_key(admin_client: Client, settings) -> None:
    settings.CODEXGW_IDENTITY_BACKEND = "builtin"
    settings.CXG_CODEX_API_KEY = "sk-configured"

    assert MISSING_KEY not in admin_client.get(reverse("admin:index")).content.decode()


def test_no_banner_when_the_agentserver_hands_out_model_tokens(admin_client: Client, settings) -> None:
    settings.CODEXGW_IDENTITY_BACKEND = "agentserver"
    settings.CXG_CODEX_API_KEY = ""

    assert MISSING_KEY not in admin_client.get(reverse("admin:index")).content.decode()


def test_the_public_login_page_does_not_show_it(client: Client, no_model_key: None) -> None:
    response = client.get(reverse("admin:login"))

    assert response.status_code == 200
    assert MISSING_KEY not in response.content.decode()
