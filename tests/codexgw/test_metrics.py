"""GET /metrics: Bearer CXG_METRICS_TOKEN (constant time), 503 while unset; the instruments the
gateway feeds (frames, drops, channel-layer sends) and Celery task outcomes counted in Redis."""

from __future__ import annotations

import hmac

import pytest
from channels.layers import get_channel_layer
from prometheus_client.parser import text_string_to_metric_families

from bridge import session as sessions
from bridge.layer_frames import send_with_backpressure
from codexgw import metrics
from codexgw import redis as gwredis
from codexgw.celery import app as celery_app

TOKEN = "metrics-test-token"


@pytest.fixture
def metrics_token(settings) -> str:
    settings.CXG_METRICS_TOKEN = TOKEN
    return TOKEN


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }


# --- the endpoint -----------------------------------------------------------------------------


def test_metrics_503_while_the_token_is_unset(client, settings):
    settings.CXG_METRICS_TOKEN = ""
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer ")
    assert response.status_code == 503
    assert response.json() == {"error": "metrics not configured: set CXG_METRICS_TOKEN"}


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer wrong-token", f"bearer {TOKEN}", f"Basic {TOKEN}", f"Bearer {TOKEN}x"],
)
def test_metrics_401_without_the_token(client, metrics_token, authorization):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = client.get("/metrics", **headers)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"codexgw_" not in response.content


def test_metrics_compares_the_token_in_constant_time(client, metrics_token, monkeypatch):
    compared: list[tuple[bytes, bytes]] = []
    compare_digest = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert compared == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_metrics_refuses_other_methods(client, metrics_token):
    response = client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


def test_metrics_lists_every_gateway_metric(client, metrics_token):
    names = {name for name, _ in scrape(client)}
    assert {
        "codexgw_mux_pending_requests",
        "codexgw_mux_sessions",
        "codexgw_app_server_children",
        "codexgw_channel_layer_send_seconds_count",
        "codexgw_channel_layer_full_total",
        "process_resident_memory_bytes",
    } <= names


def test_metrics_is_not_in_the_openapi_schema(client):
    schema = client.get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert "/metrics" not in schema["paths"]


# --- instruments --------------------------------------------------------------------------------


def test_ws_frames_count_utf8_bytes_by_role_and_direction():
    before_frames = sample("codexgw_ws_frames_total", role="test", direction="in")
    before_bytes = sample("codexgw_ws_bytes_total", role="test", direction="in")
    metrics.ws_frame("test", "in", "abc", None)
    metrics.ws_frame("test", "in", "é€", None)  # 2 + 3 bytes in UTF-8
    metrics.ws_frame("test", "in", None, b"\x00\x01")
    assert sample("codexgw_ws_frames_total", role="test", direction="in") - before_frames == 3
    assert sample("codexgw_ws_bytes_total", role="test", direction="in") - before_bytes == 3 + 5 + 2
    assert sample("codexgw_ws_frames_total", role="test", direction="out") == 0


def test_ws_connection_gauge_follows_open_and_close():
    before = sample("codexgw_ws_connections", role="test")
    opened = sample("codexgw_ws_connections_opened_total", role="test")
    metrics.ws_opened("test")
    metrics.ws_opened("test")
    metrics.ws_closed("test")
    assert sample("codexgw_ws_connections", role="test") - before == 1
    assert sample("codexgw_ws_connections_opened_total", role="test") - opened == 2


def test_drops_are_counted_by_reason(caplog):
    before = sample("codexgw_drops_total", reason="test_reason")
    sessions.drop("test_reason", exe_id="exe-test")
    assert sample("codexgw_drops_total", reason="test_reason") - before == 1
    assert "dropped: test_reason" in caplog.text


async def test_channel_layer_sends_are_timed():
    layer = get_channel_layer()
    assert layer is not None
    channel = await layer.new_channel()
    before = sample("codexgw_channel_layer_send_seconds_count")
    await send_with_backpressure(layer, channel, {"type": "test.ping"})
    assert (await layer.receive(channel))["type"] == "test.ping"
    assert sample("codexgw_channel_layer_send_seconds_count") - before == 1


# --- Celery task outcomes -------------------------------------------------------------------------


@celery_app.task(name="tests.metrics.flaky", bind=True, max_retries=1)
def flaky(self) -> str:
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "ok"


@celery_app.task(name="tests.metrics.broken")
def broken() -> None:
    raise RuntimeError("broken on purpose")


def test_task_outcomes_are_counted_in_redis_and_exposed(client, metrics_token):
    assert flaky.apply().get() == "ok"
    assert broken.apply().failed()

    client_ = gwredis.sync_client()
    assert client_ is not None
    stored = client_.hgetall(gwredis.key("metrics", "celery_tasks"))
    assert stored == {
        "tests.metrics.flaky|started": "2",
        "tests.metrics.flaky|retried": "1",
        "tests.metrics.flaky|succeeded": "1",
        "tests.metrics.broken|started": "1",
        "tests.metrics.broken|failed": "1",
    }
    series = scrape(client)
    assert series[("codexgw_celery_tasks_total", (("outcome", "retried"), ("task", "tests.metrics.flaky")))] == 1
    assert series[("codexgw_celery_tasks_total", (("outcome", "failed"), ("task", "tests.metrics.broken")))] == 1


def test_task_outcomes_on_the_embedded_defaults_store(settings):
    settings.REDIS_URL = ""
    gwredis.sync_client().flushall()
    assert broken.apply().failed()
    assert metrics.task_counts() == {("tests.metrics.broken", "started"): 1, ("tests.metrics.broken", "failed"): 1}


def test_a_redis_outage_never_fails_the_task(redis_down, client, metrics_token):
    assert flaky.apply().get() == "ok"
    series = scrape(client)
    assert not [key for key in series if key[0] == "codexgw_celery_tasks_total"]
