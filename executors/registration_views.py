"""``POST /cloud/environment/{id}/direct/register`` (SigV4, codex 0.169.0 direct transport) and
the bearer routes of older Codex builds (``/cloud/executor/{id}/register``,
``/cloud/environment/{id}/register``)."""

from __future__ import annotations

import logging

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from codexgw.api_errors import error_response
from codexgw.bearer import bearer_token
from executors import registration, serializers, services, sigv4

logger = logging.getLogger(__name__)
ERRORS = {400: serializers.ErrorResponse, 401: serializers.ErrorResponse, 503: serializers.ErrorResponse}


class DirectRegisterView(APIView):
    @extend_schema(
        operation_id="cloud_direct_register",
        request=serializers.DirectRegisterRequest,
        responses={200: serializers.DirectRegisterResponse, **ERRORS},
        description="AWS SigV4 signed with access key id = exe_id and secret = the registration token.",
    )
    def post(self, request: Request, exe_id: str) -> Response:
        headers = registration.lower_headers(request)
        try:
            registration.verify_sigv4_request(request, exe_id, headers)
        except sigv4.SigV4Error as exc:
            logger.info("executor registration refused", extra={"exe_id": exe_id, "reason": str(exc)})
            return error_response("unauthorized", status.HTTP_401_UNAUTHORIZED)
        transport = (
            request.data.get("transport", registration.DIRECT_TRANSPORT) if isinstance(request.data, dict) else None
        )
        if transport != registration.DIRECT_TRANSPORT:
            return error_response(f"unsupported transport; this gateway speaks {registration.DIRECT_TRANSPORT}", 400)
        registration.record(request, exe_id, headers)
        registration_id = registration.new_registration_id()
        logger.info("executor registered", extra={"exe_id": exe_id, "registration_id": registration_id})
        return Response(
            {
                "environment_id": exe_id,
                "transport": registration.DIRECT_TRANSPORT,
                "registration_id": registration_id,
                "url": registration.executor_ws_url(request, exe_id),
            }
        )


class BearerRegisterView(APIView):
    @extend_schema(
        request=None,
        responses={200: serializers.BearerRegisterResponse, **ERRORS},
        description="Older Codex builds: Authorization: Bearer <registration token>. The returned URL "
        "carries a short-lived ticket, never the token.",
    )
    def post(self, request: Request, exe_id: str) -> Response:
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return error_response("missing bearer", status.HTTP_401_UNAUTHORIZED)
        if not services.check_registration_token(exe_id, token):
            logger.info("executor bearer registration refused", extra={"exe_id": exe_id})
            return error_response("unauthorized", status.HTTP_401_UNAUTHORIZED)
        if not settings.CXG_CAPTOKEN_HMAC_SECRET:
            logger.error("CXG_CAPTOKEN_HMAC_SECRET is not set: cannot mint executor WebSocket tickets")
            return error_response("gateway not configured for bearer registration", status.HTTP_503_SERVICE_UNAVAILABLE)
        registration.record(request, exe_id, registration.lower_headers(request))
        url = registration.bearer_ws_url(request, exe_id)
        return Response({"id": exe_id, "executor_id": exe_id, "environment_id": exe_id, "url": url})
