"""Starting a coroutine eagerly: in the caller's task until it first waits, then as a task that
behaves as one started the usual way (results, errors and cancellations reach the coroutine)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, cast

import pytest

from codexgw.tasks import start_eagerly


async def test_a_coroutine_that_never_waits_finishes_in_the_callers_task():
    ran_in: list[asyncio.Task[object] | None] = []

    async def quick() -> None:
        ran_in.append(asyncio.current_task())

    assert start_eagerly(quick(), name="quick") is None
    assert ran_in == [asyncio.current_task()]  # done before start_eagerly returned


async def test_a_coroutine_that_waits_goes_on_in_a_task_with_what_it_waited_for():
    loop = asyncio.get_running_loop()
    first: asyncio.Future[str] = loop.create_future()
    second: asyncio.Future[str] = loop.create_future()
    steps: list[tuple[str, asyncio.Task[object] | None]] = []

    async def waits() -> None:
        steps.append(("before", asyncio.current_task()))
        steps.append((await first, asyncio.current_task()))
        steps.append((await second, asyncio.current_task()))

    task = start_eagerly(waits(), name="waits")
    assert task is not None
    assert task.get_name() == "waits"
    assert steps == [("before", asyncio.current_task())]
    first.set_result("one")
    for _ in range(10):  # a few loop iterations: the task's first step, then its wake-up
        await asyncio.sleep(0)
    assert steps[1:] == [("one", task)]
    second.set_result("two")
    await task
    assert steps[2:] == [("two", task)]


async def test_an_error_after_the_first_wait_is_the_tasks():
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def fails() -> None:
        await gate
        raise ValueError("late")

    task = start_eagerly(fails(), name="fails")
    assert task is not None
    gate.set_result(None)
    with pytest.raises(ValueError, match="late"):
        await task


async def test_a_cancellation_before_the_tasks_first_step_reaches_the_coroutine():
    cleaned: list[str] = []

    async def sleeper() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            cleaned.append("finally")

    task = start_eagerly(sleeper(), name="sleeper")
    assert task is not None
    task.cancel()  # the loop has not run the task yet
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"]


async def test_a_coroutine_may_handle_a_cancellation_as_in_any_task():
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def stubborn() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            seen.append("cancelled")
        await asyncio.sleep(0)
        seen.append("went on")

    task = start_eagerly(stubborn(), name="stubborn")
    assert task is not None
    await asyncio.sleep(0)  # the task is waiting on the gate
    task.cancel()
    await task
    assert seen == ["cancelled", "went on"]
    assert not task.cancelled()


async def test_a_cancellation_before_the_first_step_cancels_what_the_coroutine_waits_on():
    """As for any task: cancelling it cancels the task it awaits, and the future it waited on
    is left cancelled, not marked as awaited for good."""
    inner = asyncio.create_task(asyncio.sleep(60))

    async def awaits_inner() -> None:
        await inner

    task = start_eagerly(awaits_inner(), name="outer")
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(asyncio.CancelledError):
        await inner
    assert inner.cancelled()


async def test_a_future_waited_on_can_be_awaited_by_others_before_the_task_takes_it():
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def waits() -> str:
        return await gate

    other = asyncio.create_task(waits())  # its first step comes before the eager task's
    task = start_eagerly(cast(Coroutine[Any, Any, None], waits()), name="waits")
    assert task is not None
    await asyncio.sleep(0)
    gate.set_result("open")
    assert await other == "open"
    await task


LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("label", default="caller's")


async def test_the_first_step_does_not_change_the_callers_context():
    seen: list[str] = []

    async def labels() -> None:
        token = LABEL.set("its own")
        await asyncio.sleep(0)
        seen.append(LABEL.get())
        LABEL.reset(token)

    task = start_eagerly(labels(), name="labels")
    assert LABEL.get() == "caller's"
    assert task is not None
    await task
    assert seen == ["its own"]
