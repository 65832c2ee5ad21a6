"""Ending tasks for sure."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], deadline: float | None = None, *, patience: float = 0.2
) -> bool:
    """Cancel the tasks and wait for them to end, cancelling again while any runs on ``patience``
    seconds later: under Python 3.11 redis-py can swallow a cancellation (its commands run under
    ``asyncio.wait_for``), and a task blocked in a channel-layer call then carries on (seen with a
    send and with a receive). A task whose clean-up takes time (a ``finally`` that releases a
    lease) needs a ``patience`` longer than it. With ``deadline`` (event-loop time), give up
    then; returns whether every task ended."""
    loop = asyncio.get_running_loop()
    tasks = set(tasks)
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        if deadline is not None and loop.time() >= deadline:
            return False
        wait = patience if deadline is None else min(patience, deadline - loop.time())
        _, pending = await asyncio.wait(pending, timeout=wait)
    await asyncio.gather(*tasks, return_exceptions=True)
    return True
