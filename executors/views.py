"""Control-plane REST: agentserver-facing ``/api/codex-exec/*`` (``X-Internal-Secret``) and
cluster-internal ``/api/exec-gateway/*`` (shared-secret Bearer)."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from codexgw.api_errors import error_response
from codexgw.bearer import bearer_token
from executors import captoken, serializers, services
from executors.api_auth import AgentserverSecret, SharedSecretBearer, Unauthorized
from executors.revocation import revoke_turn

REVOKE_DEFAULT_TTL = 3600
ERRORS = {400: serializers.ErrorResponse, 401: serializers.ErrorResponse, 503: serializers.ErrorResponse}


def _validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class RegisterExecutorView(APIView):
    permission_classes = [AgentserverSecret]

    @extend_schema(
        operation_id="codex_exec_register",
        request=serializers.RegisterRequest,
        parameters=[OpenApiParameter("X-User-Id", str, OpenApiParameter.HEADER, required=True)],
        responses={201: serializers.RegisterResponse, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        user_id = request.headers.get("X-User-Id", "").strip()
        if not user_id:
            return error_response("missing user", status.HTTP_401_UNAUTHORIZED)
        body = _validated(serializers.RegisterRequest, request.data)
        created = services.register_executor(user_id, body["display_name"])
        return Response(
            {"exe_id": created.executor.exe_id, "registration_token": created.registration_token},
            status=status.HTTP_201_CREATED,
        )


class ExecutorDetailView(APIView):
    permission_classes = [AgentserverSecret]

    @extend_schema(operation_id="codex_exec_delete_executor", responses={204: None, **ERRORS})
    def delete(self, request: Request, exe_id: str) -> Response:
        services.delete_executor(exe_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WorkspaceExecutorsView(APIView):
    permission_classes = [AgentserverSecret]

    @extend_schema(
        operation_id="codex_exec_bind",
        request=serializers.BindRequest,
        responses={
            201: serializers.StatusResponse,
            404: serializers.ErrorResponse,
            409: serializers.ErrorResponse,
            **ERRORS,
        },
    )
    def post(self, request: Request, workspace_id: str) -> Response:
        body = _validated(serializers.BindRequest, request.data)
        try:
            services.bind_executor(workspace_id, body["exe_id"], body["name"], body["description"], body["is_default"])
        except services.ExecutorNotFound:
            return error_response("executor not found", status.HTTP_404_NOT_FOUND)
        except services.NameTaken:
            return error_response("bind failed (name may already be taken in this workspace)", status.HTTP_409_CONFLICT)
        return Response({"status": "ok"}, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="codex_exec_list_bindings", responses={200: serializers.ConnectedExecutor(many=True), **ERRORS}
    )
    def get(self, request: Request, workspace_id: str) -> Response:
        return Response(services.list_bindings(workspace_id))


class WorkspaceExecutorDetailView(APIView):
    permission_classes = [AgentserverSecret]

    @extend_schema(operation_id="codex_exec_unbind", responses={204: None, **ERRORS})
    def delete(self, request: Request, workspace_id: str, exe_id: str) -> Response:
        services.unbind_executor(workspace_id, exe_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SharedSecretOrCapToken(SharedSecretBearer):
    """The shared secret, or a capability token (env-mcp asks with its caller's token, so a tool
    sees what that token may reach). A token is verified, refused once its turn is revoked, and
    left in ``request.auth``: it pins the request to its own workspace."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        presented = bearer_token(request.headers.get("Authorization")) or ""
        if presented.count(".") != 2 or not settings.CXG_CAPTOKEN_HMAC_SECRET:
            return super().has_permission(request, view)
        try:
            request.auth = services.verified_capability(presented)
        except captoken.CapTokenError as error:
            raise Unauthorized(str(error)) from None
        return True


class ConnectedView(APIView):
    permission_classes = [SharedSecretOrCapToken]

    @extend_schema(
        operation_id="exec_gateway_connected",
        parameters=[OpenApiParameter("workspace_id", str, OpenApiParameter.QUERY, required=True)],
        responses={200: serializers.ConnectedExecutor(many=True), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        workspace_id = request.query_params.get("workspace_id", "").strip()
        token = request.auth if isinstance(request.auth, captoken.CapPayload) else None
        if token is not None:
            if workspace_id and workspace_id != token.workspace_id:
                return error_response("token is for another workspace", status.HTTP_403_FORBIDDEN)
            workspace_id = token.workspace_id
        if not workspace_id:
            return error_response("workspace_id required", status.HTTP_400_BAD_REQUEST)
        return Response(services.reachable_bindings(workspace_id, token))


class RevokeTurnView(APIView):
    permission_classes = [SharedSecretBearer]

    @extend_schema(
        operation_id="exec_gateway_revoke_turn", request=serializers.RevokeTurnRequest, responses={204: None, **ERRORS}
    )
    def post(self, request: Request) -> Response:
        body = _validated(serializers.RevokeTurnRequest, request.data)
        exp = body["exp"] or int(time.time()) + REVOKE_DEFAULT_TTL
        revoke_turn(body["turn_id"], exp)
        return Response(status=status.HTTP_204_NO_CONTENT)
