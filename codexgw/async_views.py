"""DRF views with ``async`` handlers, for routes whose work is long I/O (tool calls).

Django runs every *sync* view of a process in one shared thread under ASGI, so a 60-second tool
call in a sync DRF view would stall every other sync view (admin included). Here the handler is a
coroutine on the event loop; DRF's ``initial`` (authentication, permissions, throttles) runs in a
worker thread of its own (not the shared one), because authenticators may do network I/O.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponseBase
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import APIView


class AsyncAPIView(APIView):
    async def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:  # type: ignore[override]
        self.args = args
        self.kwargs = kwargs
        drf_request = self.initialize_request(request, *args, **kwargs)
        self.request = drf_request
        self.headers = self.default_response_headers
        try:
            await sync_to_async(self.initial, thread_sensitive=False)(drf_request, *args, **kwargs)
            method = (drf_request.method or "").lower()
            handler = getattr(self, method, None) if method in self.http_method_names else None
            if handler is None:
                raise exceptions.MethodNotAllowed(drf_request.method or "")
            response = await handler(drf_request, *args, **kwargs)
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(drf_request, response, *args, **kwargs)
        return self.response

    async def options(self, request: Any, *args: Any, **kwargs: Any) -> Response:  # type: ignore[override]
        return super().options(request, *args, **kwargs)
