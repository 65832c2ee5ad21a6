"""HTTP for the byte relay: ``POST /api/exec-gateway/relay/create`` (DRF, shared-secret Bearer)
and ``PUT|GET /relay/{ticket}``.

``/relay/`` is a raw ASGI app in front of Django (``relay_app``, added for the exec role in
``bridge/apps.py``), not a Django view: Django's ASGI handler reads the whole request body
before it calls a view and sends a streaming response with no way to abort it. Plain ASGI is
enough under the production server (``codexgw/server.py``): the upload streams as it arrives
(``receive``), the download waits for its client (``send``), and a failed download is aborted
mid-body (``codexgw/http_abort.py``: the connection is reset), so the client sees the transfer
fail rather than a short body that looks complete.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from drf_spectacular.utils import extend_schema
from redis.exceptions import RedisError
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bridge import relay, relay_tickets
from codexgw import drain
from codexgw.api_errors import error_response
from codexgw.bearer import bearer_token, secret_matches
from codexgw.http_abort import abort_connection
from codexgw.raw_asgi import Receive, Scope, Send, header, send_json
from executors.api_auth import SharedSecretBearer
from executors.models import WorkspaceExecutor
from executors.serializers import ErrorResponse

if TYPE_CHECKING:
    Serializer = serializers.Serializer[Any]
else:
    Serializer = serializers.Serializer

logger = logging.getLogger(__name__)

PATH_PREFIX = "/relay/"
DISABLED = "relay not enabled (CXG_PUBLIC_HTTPS_BASE_URL or REDIS_URL unset)"
IDS_REQUIRED = "workspace_id, source_exe_id, dest_exe_id required"
OUTAGE = "service unavailable, retry later"


# --- POST /api/exec-gateway/relay/create ------------------------------------------------------


class RelayCreateRequest(Serializer):
    workspace_id = serializers.CharField(max_length=255, allow_blank=True, default="")
    source_exe_id = serializers.CharField(max_length=64, allow_blank=True, default="")
    dest_exe_id = serializers.CharField(max_length=64, allow_blank=True, default="")
    ttl_seconds = serializers.IntegerField(
        default=0, max_value=relay_tickets.MAX_TTL_SECONDS, help_text="≤ 0 or absent: CXG_RELAY_DEFAULT_TTL."
    )
    max_bytes = serializers.IntegerField(default=0, min_value=0, help_text="0: unlimited.")


class RelayTicketResponse(Serializer):
    ticket = serializers.CharField()
    upload_url = serializers.CharField(help_text="PUT the bytes here (Authorization: Bearer <ticket>).")
    download_url = serializers.CharField(help_text="GET them here; the same URL as upload_url.")
    expires_at = serializers.DateTimeField()


class RelayCreateView(APIView):
    permission_classes = [SharedSecretBearer]

    @extend_schema(
        operation_id="exec_gateway_relay_create",
        request=RelayCreateRequest,
        responses={201: RelayTicketResponse, **dict.fromkeys((400, 401, 403, 429, 503), ErrorResponse)},
    )
    def post(self, request: Request) -> Response:
        if not relay_tickets.enabled():
            return error_response(DISABLED, status.HTTP_503_SERVICE_UNAVAILABLE)
        serializer = RelayCreateRequest(data=request.data)
        serializer.is_valid(raise_exception=True)
        body = serializer.validated_data
        workspace, source, dest = (body[name].strip() for name in ("workspace_id", "source_exe_id", "dest_exe_id"))
        if not (workspace and source and dest):
            return error_response(IDS_REQUIRED, status.HTTP_400_BAD_REQUEST)
        bound = set(
            WorkspaceExecutor.objects.filter(workspace_id=workspace, executor_id__in={source, dest}).values_list(
                "executor_id", flat=True
            )
        )
        for exe_id in (source, dest):
            if exe_id not in bound:
                return error_response(f"executor not in workspace: {exe_id}", status.HTTP_403_FORBIDDEN)
        try:
            ticket = relay_tickets.create_ticket(workspace, source, dest, body["ttl_seconds"], body["max_bytes"])
        except relay_tickets.CapReached:
            return error_response("relay: workspace concurrent relay cap reached", status.HTTP_429_TOO_MANY_REQUESTS)
        return Response(
            {
                "ticket": ticket.ticket,
                "upload_url": ticket.url,
                "download_url": ticket.url,
                "expires_at": ticket.expires_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            },
            status=status.HTTP_201_CREATED,
        )


# --- PUT|GET /relay/{ticket} -----------------------------------------------------------------


# A drain waits for the transfers, then cancels what is left (failing the relay for the other
# side) and drops their connections.
in_flight = drain.InFlight("relay transfers")


async def relay_app(scope: Scope, receive: Receive, send: Send) -> None:
    if not relay_tickets.enabled():
        await send_json(send, status.HTTP_404_NOT_FOUND, {"error": "not found"})
        return
    ticket = scope["path"][len(PATH_PREFIX) :]
    method = scope["method"]
    if method not in ("PUT", "GET"):
        allow = [(b"allow", b"GET, PUT")]
        await send_json(send, status.HTTP_405_METHOD_NOT_ALLOWED, {"error": "method not allowed"}, allow)
        return
    if not secret_matches(bearer_token(header(scope, b"authorization")), ticket):
        await send_json(send, status.HTTP_401_UNAUTHORIZED, {"error": "unauthorized"})
        return
    if drain.is_draining():
        # The transfer would be cut by the drain: the client retries (through the balancer).
        await send_json(send, status.HTTP_503_SERVICE_UNAVAILABLE, {"error": OUTAGE}, [drain.RETRY_AFTER_HEADER])
        return
    if not relay_tickets.is_ticket(ticket):
        await send_json(send, status.HTTP_410_GONE, {"error": relay.Refusal.UNKNOWN.value})
        return
    if method == "GET" and scope.get("http_version") in ("1.0", "0.9"):
        # Without chunked framing an aborted transfer would look complete.
        await send_json(send, status.HTTP_505_HTTP_VERSION_NOT_SUPPORTED, {"error": "the download needs HTTP/1.1"})
        return
    connection = relay.RelayConnection()
    client = _Client(scope, receive)
    try:
        # A drain waits for the transfer, then cancels it (failing the relay for the other
        # side) and resets the connection.
        with in_flight.track(client.abort):
            if method == "PUT":
                await _put(scope, send, client, connection, ticket)
            else:
                client.watch()
                await _get(send, client, connection, ticket)
    finally:
        await client.close()
        await connection.close()


class _Client:
    """The relay's HTTP client, through ASGI ``receive``: ``gone`` once the server reports
    ``http.disconnect``. Once the request body has been read, a task waits for that report."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self._scope = scope
        self._receive = receive
        self._body_read = False
        self._watch: asyncio.Task[None] | None = None
        self.gone = False

    async def read(self) -> bytes | None:
        """The next request-body bytes, ``b""`` at the end, None if the client went away."""
        if self._body_read:
            return b""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                return None
            body: bytes = message.get("body", b"")
            if not message.get("more_body", False):
                self._body_read = True
                self.watch()
                return body
            if body:
                return body

    def watch(self) -> None:
        if self._watch is None:
            self._watch = asyncio.create_task(self._wait_gone(), name="relay client watch")

    async def _wait_gone(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True

    def abort(self) -> None:
        """Drop the connection now."""
        abort_connection(self._scope)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            # wait(), not await: a cancellation of this task must not be taken for the watch's.
            await asyncio.wait({self._watch})


def _failure_status(outcome: relay.Outcome, side: relay.Side) -> int:
    """408 for the deadline on either side, 413 for the upload over max_bytes, 502 when the
    other side failed."""
    if outcome is relay.Outcome.TIMEOUT:
        return status.HTTP_408_REQUEST_TIMEOUT
    if outcome is relay.Outcome.TOO_LARGE and side is relay.Side.UPLOAD:
        return status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    return status.HTTP_502_BAD_GATEWAY


def _refusal_status(reason: relay.Refusal) -> int:
    if reason in (relay.Refusal.PUT_CLAIMED, relay.Refusal.GET_CLAIMED):
        return status.HTTP_423_LOCKED
    return status.HTTP_410_GONE


async def _put(scope: Scope, send: Send, client: _Client, connection: relay.RelayConnection, ticket: str) -> None:
    length = header(scope, b"content-length")
    try:
        claim = await connection.claim(ticket, relay.Side.UPLOAD)
        received = await relay.upload(
            connection, claim, client.read, lambda: client.gone, int(length) if length and length.isdigit() else None
        )
    except relay.Refused as refused:
        await send_json(send, _refusal_status(refused.reason), {"error": refused.reason.value})
    except relay.RelayFailed as failure:
        status_code = _failure_status(failure.outcome, relay.Side.UPLOAD)
        await send_json(send, status_code, {"bytes": failure.received, "error": failure.message})
    except RedisError as exc:
        logger.warning("relay upload: Redis failed", extra={"error": repr(exc)})
        await send_json(send, status.HTTP_503_SERVICE_UNAVAILABLE, {"error": OUTAGE})
    else:
        await send_json(send, status.HTTP_200_OK, {"bytes": received, "status": "ok"})


class _Download:
    def __init__(self, send: Send, client: _Client) -> None:
        self._send = send
        self._client = client
        self.started = False

    @property
    def gone(self) -> bool:
        return self._client.gone

    async def start(self) -> None:
        self.started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": status.HTTP_200_OK,
                "headers": [(b"content-type", b"application/octet-stream"), (b"cache-control", b"no-store")],
            }
        )

    async def write(self, data: bytes) -> None:
        # The server's send waits while the client's send buffer is full.
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    def abort(self) -> None:
        self._client.abort()


async def _get(send: Send, client: _Client, connection: relay.RelayConnection, ticket: str) -> None:
    downstream = _Download(send, client)
    try:
        claim = await connection.claim(ticket, relay.Side.DOWNLOAD)
        await relay.download(connection, claim, downstream)
    except relay.Refused as refused:
        await send_json(send, _refusal_status(refused.reason), {"error": refused.reason.value})
    except relay.RelayFailed as failure:
        if not downstream.started:
            await send_json(send, _failure_status(failure.outcome, relay.Side.DOWNLOAD), {"error": failure.message})
    except RedisError as exc:
        logger.warning("relay download: Redis failed", extra={"error": repr(exc)})
        if downstream.started:
            downstream.abort()
        else:
            await send_json(send, status.HTTP_503_SERVICE_UNAVAILABLE, {"error": OUTAGE})
