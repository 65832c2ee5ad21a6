"""Fault: the executor goes silent without closing its connection: SIGSTOP of the real
exec-server (its TCP connection stays open, nothing is read or answered, pings included), or the
TCP proxy between it and the gateway stops forwarding both ways without closing anything.

The gateway must notice within its ping interval + timeout (``CXG_WS_PING_INTERVAL``,
``CXG_WS_PING_TIMEOUT``, lowered here), answer what its clients wait for with the retryable
``-32000``, refuse new requests the same way, and, once the executor runs again (SIGCONT) and
reconnects, deliver every line of the processes that kept running meanwhile exactly once.
"""

# ruff: noqa: ASYNC109 - helpers take a timeout like the harness client does

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from executors.presence import presence_store
from tests.e2e.faults import OutputAccount, numbered_lines, ticker_params
from tests.e2e.harness import RpcClient, stop_process, wait_for
from tests.e2e.test_bridge import OnlineExecutor, online_executor, start_params

pytestmark = pytest.mark.e2e
__all__ = ["online_executor"]  # the fixture, used by name

PING_INTERVAL = 1.0
PING_TIMEOUT = 2.0
# Detection is due within interval + timeout; the rest is slack for a loaded machine.
DETECTION_BOUND = PING_INTERVAL + PING_TIMEOUT + 4.0
STOPPED_FOR = 6.0
LINES = 300
PAUSE = 0.02
RETRYABLE = {"code": -32000, "data": {"retryable": True}}


def retryable(response: dict[str, Any]) -> bool:
    error = response.get("error") or {}
    return error.get("code") == RETRYABLE["code"] and error.get("data") == RETRYABLE["data"]


async def until_answered(client: RpcClient, process_id: str, timeout: float) -> None:
    """Until a request of this client is answered by the executor again (it reconnected)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = await client.call("process/read", {"processId": process_id, "afterSeq": 0, "maxBytes": 1}, 10)
        if "result" in reply:
            return
        assert retryable(reply), reply
        assert time.monotonic() < deadline, "the executor did not come back"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("silence", ["sigstop", "frozen-proxy"])
@pytest.mark.gateway_cluster(
    env={"CXG_WS_PING_INTERVAL": f"{PING_INTERVAL}s", "CXG_WS_PING_TIMEOUT": f"{PING_TIMEOUT}s"}
)
async def test_a_stopped_executor_is_detected_and_its_output_is_complete_after_it_resumes(
    online_executor: OnlineExecutor, silence: str
) -> None:
    executor = online_executor.server
    proxy = online_executor.proxy

    def go_silent() -> None:
        if silence == "sigstop":
            stop_process(executor.process.pid)
        else:
            proxy.freeze()

    def come_back() -> None:
        if silence == "sigstop":
            os.kill(executor.process.pid, signal.SIGCONT)
        else:
            proxy.thaw()

    before = presence_store().get(online_executor.exe_id)
    assert before is not None
    # One client on the executor's process, one on the other.
    clients = {"near": await online_executor.bridge(0), "far": await online_executor.bridge(1)}
    accounts = {name: OutputAccount(name) for name in clients}
    for name, client in clients.items():
        await client.initialize(f"silent-{name}")
        await client.call_result("process/start", ticker_params(name, LINES, PAUSE))
        await client.call_result("process/start", start_params(f"{name}-sleeper", ["/bin/sleep", "60"]))
    for name, client in clients.items():
        while not accounts[name].order:
            accounts[name].add(await client.next_notification("process/output", timeout=10))

    go_silent()
    stopped_at = time.monotonic()
    try:
        # In flight when it went silent: a long-poll the gateway holds, and a read forwarded to
        # the stopped executor, which will never answer it.
        pending = {}
        for name, client in clients.items():
            held = {"processId": f"{name}-sleeper", "afterSeq": 0, "waitMs": 30000}
            forwarded = {"processId": f"{name}-sleeper", "afterSeq": 0}
            pending[name, "held"] = asyncio.create_task(client.call("process/read", held, timeout=30))
            pending[name, "forwarded"] = asyncio.create_task(client.call("process/read", forwarded, timeout=30))
        answered_after: dict[tuple[str, str], float] = {}
        for key, task in pending.items():
            response = await task
            answered_after[key] = time.monotonic() - stopped_at
            assert retryable(response), (key, response)
        detection = max(answered_after.values())
        print(f"silent executor ({silence}): pending requests answered {answered_after} s after it went silent")
        assert detection < DETECTION_BOUND, (answered_after, online_executor.cluster.log())
        # New requests are refused the same way while it is away.
        for client in clients.values():
            reply = await client.call("process/start", start_params("late", ["/bin/true"]))
            assert retryable(reply), reply
        # Its lines kept coming into exec-server's pipes meanwhile (they are read after SIGCONT).
        await asyncio.sleep(max(0.0, STOPPED_FOR - (time.monotonic() - stopped_at)))
    finally:
        come_back()

    for name, client in clients.items():
        await until_answered(client, f"{name}-sleeper", timeout=30)
    after = presence_store().get(online_executor.exe_id)
    assert after is not None
    assert after.connection_id != before.connection_id, "the executor did not reconnect"
    for name, client in clients.items():
        await accounts[name].take(client, timeout=40)
        account = accounts[name]
        account.check()
        assert account.lost == [], account.summary()
        assert account.repeats == 0, account.summary()
        assert numbered_lines(account.output, name) == list(range(1, LINES + 1)), account.summary()
        assert account.exit_codes == [0]
        await client.call_result("process/terminate", {"processId": f"{name}-sleeper"})
        await client.close()
    assert await asyncio.to_thread(wait_for, executor.alive, 1)
