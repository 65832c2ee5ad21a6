"""One error shape for every API route: ``{"error": "<message>"}`` with the right status.

Infrastructure outages (database, Redis) become 503 so callers, and the real executor,
retry instead of giving up; they are never reported as 500.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, DataError, InterfaceError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)

OUTAGES: tuple[type[Exception], ...] = (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError)


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "service unavailable"


def error_response(message: str, status_code: int, headers: dict[str, str] | None = None) -> Response:
    return Response({"error": message}, status=status_code, headers=headers)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, OUTAGES):
        logger.warning("dependency unavailable: %s", type(exc).__name__, extra={"error": str(exc)})
        return error_response("service unavailable, retry later", status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, DataError):
        # A value the request carried that the database cannot hold (a NUL character in a path
        # parameter or header, say): the client's error, not the gateway's.
        logger.info("request refused by the database: %s", exc)
        return error_response("invalid value in request (e.g. a NUL character)", status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DatabaseError):
        logger.exception("database error")
        return error_response("database error", status.HTTP_500_INTERNAL_SERVER_ERROR)
    if isinstance(exc, exceptions.ParseError):
        return error_response("invalid JSON", status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"error": _first_validation_message(exc.detail)}
    else:
        detail = response.data.get("detail") if isinstance(response.data, dict) else None
        response.data = {"error": str(detail) if detail is not None else str(response.data)}
    return response


def _first_validation_message(detail: Any, field: str = "") -> str:
    """One readable line from DRF's nested validation detail, naming the field."""
    if isinstance(detail, dict):
        if "non_field_errors" in detail:
            return "request body must be a JSON object with the documented fields"
        name, inner = next(iter(detail.items()))
        return _first_validation_message(inner, name)
    if isinstance(detail, list) and detail:
        return _first_validation_message(detail[0], field)
    message = str(detail)
    return message if not field or message.startswith(field) else f"{field}: {message}"
