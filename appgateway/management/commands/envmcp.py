"""``manage.py envmcp``: env-mcp, the MCP stdio server codex starts for each loaded thread.

Run by the app-server with ``DJANGO_SETTINGS_MODULE=appgateway.envmcp_settings`` (no secrets,
no database, no Redis); see ``appgateway/envmcp.py`` and ``appgateway/spawn_builder.py``. The
capability token is read from the environment variable named by ``--token-env``, never from
argv, which any local user can read in ``/proc/<pid>/cmdline``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from appgateway import envmcp


class Command(BaseCommand):
    help = "MCP stdio server offering the workspace's executors to codex (run by the app-server)."
    requires_system_checks: list[str] = []  # nothing to check, and no database to check it against

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workspace-id", default=os.environ.get("CXG_WORKSPACE_ID", ""))
        parser.add_argument("--exec-gateway-url", required=True, help="the exec gateway's ws(s):// base")
        parser.add_argument("--token-env", required=True, help="environment variable holding the capability token")

    def handle(self, *args: Any, **options: Any) -> None:
        workspace_id: str = options["workspace_id"]
        exec_gateway_url: str = options["exec_gateway_url"]
        token = os.environ.pop(options["token_env"], "")  # popped: nothing this process starts inherits it
        if not workspace_id:
            raise CommandError("--workspace-id (or CXG_WORKSPACE_ID) is required")
        if not token:
            raise CommandError(f"${options['token_env']} is empty")
        if not exec_gateway_url.startswith(("ws://", "wss://")):
            raise CommandError("--exec-gateway-url must be a ws:// or wss:// URL")
        # stdout is the protocol channel: keep a private copy of it and point fd 1 (and
        # sys.stdout) at stderr, so a stray print or a C library's write can never corrupt it.
        protocol = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        context = envmcp.tool_context(workspace_id, exec_gateway_url, token)
        with protocol, os.fdopen(os.dup(0), "rb", buffering=0) as stdin:
            asyncio.run(envmcp.serve_stdio(context, stdin, protocol))
