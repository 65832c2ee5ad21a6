"""The Celery application: ``celery -A codexgw worker`` and ``celery -A codexgw beat``."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codexgw.settings")

app = Celery("codexgw")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
