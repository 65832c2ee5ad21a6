"""Runs the Celery beat schedule on an in-process timer when there is no broker.

The embedded default has no Redis, so no Celery worker or beat can run; the periodic jobs
(the same tasks, from the same ``CELERY_BEAT_SCHEDULE``) then run inside the gateway
process. With a broker this is off and a single ``celery beat`` schedules them.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from django.conf import settings

logger = logging.getLogger(__name__)

_started = threading.Event()
_stop = threading.Event()


def _interval(schedule: object) -> float:
    if isinstance(schedule, timedelta):
        return schedule.total_seconds()
    if isinstance(schedule, int | float):
        return float(schedule)
    raise TypeError(f"in-process beat supports interval schedules only, got {schedule!r}")


def run_due(last_run: dict[str, float], now: float) -> list[str]:
    """Run every entry whose interval has passed since its last run; return the names run."""
    from codexgw.celery import app

    app.loader.import_default_modules()  # registers the autodiscovered tasks; idempotent
    ran = []
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        if now - last_run.get(name, now - _interval(entry["schedule"]) - 1) < _interval(entry["schedule"]):
            continue
        last_run[name] = now
        try:
            app.tasks[str(entry["task"])].apply()
        except Exception:
            logger.exception("periodic task failed", extra={"task": entry["task"]})
        ran.append(name)
    return ran


def start_in_process_beat(tick: float = 1.0) -> bool:
    """Start the timer thread once per process; a no-op when a broker is configured."""
    if settings.REDIS_URL or _started.is_set():
        return False
    _started.set()

    def loop() -> None:
        last_run: dict[str, float] = {}
        while not _stop.is_set():
            run_due(last_run, time.monotonic())
            _stop.wait(tick)

    threading.Thread(target=loop, name="codexgw-in-process-beat", daemon=True).start()
    logger.info("no broker configured: periodic tasks run in-process")
    return True


def stop_in_process_beat() -> None:
    """Run no more periodic tasks in this process (the drain on SIGTERM); one that is running
    finishes."""
    _stop.set()
