"""Starting tasks eagerly and ending them for sure."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator, Iterable
from typing import Any


def start_eagerly(coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None] | None:
    """Run ``coro`` in the caller's task until it first waits, then go on in a task of its own:
    None if it finished without waiting. Python 3.12's eager tasks, which 3.11 lacks: a coroutine
    that usually need not wait (a frame written to a socket with room) costs no task switch and
    no event-loop iteration. Until it waits, it runs under the caller's ``current_task()`` and
    context, and an exception it raises there is the caller's."""
    try:
        waited = coro.send(None)
    except StopIteration:
        return None
    rest = _go_on(coro, waited)
    rest.send(None)  # primed: whatever the task's first step brings, a cancellation too, reaches coro
    return asyncio.get_running_loop().create_task(rest, name=name)


@types.coroutine
def _go_on(coro: Coroutine[Any, Any, None], waited: Any) -> Generator[Any, Any, None]:
    """The rest of ``coro``, suspended on ``waited``: the task waits on what this yields and
    passes in results and exceptions as it would to a coroutine it had started."""
    primed = True
    while True:
        try:
            result = yield (None if primed else waited)
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # passed on to the coroutine, as a task would
            try:
                waited = coro.throw(exc)
            except StopIteration:
                return
        else:
            if not primed:  # the task's first step only asks for what to wait on
                try:
                    waited = coro.send(result)
                except StopIteration:
                    return
        primed = False


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
