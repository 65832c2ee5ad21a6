"""``manage.py serve``: run the gateway (HTTP and WebSocket) under uvicorn.

The server is ``codexgw.server.GatewayServer``: uvicorn on uvloop with httptools, with the
limits a gateway for ``codex exec-server`` needs (16 MiB frames, keepalive pings, no lifetime
cap on a connection) and the ASGI WebSocket denial responses the executor acts on (401/403
exit, 503 retry). SIGTERM and SIGINT drain the process (``codexgw/drain.py``) within
``CODEXGW_DRAIN_TIMEOUT``. Large frames' buffers are kept by the C allocator
(``codexgw/allocator.py``). daphne stays the development server (``runserver``).
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from codexgw import runtime
from codexgw.allocator import keep_large_buffers
from codexgw.model_key import model_key_problem
from codexgw.server import GatewayServer, gateway_config

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the gateway (HTTP and WebSocket) under uvicorn."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=None, help="Address to bind (default: CXG_BIND).")
        parser.add_argument("--port", type=int, default=None, help="Port (default: CXG_PORT; 0 picks a free one).")

    def handle(self, *args: Any, **options: Any) -> None:
        from codexgw.asgi import application

        problem = model_key_problem()
        if problem:
            # Said once here, before any turn fails for it (also on /readyz and the admin).
            logger.warning(problem)
        host = options["host"] or settings.CXG_BIND
        port = settings.CXG_PORT if options["port"] is None else options["port"]
        config = gateway_config(
            application,
            host,
            port,
            ping_interval=settings.CXG_WS_PING_INTERVAL,
            ping_timeout=settings.CXG_WS_PING_TIMEOUT,
        )
        keep_large_buffers()
        GatewayServer(config, drain_timeout=settings.CODEXGW_DRAIN_TIMEOUT, on_ready=self._announce).run()

    def _announce(self, addresses: list[tuple[str, int]]) -> None:
        if addresses:
            host, port = addresses[0]
            runtime.set_served_at(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}")  # noqa: S104
        for host, port in addresses:
            # One machine-readable line tests and scripts wait for.
            self.stdout.write(f"codexgw listening on http://{host}:{port}", ending="\n")
            self.stdout.flush()
        if settings.LOCAL_SECRETS:
            self.stdout.write(f"local secrets (embedded default): {settings.LOCAL_SECRETS_FILE}")
            if addresses:
                # Here, not in localadmin: only this command knows the port it really listens on.
                self.stdout.write(f"admin: {runtime.self_http_base_url()}/admin/")
            self.stdout.flush()
