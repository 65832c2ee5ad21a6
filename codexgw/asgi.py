"""ASGI entry point: HTTP through Django, WebSockets through the Channels router. What each role
serves besides Django's views, the apps add in their ``AppConfig.ready()`` (``codexgw/routing.py``)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codexgw.settings")

from channels.routing import ProtocolTypeRouter, URLRouter
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

django_http = get_asgi_application()  # sets Django up: every app's ready() has run after this

from codexgw.drain import refuse_upgrades_while_draining  # noqa: E402
from codexgw.periodic import start_in_process_beat  # noqa: E402
from codexgw.routing import websocket_urlpatterns, with_http_apps  # noqa: E402

start_in_process_beat()

application = ProtocolTypeRouter(
    {
        # The admin's static files are served by the gateway itself: there is no other web server
        # in front of it on the embedded default, and the files are few and small. The byte relay
        # and the model proxy stream their bodies in front of Django: codexgw/routing.py.
        "http": with_http_apps(ASGIStaticFilesHandler(django_http)),
        # While the process drains (SIGTERM) every upgrade is refused with 503: codexgw/drain.py.
        "websocket": refuse_upgrades_while_draining(URLRouter(websocket_urlpatterns)),
    }
)
