"""``/api/connectors/*`` (also served as ``/api/sdk/*``, its first name): the sandbox SDK's REST
surface. Errors use the SDK envelope ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from codexgw.api_errors import OUTAGES
from codexgw.async_views import AsyncAPIView
from sdk import service
from sdk.auth import ProxyIdentity, ProxyTokenAuthentication, SdkAuthError


def envelope(status: int, code: str, message: str) -> Response:
    return Response({"error": {"code": code, "message": message}}, status=status)


def sdk_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, service.SdkError):
        return envelope(exc.status, exc.code, str(exc))
    if isinstance(exc, SdkAuthError):
        return envelope(exc.status_code, exc.code, str(exc.detail))
    if isinstance(exc, OUTAGES):
        return envelope(503, "unavailable", "a gateway dependency is unavailable; retry")
    if isinstance(exc, exceptions.ParseError):
        return envelope(400, "bad_request", "invalid JSON body")
    response = drf_exception_handler(exc, context)
    if response is not None:
        detail = response.data.get("detail", response.data) if isinstance(response.data, dict) else response.data
        response.data = {"error": {"code": getattr(exc, "default_code", "error"), "message": str(detail)}}
    return response


class ErrorBody(serializers.Serializer):  # type: ignore[type-arg]
    error = serializers.DictField()


class SdkView(AsyncAPIView):
    authentication_classes = [ProxyTokenAuthentication]

    def get_exception_handler(self) -> Any:
        return sdk_exception_handler

    @property
    def identity(self) -> ProxyIdentity:
        identity = self.request.auth
        assert isinstance(identity, ProxyIdentity)
        return identity


ERRORS = {400: ErrorBody, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody, 503: ErrorBody}


class EnvsListView(SdkView):
    @extend_schema(request=None, responses={200: dict, **ERRORS})
    async def post(self, request: Request) -> Response:
        return Response({"envs": await service.list_envs(self.identity.workspace_id)})


class ToolCallView(SdkView):
    @extend_schema(request=dict, responses={200: dict, **ERRORS})
    async def post(self, request: Request, name: str) -> Response:
        body = request.data
        if not isinstance(body, dict) or not isinstance(body.get("tool"), str):
            raise service.SdkError(400, "bad_request", 'body must be {"tool": str, "arguments": object}')
        arguments = body.get("arguments", {})
        if not isinstance(arguments, dict):
            raise service.SdkError(400, "bad_arguments", "arguments must be a JSON object")
        # The path names the environment; an explicit environment_id in the arguments wins.
        arguments.setdefault("environment_id", name)
        return Response(await service.call_tool(self.identity.workspace_id, body["tool"], arguments))


class SessionStdinView(SdkView):
    @extend_schema(request=dict, responses={200: dict, **ERRORS})
    async def post(self, request: Request, session_id: str) -> Response:
        body = request.data if isinstance(request.data, dict) else {}
        return Response(await service.session_op(self.identity.workspace_id, session_id, "stdin", body))


class SessionOutputView(SdkView):
    @extend_schema(
        parameters=[OpenApiParameter("since", int, OpenApiParameter.QUERY, required=False)],
        responses={200: dict, **ERRORS},
    )
    async def get(self, request: Request, session_id: str) -> Response:
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            since = 0
        body = {"since": since}
        return Response(await service.session_op(self.identity.workspace_id, session_id, "output", body))


class SessionTerminateView(SdkView):
    @extend_schema(request=None, responses={200: dict, **ERRORS})
    async def post(self, request: Request, session_id: str) -> Response:
        return Response(await service.session_op(self.identity.workspace_id, session_id, "terminate", {}))
