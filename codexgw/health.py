"""Liveness (``/healthz``: no I/O at all) and readiness (``/readyz``: 503 while the process drains,
else database, Redis (when configured) and the channel layer answer within
``CODEXGW_READYZ_TIMEOUT``). Readiness also says which backends are in use and carries warnings
that do not make the process unready (a missing model key)."""

from __future__ import annotations

import asyncio
import logging
import secrets

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from codexgw import drain
from codexgw import redis as gwredis
from codexgw.model_key import model_key_problem

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _check_redis() -> None:
    client = gwredis.async_client()
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _check_channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = await layer.new_channel()
    token = secrets.token_hex(8)
    await layer.send(channel, {"type": "readyz.ping", "token": token})
    message = await layer.receive(channel)
    if message.get("token") != token:
        raise RuntimeError("channel layer returned another message")


async def readyz(request: HttpRequest) -> HttpResponse:
    if drain.is_draining():
        # Checked first and without I/O: balancers must stop sending new work here at once.
        return _not_logged(
            JsonResponse(
                {"ready": False, "status": "draining"}, status=503, headers={"Retry-After": str(drain.RETRY_AFTER)}
            )
        )
    checks = {"database": database_sync_to_async(_check_database)(), "channel_layer": _check_channel_layer()}
    if settings.REDIS_URL:
        checks["redis"] = _check_redis()
    timeout = settings.CODEXGW_READYZ_TIMEOUT
    results = await asyncio.gather(
        *(asyncio.wait_for(check, timeout) for check in checks.values()), return_exceptions=True
    )
    report = {}
    for name, result in zip(checks, results, strict=True):
        if isinstance(result, BaseException):
            logger.warning("readiness check failed", extra={"check": name, "error": repr(result)})
            report[name] = "fail"
        else:
            report[name] = "ok"
    ready = all(value == "ok" for value in report.values())
    if not settings.REDIS_URL:
        report["redis"] = "not used"
    problem = model_key_problem()
    body = {"ready": ready, "checks": report, "backends": _backends(), "warnings": [problem] if problem else []}
    return _not_logged(JsonResponse(body, status=200 if ready else 503))


def _backends() -> dict[str, str]:
    """What this process runs on: the embedded default keeps the channel layer and the shared
    stores (presence, revocations, sessions, leases) in process memory, without Redis."""
    layer = get_channel_layer()
    return {
        "database": connection.vendor,
        "channel_layer": type(layer).__name__ if layer is not None else "none",
        "stores": "redis" if settings.REDIS_URL else "in-process",
    }


def _not_logged(response: HttpResponse) -> HttpResponse:
    # A 503 here is an answer, not a server error: balancers poll twice a second, so Django's
    # ERROR line per 5xx would flood the log (a failed check already logs its own warning).
    response._has_been_logged = True  # type: ignore[attr-defined]  # read by django.utils.log.log_response
    return response
