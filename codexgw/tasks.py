"""Ending tasks for sure."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait for them to end, cancelling again while any runs on: under Python
    3.11 redis-py can swallow a cancellation (its commands run under ``asyncio.wait_for``), and a
    task blocked in a channel-layer call then carries on (seen with a send and with a receive)."""
    tasks = set(tasks)
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
    await asyncio.gather(*tasks, return_exceptions=True)
