"""Periodic jobs of the executors app (scheduled by ``CELERY_BEAT_SCHEDULE``)."""

from __future__ import annotations

import logging

from celery import shared_task

from executors.revocation import revoked_set

logger = logging.getLogger(__name__)


@shared_task(name="executors.tasks.prune_revoked_set", ignore_result=True)
def prune_revoked_set() -> int:
    removed = revoked_set().prune()
    if removed:
        logger.info("pruned expired revocations", extra={"removed": removed})
    return removed
