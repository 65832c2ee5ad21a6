"""Guards for the internal REST routes. Both trust scopes refuse every request while their
secret is not configured: an unset secret never leaves a route open."""

from __future__ import annotations

import logging

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from codexgw.bearer import bearer_token, secret_matches

logger = logging.getLogger(__name__)


class Unauthorized(exceptions.APIException):
    # A plain APIException with 401: DRF would turn NotAuthenticated into 403 for routes
    # without an authentication class.
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "unauthorized"


class NotConfigured(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "this route is disabled: its secret is not configured on the gateway"


class _SharedSecretPermission(BasePermission):
    """The presented secret must equal the configured one; refuses everything while unset."""

    setting: str

    def presented(self, request: Request) -> str | None:
        raise NotImplementedError

    def has_permission(self, request: Request, view: APIView) -> bool:
        expected: str = getattr(settings, self.setting)
        if not expected:
            logger.error("%s is not set: refusing %s", self.setting, request.path)
            raise NotConfigured()
        if not secret_matches(self.presented(request), expected):
            raise Unauthorized()
        return True


class AgentserverSecret(_SharedSecretPermission):
    """``X-Internal-Secret`` must equal ``CXG_AGENTSERVER_INTERNAL_SECRET`` (agentserver-facing routes)."""

    setting = "CXG_AGENTSERVER_INTERNAL_SECRET"

    def presented(self, request: Request) -> str | None:
        return request.headers.get("X-Internal-Secret")


class SharedSecretBearer(_SharedSecretPermission):
    """``Authorization: Bearer`` must equal ``CXG_INTERNAL_SHARED_SECRET`` (cluster-internal routes)."""

    setting = "CXG_INTERNAL_SHARED_SECRET"

    def presented(self, request: Request) -> str | None:
        return bearer_token(request.headers.get("Authorization"))
