"""/healthz never does I/O; /readyz checks the database, Redis and the channel layer."""

from __future__ import annotations

import pytest

from codexgw.model_key import MISSING_KEY


def test_healthz_is_ok_while_database_and_redis_are_down(client, database_down, redis_down):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.content == b"ok"


@pytest.mark.django_db(transaction=True)
def test_readyz_ready_when_everything_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "ready": True,
        "checks": {"database": "ok", "redis": "ok", "channel_layer": "ok"},
        "backends": {"database": "postgresql", "channel_layer": "RedisInboxChannelLayer", "stores": "redis"},
        "warnings": [],
    }


@pytest.mark.django_db(transaction=True)
def test_readyz_says_redis_is_not_used_on_the_embedded_default(client, settings):
    settings.REDIS_URL = ""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["checks"] == {"database": "ok", "redis": "not used", "channel_layer": "ok"}
    assert body["backends"] == {
        "database": "postgresql",
        "channel_layer": "InMemoryChannelLayer",
        "stores": "in-process",
    }
    assert body["ready"] is True


@pytest.mark.django_db(transaction=True)
def test_readyz_warns_about_a_missing_model_key_and_stays_ready(client, settings):
    settings.CODEXGW_IDENTITY_BACKEND = "builtin"
    settings.CXG_CODEX_API_KEY = ""
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["ready"] is True
    assert response.json()["warnings"] == [MISSING_KEY]

    settings.CXG_CODEX_API_KEY = "sk-configured"
    assert client.get("/readyz").json()["warnings"] == []


@pytest.mark.django_db(transaction=True)
def test_readyz_503_when_redis_is_down(client, redis_down, caplog):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] == "fail"
    assert response.json()["checks"]["database"] == "ok"
    # Not-ready is an answer, not a server error: only the check's own warning is logged.
    assert [r.getMessage() for r in caplog.records if r.name == "django.request"] == []
    assert any(r.getMessage() == "readiness check failed" for r in caplog.records)


def test_readyz_503_when_database_is_down(client, database_down):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "fail"


@pytest.mark.django_db(transaction=True)
def test_readyz_503_when_channel_layer_is_unreachable(client, settings):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "codexgw.channel_layer.RedisInboxChannelLayer",
            "CONFIG": {"url": "redis://127.0.0.1:1/0"},
        }
    }
    settings.CODEXGW_READYZ_TIMEOUT = 1.0
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["channel_layer"] == "fail"
