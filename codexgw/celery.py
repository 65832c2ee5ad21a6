"""The Celery application: ``celery -A codexgw worker`` and ``celery -A codexgw beat``."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import task_failure, task_prerun, task_retry, task_success

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codexgw.settings")

app = Celery("codexgw")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# Task outcomes for codexgw_celery_tasks_total (codexgw/metrics.py), counted wherever tasks run:
# workers, and the gateway process itself on the embedded default (codexgw/periodic.py).
def _record(sender: Any, outcome: str) -> None:
    from codexgw import metrics

    metrics.record_task(str(getattr(sender, "name", sender)), outcome)


@task_prerun.connect
def _task_started(sender: Any = None, **kwargs: Any) -> None:
    _record(sender, "started")


@task_success.connect
def _task_succeeded(sender: Any = None, **kwargs: Any) -> None:
    _record(sender, "succeeded")


@task_failure.connect
def _task_failed(sender: Any = None, **kwargs: Any) -> None:
    _record(sender, "failed")


@task_retry.connect
def _task_retried(sender: Any = None, **kwargs: Any) -> None:
    _record(sender, "retried")
