"""Graceful drain of one gateway process (SIGTERM/SIGINT; ``manage.py serve``).

``drain(deadline)`` marks the process as draining (``is_draining()``: ``/readyz`` answers 503,
WebSocket upgrades and new relay transfers are refused with 503 + ``Retry-After``) and then
runs the registered steps by their ``order``, all within ``CODEXGW_DRAIN_TIMEOUT``. Each app
adds its own steps in its ``AppConfig.ready()``; the gateway's are:

1. ``readiness`` (order 0, ``codexgw``): wait ``CODEXGW_DRAIN_READINESS_DELAY`` so load
   balancers see the 503 and stop sending new connections here;
2. ``executors`` (10, ``bridge``, exec role): every executor session of this process hands over
   (virtual sessions saved, pending bridge requests answered with a retryable error, bridges and
   executors closed with 1012, so executors reconnect through the balancer to another process);
3. ``relays`` (20, ``bridge``, exec role): in-flight byte relays may finish; at their deadline
   the rest are aborted, so both sides see a failure (never a short body that looks complete);
4. ``app-gateway`` (30, ``appgateway``, app role): TUI connections closed with 1012, live
   app-servers stopped with their CODEX_HOME persisted and their leases released;
5. ``periodic`` (90, ``codexgw``): the in-process Celery beat (embedded default) stopped.

Each step runs as its own task and gets the overall deadline minus the time kept back for the
steps after it (``reserve``), so a waiting step cannot starve a later one, but always at least
half of the time left. A step still running at its deadline is cancelled and not waited for;
steps with no time left are skipped. Every step is logged with what it left undone. The process
exits after ``drain`` returns, whatever the steps did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from codexgw.raw_asgi import ASGIApp, Receive, Scope, Send
from codexgw.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

# A step gets its deadline (event-loop time) and returns what it left undone, or None.
DrainStep = Callable[[float], Coroutine[Any, Any, str | None]]

# Seconds a refused client is told to wait: the balancer has usually marked us down by then.
RETRY_AFTER = 1
# Kept at the end of the in-flight wait for aborting what is left (a cancelled relay does one
# Redis round trip).
ABORT_GRACE = 2.0


@dataclass(frozen=True)
class _Step:
    name: str
    fn: DrainStep
    order: int
    reserve: float


@dataclass(frozen=True)
class StepReport:
    name: str
    outcome: str  # "done", "incomplete", "failed", "timed out" or "skipped"
    undone: str | None = None


_draining = threading.Event()
_steps: list[_Step] = []


def is_draining() -> bool:
    return _draining.is_set()


def add_drain_step(name: str, fn: DrainStep, *, order: int, reserve: float = 0.0) -> None:
    """Run ``fn`` during a drain, after the steps of a lower ``order`` (equal orders: in the order
    added). ``reserve``: seconds of the drain kept for this step, which the steps before it may
    not use."""
    if any(step.name == name for step in _steps):
        raise ValueError(f"drain step {name!r} is already registered")
    _steps.append(_Step(name, fn, order, reserve))
    _steps.sort(key=lambda step: step.order)  # stable: equal orders keep the order added


async def drain(deadline: float) -> list[StepReport]:
    """Mark the process draining and run the steps by ``deadline`` (event-loop time)."""
    loop = asyncio.get_running_loop()
    _draining.set()
    logger.info("drain started", extra={"seconds": round(deadline - loop.time(), 3), "steps": len(_steps)})
    reports = []
    for index, step in enumerate(_steps):
        kept = sum(later.reserve for later in _steps[index + 1 :])
        step_deadline = max(deadline - kept, loop.time() + (deadline - loop.time()) / 2)
        report = await _run_step(step, step_deadline)
        reports.append(report)
        log = logger.info if report.outcome == "done" else logger.warning
        undone = f" ({report.undone})" if report.undone else ""
        log("drain step %s: %s%s", step.name, report.outcome, undone, extra={"step": step.name})
    logger.info("drain finished", extra={"undone": [r.name for r in reports if r.outcome != "done"]})
    return reports


async def _run_step(step: _Step, deadline: float) -> StepReport:
    loop = asyncio.get_running_loop()
    if deadline <= loop.time():
        return StepReport(step.name, "skipped", "no time left")
    task = asyncio.create_task(step.fn(deadline), name=f"drain {step.name}")
    done, _ = await asyncio.wait({task}, timeout=deadline - loop.time())
    if not done:
        # Not awaited: a step that swallows its cancellation must not hold up the exit.
        task.cancel()
        return StepReport(step.name, "timed out", "cut off at its deadline")
    if task.cancelled():
        return StepReport(step.name, "failed", "cancelled")
    error = task.exception()
    if error is not None:
        logger.error("drain step %s failed", step.name, exc_info=error)
        return StepReport(step.name, "failed", repr(error))
    undone = task.result()
    return StepReport(step.name, "done" if undone is None else "incomplete", undone)


# --- refusing new work -------------------------------------------------------------------------


RETRY_AFTER_HEADER = (b"retry-after", str(RETRY_AFTER).encode())
DRAINING_BODY = json.dumps({"error": "gateway draining, retry later"}).encode()


def refuse_upgrades_while_draining(app: Callable[..., Awaitable[None]]) -> ASGIApp:
    """``app`` (the WebSocket router), with upgrades answered HTTP 503 while draining."""

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or not is_draining():
            await app(scope, receive, send)
            return
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" not in (scope.get("extensions") or {}):
            await send({"type": "websocket.close"})  # the server's own refusal (daphne: 403)
            return
        headers = [(b"content-type", b"application/json"), RETRY_AFTER_HEADER]
        await send({"type": "websocket.http.response.start", "status": 503, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": DRAINING_BODY})

    return guard


# --- in-flight requests -------------------------------------------------------------------------


class InFlight:
    """Requests in progress that a drain lets finish until its deadline and then aborts: the
    request's task is cancelled (its own cancellation handling fails it for the other side),
    then ``abort`` drops its connection so the client sees the failure."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._live: dict[asyncio.Task[Any], Callable[[], None]] = {}

    def __len__(self) -> int:
        return len(self._live)

    @contextlib.contextmanager
    def track(self, abort: Callable[[], None]) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._live[task] = abort
        try:
            yield
        finally:
            self._live.pop(task, None)

    async def finish(self, deadline: float) -> str | None:
        """Wait for the tracked requests until ``deadline`` (event-loop time), then abort the
        rest; returns what was aborted, or None."""
        loop = asyncio.get_running_loop()
        live = set(self._live)
        if live:
            logger.info("drain: waiting for %d %s", len(live), self.what)
            # Time is kept for the aborts: a cancelled relay fails itself in Redis first.
            wait_until = deadline - min(ABORT_GRACE, (deadline - loop.time()) / 2)
            await asyncio.wait(live, timeout=max(0.0, wait_until - loop.time()))
        left = dict(self._live)
        if not left:
            return None
        try:
            await cancel_and_wait(left, deadline)
        finally:
            # Even if this step is cut off: a connection left open would look like a stall.
            for abort in left.values():
                with contextlib.suppress(Exception):
                    abort()
        return f"aborted {len(left)} {self.what}"
