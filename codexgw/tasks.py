"""Starting tasks eagerly and ending them for sure."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Coroutine, Generator, Iterable
from typing import Any


def start_eagerly(coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None] | None:
    """Run ``coro`` until it first waits, then go on in a task of its own: None if it finished
    without waiting. A coroutine that usually need not wait (a frame written to a socket with
    room) then costs no task switch and no event-loop iteration. On Python 3.12+ this is the
    standard library's eager start. On 3.11, which lacks it, the first step runs in a copy of the
    caller's context (as the task's own later steps do) but under the caller's
    ``current_task()``, so ``coro`` must not enter ``asyncio.timeout`` or a ``TaskGroup`` before
    its first wait. Either way an exception raised before the first wait is the caller's."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        task = asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg,unused-ignore]
        if not task.done():
            return task
        task.result()
        return None
    context = contextvars.copy_context()
    try:
        waited = context.run(coro.send, None)
    except StopIteration:
        return None
    if _is_future(waited):
        # Nobody awaits it until the task takes it (another await of it meanwhile would fail).
        waited._asyncio_future_blocking = False
    rest = _go_on(coro, waited)
    rest.send(None)  # primed: whatever the task's first step brings, a cancellation too, reaches coro
    return loop.create_task(rest, name=name, context=context)


def _is_future(value: Any) -> bool:
    return getattr(value, "_asyncio_future_blocking", None) is not None


@types.coroutine
def _go_on(coro: Coroutine[Any, Any, None], waited: Any) -> Generator[Any, Any, None]:
    """The rest of ``coro``, suspended on ``waited`` (Python 3.11): the task waits on what this
    yields and passes in results and exceptions as it would to a coroutine it had started."""
    primed = True
    while True:
        try:
            result = yield (None if primed else waited)
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # passed on to the coroutine, as a task would
            if primed and isinstance(exc, asyncio.CancelledError) and _is_future(waited) and waited.cancel(*exc.args):
                # Cancelled before the task's first step: as a task would, cancel what the
                # coroutine waits on; the cancellation then reaches it the usual way.
                waited._asyncio_future_blocking = True
                primed = False
                continue
            try:
                waited = coro.throw(exc)
            except StopIteration:
                return
        else:
            if primed:  # the task's first step only asks for what to wait on
                if _is_future(waited):
                    waited._asyncio_future_blocking = True
            else:
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
