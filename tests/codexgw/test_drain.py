"""codexgw/drain.py: the ordered, bounded drain steps, in-flight requests, the upgrade refusal
and /readyz while draining. The whole drain on SIGTERM is tests/e2e/test_drain.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from codexgw import drain

# Bounds the tests themselves, far above what any drain below may take.
GUARD = 10.0


@pytest.fixture(autouse=True)
def fresh_drain(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(drain, "_steps", [])
    try:
        yield
    finally:
        drain._draining.clear()


def deadline_in(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_steps_run_by_their_order_after_the_process_is_marked_draining():
    seen: list[tuple[str, bool]] = []

    def step(name: str, undone: str | None = None) -> drain.DrainStep:
        async def run(deadline: float) -> str | None:
            seen.append((name, drain.is_draining()))
            return undone

        return run

    # Added in another order than they run: the apps add theirs in their AppConfig.ready().
    drain.add_drain_step("third", step("third"), order=30)
    drain.add_drain_step("first", step("first"), order=1)
    drain.add_drain_step("second", step("second", "2 things left"), order=20)
    assert not drain.is_draining()

    reports = await asyncio.wait_for(drain.drain(deadline_in(5)), GUARD)

    assert seen == [("first", True), ("second", True), ("third", True)]
    assert reports == [
        drain.StepReport("first", "done"),
        drain.StepReport("second", "incomplete", "2 things left"),
        drain.StepReport("third", "done"),
    ]
    assert drain.is_draining()


def test_a_step_name_is_registered_once():
    async def nothing(deadline: float) -> None:
        return None

    drain.add_drain_step("once", nothing, order=1)
    with pytest.raises(ValueError, match="already registered"):
        drain.add_drain_step("once", nothing, order=2)


async def test_a_failing_step_is_reported_and_the_next_one_still_runs():
    ran = []

    async def broken(deadline: float) -> None:
        raise RuntimeError("boom")

    async def after(deadline: float) -> None:
        ran.append("after")

    drain.add_drain_step("broken", broken, order=1)
    drain.add_drain_step("after", after, order=2)
    reports = await asyncio.wait_for(drain.drain(deadline_in(5)), GUARD)
    assert reports[0].outcome == "failed"
    assert "boom" in (reports[0].undone or "")
    assert reports[1] == drain.StepReport("after", "done")
    assert ran == ["after"]


async def test_a_hanging_step_is_cut_off_at_the_deadline_and_later_steps_are_skipped():
    cancelled = asyncio.Event()

    async def hangs(deadline: float) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cancelled.set()

    async def later(deadline: float) -> None:
        raise AssertionError("no time was left for this step")

    drain.add_drain_step("hangs", hangs, order=1)
    drain.add_drain_step("later", later, order=2)
    reports = await asyncio.wait_for(drain.drain(deadline_in(0.3)), GUARD)
    assert reports == [
        drain.StepReport("hangs", "timed out", "cut off at its deadline"),
        drain.StepReport("later", "skipped", "no time left"),
    ]
    await asyncio.wait_for(cancelled.wait(), GUARD)


async def test_a_step_that_swallows_its_cancellation_does_not_hold_up_the_drain():
    release = asyncio.Event()

    async def stubborn(deadline: float) -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    drain.add_drain_step("stubborn", stubborn, order=1)
    try:
        reports = await asyncio.wait_for(drain.drain(deadline_in(0.3)), GUARD)
    finally:
        release.set()
    assert reports == [drain.StepReport("stubborn", "timed out", "cut off at its deadline")]


async def test_a_reserve_keeps_time_for_a_later_step():
    async def waits_for_its_deadline(deadline: float) -> None:
        await asyncio.sleep(3600)

    async def needs_time(deadline: float) -> None:
        await asyncio.sleep(0.2)

    drain.add_drain_step("greedy", waits_for_its_deadline, order=1)
    drain.add_drain_step("reserved", needs_time, order=2, reserve=1.0)
    reports = await asyncio.wait_for(drain.drain(deadline_in(3)), GUARD)
    assert [report.outcome for report in reports] == ["timed out", "done"]


async def test_reserves_leave_a_step_at_least_half_of_the_time_left():
    async def quick(deadline: float) -> None:
        return None

    drain.add_drain_step("first", quick, order=1)
    drain.add_drain_step("reserves too much", quick, order=2, reserve=3600)
    reports = await asyncio.wait_for(drain.drain(deadline_in(2)), GUARD)
    assert [report.outcome for report in reports] == ["done", "done"]


# --- in-flight requests ---------------------------------------------------------------------


async def test_in_flight_requests_that_finish_in_time_are_waited_for():
    inflight = drain.InFlight("things")
    aborted: list[str] = []

    async def request() -> str:
        with inflight.track(lambda: aborted.append("request")):
            await asyncio.sleep(0.2)
        return "finished"

    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    assert len(inflight) == 1
    assert await asyncio.wait_for(inflight.finish(deadline_in(5)), GUARD) is None
    assert task.result() == "finished"
    assert aborted == []
    assert len(inflight) == 0


async def test_in_flight_requests_left_at_the_deadline_are_cancelled_then_aborted():
    inflight = drain.InFlight("things")
    events: list[str] = []

    async def request(name: str) -> None:
        with inflight.track(lambda: events.append(f"abort {name}")):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                events.append(f"cancelled {name}")
                raise

    tasks = [asyncio.create_task(request(name)) for name in ("a", "b")]
    await asyncio.sleep(0)
    undone = await asyncio.wait_for(inflight.finish(deadline_in(0.2)), GUARD)
    assert undone == "aborted 2 things"
    assert all(task.cancelled() for task in tasks)
    # Cancelled first (the request fails itself for its peer), then its connection is dropped.
    assert sorted(events) == ["abort a", "abort b", "cancelled a", "cancelled b"]
    assert events.index("cancelled a") < events.index("abort a")


# --- refusing WebSocket upgrades ------------------------------------------------------------


class Recorder:
    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope
        self.sent: list[dict[str, Any]] = []
        self.app_called = False

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        self.app_called = True

    async def receive(self) -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))

    async def run(self) -> None:
        await drain.refuse_upgrades_while_draining(self.app)(self.scope, self.receive, self.send)


WS_SCOPE = {"type": "websocket", "path": "/bridge/x", "extensions": {"websocket.http.response": {}}}


async def test_upgrades_pass_through_while_not_draining():
    recorder = Recorder(WS_SCOPE)
    await recorder.run()
    assert recorder.app_called
    assert recorder.sent == []


async def test_upgrades_are_refused_with_503_and_retry_after_while_draining():
    drain._draining.set()
    recorder = Recorder(WS_SCOPE)
    await recorder.run()
    assert not recorder.app_called
    start, body = recorder.sent
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 503
    assert (b"retry-after", b"1") in start["headers"]
    assert body == {"type": "websocket.http.response.body", "body": drain.DRAINING_BODY}


async def test_without_the_denial_extension_a_draining_upgrade_is_closed():
    drain._draining.set()
    recorder = Recorder({"type": "websocket", "path": "/bridge/x"})
    await recorder.run()
    assert not recorder.app_called
    assert recorder.sent == [{"type": "websocket.close"}]


async def test_http_passes_through_while_draining():
    drain._draining.set()
    recorder = Recorder({"type": "http", "path": "/readyz"})
    await recorder.run()
    assert recorder.app_called


# --- /readyz ----------------------------------------------------------------------------------


def test_readyz_is_503_draining_before_any_other_check(client, database_down, redis_down):
    drain._draining.set()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"ready": False, "status": "draining"}
    assert response["Retry-After"] == "1"


def test_healthz_stays_ok_while_draining(client):
    drain._draining.set()
    assert client.get("/healthz").status_code == 200
