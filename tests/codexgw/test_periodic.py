"""The in-process beat runs the Celery beat schedule when there is no broker."""

from __future__ import annotations

import time

from codexgw.periodic import run_due, start_in_process_beat
from executors.revocation import revoked_set


def test_run_due_runs_each_task_once_per_interval(settings):
    settings.CELERY_BEAT_SCHEDULE = {"prune-revoked-set": settings.CELERY_BEAT_SCHEDULE["prune-revoked-set"]}
    revoked_set().add("expired", int(time.time()) - 10)
    last_run: dict[str, float] = {}
    assert run_due(last_run, now=1000.0) == ["prune-revoked-set"]
    assert not revoked_set().contains("expired")
    assert run_due(last_run, now=1000.0 + settings.CXG_REVOKED_PRUNE_INTERVAL / 2) == []
    assert run_due(last_run, now=1000.0 + settings.CXG_REVOKED_PRUNE_INTERVAL) == ["prune-revoked-set"]


def test_in_process_beat_is_off_when_a_broker_is_configured(settings):
    assert settings.REDIS_URL
    assert start_in_process_beat() is False
