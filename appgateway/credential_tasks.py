"""The periodic model-token refresh (scheduled by ``CELERY_BEAT_SCHEDULE``, imported through
``CELERY_IMPORTS``: autodiscovery only finds ``tasks`` modules)."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from celery import shared_task

from appgateway import model_credentials

logger = logging.getLogger(__name__)


@shared_task(name="appgateway.credential_tasks.refresh_model_tokens", ignore_result=True)
def refresh_model_tokens() -> int:
    """Fetch fresh upstream tokens for live workspaces whose tokens are missing or near expiry."""
    fetched: int = async_to_sync(model_credentials.refresh_live)()
    if fetched:
        logger.info("refreshed model tokens", extra={"workspaces": fetched})
    return fetched
