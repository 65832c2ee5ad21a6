"""ASGI entry point: HTTP through Django, WebSockets through the Channels router."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codexgw.settings")

from channels.routing import ProtocolTypeRouter, URLRouter
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

django_http = get_asgi_application()

from appgateway.envmcp_http import with_env_mcp  # noqa: E402
from appgateway.model_proxy import with_model_proxy  # noqa: E402
from bridge.relay_views import ASGIApp, with_relay  # noqa: E402
from codexgw.drain import refuse_upgrades_while_draining  # noqa: E402
from codexgw.periodic import start_in_process_beat  # noqa: E402
from codexgw.routing import websocket_urlpatterns  # noqa: E402

start_in_process_beat()

http_app: ASGIApp = ASGIStaticFilesHandler(django_http)
if "exec" in settings.CODEXGW_ROLES:
    # /relay/ streams request and response bodies, which Django's handler cannot: see the module.
    http_app = with_relay(http_app)
if "app" in settings.CODEXGW_ROLES:
    # The app-servers' model calls stream through the credential-swapping proxy (appgateway/model_proxy.py).
    http_app = with_model_proxy(http_app)
    # env-mcp, the app-servers' MCP server, over streamable HTTP (appgateway/envmcp_http.py).
    http_app = with_env_mcp(http_app)

application = ProtocolTypeRouter(
    {
        # The admin's static files are served by the gateway itself: there is no other web server
        # in front of it on the embedded default, and the files are few and small.
        "http": http_app,
        # While the process drains (SIGTERM) every upgrade is refused with 503: codexgw/drain.py.
        "websocket": refuse_upgrades_while_draining(URLRouter(websocket_urlpatterns)),
    }
)
