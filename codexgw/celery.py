"""The Celery application: ``celery -A codexgw worker`` and ``celery -A codexgw beat``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import task_failure, task_prerun, task_retry, task_success

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codexgw.settings")

app = Celery("codexgw")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# Task outcomes for codexgw_celery_tasks_total (codexgw/metrics.py), counted wherever tasks run:
# workers, and the gateway process itself on the embedded default (codexgw/periodic.py).
def _counter(outcome: str) -> Callable[..., None]:
    def record(sender: Any = None, **kwargs: Any) -> None:
        from codexgw import metrics

        metrics.record_task(str(getattr(sender, "name", sender)), outcome)

    return record


for _signal, _outcome in (
    (task_prerun, "started"),
    (task_success, "succeeded"),
    (task_failure, "failed"),
    (task_retry, "retried"),
):
    _signal.connect(_counter(_outcome), weak=False)  # weak=False: nothing else holds the handler
