"""ASGI entry point: HTTP through Django, WebSockets through the Channels router."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codexgw.settings")

from channels.routing import ProtocolTypeRouter, URLRouter
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

django_http = get_asgi_application()

from codexgw.periodic import start_in_process_beat  # noqa: E402
from codexgw.routing import websocket_urlpatterns  # noqa: E402

start_in_process_beat()

application = ProtocolTypeRouter(
    {
        # The admin's static files are served by the gateway itself: there is no other web server
        # in front of it on the embedded default, and the files are few and small.
        "http": ASGIStaticFilesHandler(django_http),
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
