from django.urls import path

from bridge.relay_views import RelayCreateView

# PUT|GET /relay/{ticket} is not here: it is a raw ASGI app in front of Django (codexgw/asgi.py).
urlpatterns = [
    path("api/exec-gateway/relay/create", RelayCreateView.as_view()),
]
