"""``manage.py serve``: run the gateway under daphne with the WebSocket limits it needs.

daphne's defaults do not fit a gateway for ``codex exec-server``: its 1 MiB message cap would
drop executor frames (exec-server allows 16 MiB frames and 64 MiB messages) and its 24-hour
socket timeout would cut executors that stay connected for days. And daphne answers every refused
WebSocket upgrade with 403, while the executor needs 401/403 (exit) vs 503 (retry): the server is
``codexgw.daphne_server.GatewayServer``, which adds the ASGI WebSocket denial response extension.
SIGTERM and SIGINT drain the process (``codexgw/drain.py``) within ``CODEXGW_DRAIN_TIMEOUT``.
"""

from __future__ import annotations

import logging
from typing import Any

from daphne.endpoints import build_endpoint_description_strings
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from codexgw import runtime
from codexgw.daphne_server import GatewayServer
from codexgw.model_key import model_key_problem
from codexgw.websocket import MAX_FRAME_BYTES, MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the gateway (HTTP and WebSocket) under daphne."

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
        # A Server subclass (not a patched daphne module or a copied Server.run()): it only swaps the
        # WebSocket factory/protocol daphne builds in run() and adds the scope extension, so every
        # other daphne behaviour and option below is unchanged.
        server: GatewayServer = GatewayServer(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            websocket_timeout=-1,
            websocket_max_frame_size=MAX_FRAME_BYTES,
            websocket_max_message_size=MAX_MESSAGE_BYTES,
            # A ping after this much silence on any WebSocket; no pong in time closes it, so a dead
            # peer (no FIN, no RST) is noticed and cleaned up within interval + timeout.
            ping_interval=settings.CXG_WS_PING_INTERVAL,
            ping_timeout=settings.CXG_WS_PING_TIMEOUT,
            application_close_timeout=10,
            ready_callable=lambda: self._announce(server),
            server_name="codexgw",
            drain_timeout=settings.CODEXGW_DRAIN_TIMEOUT,
        )
        server.run()

    def _announce(self, server: GatewayServer) -> None:
        if server.listening_addresses:
            host, port = server.listening_addresses[0][:2]
            runtime.set_served_at(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}")  # noqa: S104
        for address in server.listening_addresses:
            # One machine-readable line tests and scripts wait for.
            self.stdout.write(f"codexgw listening on http://{address[0]}:{address[1]}", ending="\n")
            self.stdout.flush()
        if settings.LOCAL_SECRETS:
            self.stdout.write(f"local secrets (embedded default): {settings.LOCAL_SECRETS_FILE}")
            if server.listening_addresses:
                # Here, not in localadmin: only this command knows the port it really listens on.
                self.stdout.write(f"admin: {runtime.self_http_base_url()}/admin/")
            self.stdout.flush()
