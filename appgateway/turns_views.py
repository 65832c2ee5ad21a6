"""``POST /api/turns``: run one codex turn in a workspace and answer with it (``appgateway.broker``).

Transport failures are HTTP 200 with ``transport.code`` (app-gateway §6.1); only the request
itself (auth, validation) gets an HTTP error.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from appgateway import broker
from appgateway.codexhome import CodexHomeError, validate_workspace_id
from appgateway.turns_auth import authenticate
from codexgw.async_views import AsyncAPIView
from executors.serializers import ErrorResponse
from workspaces import identity

DEFAULT_TIMEOUT_MS = 60 * 60 * 1000


class TurnRequest(serializers.Serializer[Any]):
    workspaceId = serializers.CharField(trim_whitespace=False)
    threadId = serializers.CharField(required=False, allow_blank=True, allow_null=True, trim_whitespace=False)
    params = serializers.JSONField()
    timeoutMs = serializers.IntegerField(required=False, allow_null=True)  # ≤0: the default

    def validate_workspaceId(self, value: str) -> str:
        try:
            return validate_workspace_id(value)
        except CodexHomeError as exc:
            raise serializers.ValidationError(str(exc)) from exc

    def validate_params(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object (turn/start params)")
        if "threadId" in value:
            raise serializers.ValidationError("must not include threadId (use the top-level threadId)")
        return value


class TurnsView(AsyncAPIView):
    @extend_schema(
        operation_id="turns_create",
        request=TurnRequest,
        responses={200: OpenApiTypes.OBJECT, **dict.fromkeys((400, 401, 403, 404, 503), ErrorResponse)},
        description="Run one codex turn: 200 {threadId, turn} or {threadId, transport: {code, message}}. "
        "Auth: X-Internal-Secret, or Authorization: Bearer <token> with scope turns:submit "
        "(a built-in access token, or an agentserver workspace API key wak_…).",
    )
    async def post(self, request: Request) -> Response:
        api_key = await authenticate(request)
        # Reading the body may touch a spooled temporary file.
        body = TurnRequest(data=await sync_to_async(lambda: request.data, thread_sensitive=False)())
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if api_key is not None and api_key.workspace_id != data["workspaceId"]:
            credential = "token" if identity.builtin() else "api key"
            raise exceptions.PermissionDenied(f"{credential} not authorized for workspace {data['workspaceId']}")
        if not await identity.workspace_known(data["workspaceId"]):
            raise exceptions.NotFound(f"no workspace {data['workspaceId']}")
        timeout_ms = data.get("timeoutMs") or 0
        timeout = (timeout_ms if timeout_ms > 0 else DEFAULT_TIMEOUT_MS) / 1000
        answer = await broker.pool.run_turn(data["workspaceId"], data.get("threadId"), data["params"], timeout)
        return Response(answer)
