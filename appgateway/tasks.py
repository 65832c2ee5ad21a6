"""Periodic jobs of the app gateway (scheduled by ``CELERY_BEAT_SCHEDULE``)."""

from __future__ import annotations

import logging

from celery import shared_task

from appgateway import supervisor

logger = logging.getLogger(__name__)


@shared_task(name="appgateway.tasks.checkpoint_codex_homes", ignore_result=True)
def checkpoint_codex_homes() -> int:
    """Ask each gateway process that owns app-servers to persist their CODEX_HOMEs.

    A worker has neither the children nor their files, so it only publishes the request to the
    owners' process channels (see ``appgateway.supervisor``); each owner persists its own."""
    asked = supervisor.get_supervisor().request_checkpoints()
    if asked:
        logger.info("requested CODEX_HOME checkpoints", extra={"processes": asked})
    return asked
