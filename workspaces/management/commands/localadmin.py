"""``manage.py localadmin``: on the embedded default, make sure an admin login exists.

Creates the superuser ``admin`` once, with a password generated into the local secrets file,
and, with the built-in identity backend, the workspace ``default`` owned by it, so that
``manage.py createtoken default`` works right away. Prints where the password is (``serve``
prints the admin's address, which only it knows). Does nothing when local secrets are off
(production): operators there create their accounts with ``createsuperuser``.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from codexgw.local_secrets import read_stored, store_extra
from workspaces import identity, tokens

USERNAME = "admin"


class Command(BaseCommand):
    help = "Create the local admin login of the embedded default (no-op in production)."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.LOCAL_SECRETS:
            return
        password = read_stored(settings.LOCAL_SECRETS_FILE).get("CODEXGW_LOCAL_ADMIN_PASSWORD")
        users = get_user_model().objects
        if not users.filter(username=USERNAME).exists():
            password = password or secrets.token_urlsafe(16)
            store_extra(settings.LOCAL_SECRETS_FILE, "CODEXGW_LOCAL_ADMIN_PASSWORD", password)
            users.create_superuser(USERNAME, "", password)
        if identity.builtin():
            workspace = tokens.ensure_default_workspace(users.get(username=USERNAME))
            self.stdout.write(f"workspace {workspace.id!r} (owner {USERNAME})")
        if password:
            self.stdout.write(f"admin login: user {USERNAME}, password in {settings.LOCAL_SECRETS_FILE}")
