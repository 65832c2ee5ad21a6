"""``manage.py environmentblock WORKSPACE BINDING``: print the ``[[environments]]`` block that
makes the binding's executor an environment of a user's own codex (append it to
``~/.codex/environments.toml``), with a new ``environments`` token of that user. Run it again
to renew; revoke old tokens in the admin."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from codexgw.management.database_command import DatabaseCommand
from executors.environment_block import DEFAULT_LIFETIME, BlockError, make_block
from executors.models import WorkspaceExecutor
from workspaces import identity, tokens
from workspaces.models import Workspace


class Command(DatabaseCommand):
    help = "Print a ~/.codex/environments.toml block for an executor bound to a workspace (with a new token)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("workspace", help="workspace id, e.g. default")
        parser.add_argument("binding", help="the binding's name (the environment id codex will use)")
        parser.add_argument("--user", help="username of a workspace member (default: the workspace's first owner)")
        parser.add_argument("--expires", help="token lifetime, e.g. 30d, 12h, or never (default: 90 days)")
        parser.add_argument("--id", dest="environment_id", help="environment id in codex (default: the binding's name)")
        parser.add_argument(
            "--ws-base-url",
            default=settings.CXG_PUBLIC_WS_BASE_URL or f"ws://127.0.0.1:{settings.CXG_PORT}",
            help="the gateway's public WebSocket base (default: CXG_PUBLIC_WS_BASE_URL, else this machine's)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not identity.builtin():
            raise CommandError("environment blocks use built-in tokens: CODEXGW_IDENTITY_BACKEND is not builtin")
        binding = WorkspaceExecutor.objects.filter(workspace_id=options["workspace"], name=options["binding"]).first()
        if binding is None:
            raise CommandError(f"workspace {options['workspace']!r} has no executor bound as {options['binding']!r}")
        try:
            workspace = Workspace.objects.get(id=binding.workspace_id)
            user = tokens.user_named(options["user"]) if options["user"] else tokens.default_user(workspace)
            block = make_block(
                binding,
                user,
                ws_base_url=options["ws_base_url"],
                expires_in=_lifetime(options["expires"]),
                environment_id=options["environment_id"],
            )
        except Workspace.DoesNotExist:
            raise CommandError(f"no workspace {binding.workspace_id!r}; create it in the admin first") from None
        except (BlockError, tokens.TokenError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(block.text, ending="")


def _lifetime(text: str | None) -> timedelta | None:
    if text is None:
        return DEFAULT_LIFETIME
    return None if text == "never" else tokens.lifetime(text)
