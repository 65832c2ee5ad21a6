"""``manage.py createtoken WORKSPACE``: mint a built-in access token and print it alone on
stdout, so ``export CODEXGW_TOKEN=$(manage.py createtoken default)`` works. Everything else
(errors included) goes to stderr."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from codexgw.management.database_command import DatabaseCommand
from workspaces import tokens
from workspaces.models import Workspace


class Command(DatabaseCommand):
    help = "Create a personal access token for a workspace and print it (shown only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("workspace", help="workspace id, e.g. default")
        parser.add_argument("--user", help="username of a workspace member (default: the workspace's first owner)")
        parser.add_argument("--name", default="", help="what the token is for, shown in the admin")
        parser.add_argument(
            "--scope",
            action="append",
            choices=tokens.ALL_SCOPES,
            help="repeat for several; default: all of " + ", ".join(tokens.ALL_SCOPES),
        )
        parser.add_argument("--expires", help="lifetime, e.g. 90d, 12h, 30m (default: never)")

    def handle(self, *args: Any, **options: Any) -> None:
        workspace = Workspace.objects.filter(id=options["workspace"]).first()
        if workspace is None:
            raise CommandError(f"no workspace {options['workspace']!r}; create it in the admin first")
        try:
            expires_in = tokens.lifetime(options["expires"]) if options["expires"] else None
            user = tokens.user_named(options["user"]) if options["user"] else tokens.default_user(workspace)
            created = tokens.mint(
                workspace,
                user,
                name=options["name"],
                scopes=options["scope"] or tokens.ALL_SCOPES,
                expires_in=expires_in,
            )
        except tokens.TokenError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(created.token)
