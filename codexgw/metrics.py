"""Prometheus metrics of one gateway process, served at ``GET /metrics``.

The endpoint requires ``Authorization: Bearer <CXG_METRICS_TOKEN>`` (constant-time compare) and
answers 503 while the token is unset: it is never open. Every series is per process except
``codexgw_celery_tasks_total``, which Celery workers count in Redis: every gateway process reports
the same fleet-wide value (aggregate it with ``max``, not ``sum``). The list with meanings is in
``docs/operations.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from codexgw import redis as gwredis
from codexgw.bearer import bearer_token, secret_matches

logger = logging.getLogger(__name__)

# A registry of our own: tests and the endpoint see exactly these series (plus process_*/python_*).
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# WebSocket roles: executor (/codex-exec), bridge (/bridge), tui (/ and /codex-app/ws).
WS_CONNECTIONS = Gauge(
    "codexgw_ws_connections", "Open (accepted) WebSocket connections, by role.", ["role"], registry=REGISTRY
)
WS_OPENED = Counter(
    "codexgw_ws_connections_opened_total", "Accepted WebSocket connections, by role.", ["role"], registry=REGISTRY
)
DROPS = Counter(
    "codexgw_drops_total",
    "Messages or connections the bridge multiplexer dropped, by reason (each also logs a warning).",
    ["reason"],
    registry=REGISTRY,
)
LAYER_SEND_SECONDS = Histogram(
    "codexgw_channel_layer_send_seconds",
    "Duration of one successful channel-layer send (a cross-process frame or control message).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
LAYER_FULL = Counter(
    "codexgw_channel_layer_full_total",
    "Channel-layer sends refused because the receiving channel was full (retried with backoff).",
    registry=REGISTRY,
)
LAYER_EXPIRED = Counter(
    "codexgw_channel_layer_expired_total",
    "Channel-layer messages dropped because nobody received from their channel for the expiry (60 s).",
    registry=REGISTRY,
)
LAYER_DIRECT_FALLBACK = Counter(
    "codexgw_channel_layer_direct_fallback_total",
    "Channel-layer messages sent through Redis because their receiving process could not be reached directly"
    " (at least 1 per occasion).",
    registry=REGISTRY,
)
LAYER_DIRECT_REFUSED = Counter(
    "codexgw_channel_layer_direct_refused_total",
    "Connections to the channel layer's direct listener dropped: failed authentication or a malformed frame.",
    registry=REGISTRY,
)
RELAY_BYTES = Counter(
    "codexgw_relay_bytes_total",
    "Bytes moved by the HTTP byte relay, by direction (upload: read from the PUT, download: written to the GET).",
    ["direction"],
    registry=REGISTRY,
)


def add_gauge(name: str, documentation: str, read: Callable[[], float]) -> None:
    """A gauge whose value is ``read()`` at each scrape (the apps add theirs in their
    ``AppConfig.ready()``). ``read`` runs on a worker thread while the event loop goes on."""
    Gauge(name, documentation, registry=REGISTRY).set_function(read)


# --- WebSocket traffic (called by bridge.consumers.GatewayConsumer) ---------------------------

# Frames and bytes by (role, direction), as plain ints read at each scrape
# (``WsTrafficCollector``): a Counter's inc takes a lock and checks itself, twice a frame.
_ws_traffic: dict[tuple[str, str], list[int]] = {}


def ws_opened(role: str) -> None:
    WS_OPENED.labels(role).inc()
    WS_CONNECTIONS.labels(role).inc()


def ws_closed(role: str) -> None:
    WS_CONNECTIONS.labels(role).dec()


def ws_frame(role: str, direction: str, text: str | None, data: bytes | None) -> None:
    counts = _ws_traffic.get((role, direction))
    if counts is None:
        counts = _ws_traffic[(role, direction)] = [0, 0]
    if data is not None:
        size = len(data)
    elif text is None:
        size = 0
    else:
        # isascii() scans without copying; only non-ASCII text pays for an encode.
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    counts[0] += 1
    counts[1] += size


class WsTrafficCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        frames = CounterMetricFamily(
            "codexgw_ws_frames",
            "WebSocket messages, by role and direction (in: from the peer, out: to the peer).",
            labels=["role", "direction"],
        )
        data = CounterMetricFamily(
            "codexgw_ws_bytes",
            "WebSocket payload bytes (UTF-8 for text), by role and direction.",
            labels=["role", "direction"],
        )
        # A scrape runs on a worker thread: dict() copies the table in one step, the loop kept out.
        for (role, direction), (count, size) in sorted(dict(_ws_traffic).items()):
            frames.add_metric([role, direction], count)
            data.add_metric([role, direction], size)
        yield frames
        yield data


REGISTRY.register(WsTrafficCollector())


# --- Celery task outcomes --------------------------------------------------------------------


def _tasks_key() -> str:
    return gwredis.key("metrics", "celery_tasks")


def record_task(task: str, outcome: str) -> None:
    """Count one task outcome in Redis (fleet-wide, shared by workers and gateways). Never raises:
    a metric must not fail the task."""
    try:
        gwredis.sync_client().hincrby(_tasks_key(), f"{task}|{outcome}", 1)
    except Exception:
        logger.warning("could not count a Celery task outcome", extra={"task": task, "outcome": outcome}, exc_info=True)


def task_counts() -> dict[tuple[str, str], int]:
    """Every (task, outcome) count recorded so far (blocking: reads Redis)."""
    raw: dict[str, str] = gwredis.sync_client().hgetall(_tasks_key())  # type: ignore[assignment]
    counts = {}
    for field, value in raw.items():
        task, _, outcome = field.rpartition("|")
        counts[(task, outcome)] = int(value)
    return counts


class CeleryTasksCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "codexgw_celery_tasks",
            "Celery task outcomes (started, succeeded, failed, retried) across the fleet; every gateway "
            "process reports the same value, aggregate with max.",
            labels=["task", "outcome"],
        )
        try:
            counts = task_counts()
        except Exception:
            logger.warning("could not read Celery task counts", exc_info=True)
            counts = {}
        for (task, outcome), value in sorted(counts.items()):
            family.add_metric([task, outcome], value)
        yield family


REGISTRY.register(CeleryTasksCollector())


# --- the endpoint ----------------------------------------------------------------------------


async def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: the Prometheus text exposition of this process."""
    expected: str = settings.CXG_METRICS_TOKEN
    if not expected:
        return JsonResponse({"error": "metrics not configured: set CXG_METRICS_TOKEN"}, status=503)
    if not secret_matches(bearer_token(request.headers.get("Authorization")), expected):
        response = JsonResponse({"error": "unauthorized"}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="codexgw metrics"'
        return response
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse({"error": f"method {request.method} not allowed"}, status=405)
        response["Allow"] = "GET, HEAD"
        return response
    # Collecting reads Redis (Celery counts) with the blocking client: off the event loop.
    body = await sync_to_async(generate_latest, thread_sensitive=False)(REGISTRY)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
