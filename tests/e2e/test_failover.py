"""Failover: three gateway processes behind haproxy, the real exec-server connected through it.
The process holding the executor is SIGKILLed; the executor reconnects through the balancer to
another process, which takes over presence, resumes the exec-server session and the virtual
sessions (their table lives in Redis), and bridges that reconnect and resume lose no output."""

# ruff: noqa: ASYNC109 - helpers take a timeout like the harness client does

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings

from executors import captoken, services
from executors.presence import presence_store
from tests.e2e.faults import ticker_params
from tests.e2e.harness import (
    Balancer,
    ExecutorCredentials,
    GatewayCluster,
    RpcClient,
    RpcConnectionClosed,
    async_wait_for,
    resume_session,
    wait_for,
)

pytestmark = pytest.mark.e2e

WORKSPACE = "ws-failover"
TICKS = 400


def token() -> str:
    return captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="trn_failover", workspace_id=WORKSPACE, ttl=600)


async def holder_index(cluster: GatewayCluster, exe_id: str, connection_id: str) -> int:
    """Which process logged accepting the executor connection that presence names (presence is
    claimed before the connection is accepted and logged, so the line may still be coming)."""

    def logged_by() -> int | None:
        for index, gateway in enumerate(cluster):
            if any(exe_id in line and connection_id in line for line in gateway.log().splitlines()):
                return index
        return None

    if not await async_wait_for(lambda: logged_by() is not None, 10):
        raise AssertionError(f"no process logged connection {connection_id}\n{cluster.log()}")
    index = logged_by()
    assert index is not None
    return index


def ticker(process_id: str) -> dict[str, Any]:
    return ticker_params(process_id, TICKS, 0.01)


class Collector:
    """A process's events as one client sees them across connections, keyed by ``seq``: a
    repeat must be identical (at-least-once across a crash), a gap is a loss."""

    def __init__(self, process_id: str) -> None:
        self.process_id = process_id
        self.events: dict[int, dict[str, Any]] = {}
        self.repeats = 0

    def add(self, event: dict[str, Any]) -> None:
        params = event["params"]
        assert params["processId"] == self.process_id, event
        seq = params["seq"]
        if seq in self.events:
            assert self.events[seq] == event, f"seq {seq} came back different"
            self.repeats += 1
        self.events[seq] = event

    @property
    def closed(self) -> bool:
        return any(e["method"] == "process/closed" for e in self.events.values())

    async def drain(self, client: RpcClient, timeout: float) -> None:
        """Take events until the process is closed or the connection ends."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            try:
                self.add(await client.next_notification(timeout=max(0.1, deadline - time.monotonic())))
            except RpcConnectionClosed:
                return

    def assert_complete(self) -> None:
        seqs = sorted(self.events)
        assert seqs == list(range(1, len(seqs) + 1)), f"events lost: {seqs}"
        text = b"".join(
            base64.b64decode(self.events[s]["params"]["chunk"])
            for s in seqs
            if self.events[s]["method"] == "process/output"
        )
        assert text.decode().splitlines() == [f"{self.process_id}-{i}" for i in range(1, TICKS + 1)]
        exits = [e for e in self.events.values() if e["method"] == "process/exited"]
        assert [e["params"]["exitCode"] for e in exits] == [0]


@pytest.mark.gateway_cluster(count=3, env={"CODEXGW_LOG_FORMAT": "json"})
async def test_killing_the_executors_process_moves_it_and_every_session_without_losing_output(
    gateway_cluster: GatewayCluster,
    balancer: Callable[..., Balancer],
    make_executor_credentials: Callable[..., ExecutorCredentials],
    exec_servers: Any,
) -> None:
    credentials = await database_sync_to_async(make_executor_credentials)()
    exe_id = credentials.exe_id
    await database_sync_to_async(services.bind_executor)(WORKSPACE, exe_id, "box", "failover executor", True)
    lb = balancer(gateway_cluster)
    server = exec_servers.remote(lb.base_url, credentials)
    assert await database_sync_to_async(wait_for)(lambda: presence_store().get(exe_id) is not None, 20), (
        f"executor did not come online\n{server.log()}\n{gateway_cluster.log()}"
    )
    first_holder = presence_store().get(exe_id)
    assert first_holder is not None
    doomed = await holder_index(gateway_cluster, exe_id, first_holder.connection_id)
    survivor = (doomed + 1) % 3
    headers = {"Authorization": f"Bearer {token()}"}

    # One bridge on a process that survives (its session lives on the doomed one), one on the
    # doomed process itself.
    clients = {
        "far": await RpcClient.connect(f"{gateway_cluster[survivor].ws_base_url}/bridge/{exe_id}", headers),
        "near": await RpcClient.connect(f"{gateway_cluster[doomed].ws_base_url}/bridge/{exe_id}", headers),
    }
    sessions = {name: (await client.initialize(name))["sessionId"] for name, client in clients.items()}
    collectors = {name: Collector(name) for name in clients}
    for name, client in clients.items():
        await client.call_result("process/start", ticker(name))
    for name, client in clients.items():
        collectors[name].add(await client.next_notification("process/output", timeout=10))

    gateway_cluster[doomed].kill()  # no goodbye to Redis, the executor or any bridge

    far_closed = clients["far"]
    await collectors["far"].drain(far_closed, timeout=30)
    assert far_closed.closed, "the bridge on the surviving process was not told the executor moved"
    assert far_closed.close_code == 4002, (far_closed.close_code, far_closed.close_reason)
    await collectors["near"].drain(clients["near"], timeout=5)
    assert clients["near"].closed

    for name in clients:
        again = await resume_session(
            f"{lb.ws_base_url}/bridge/{exe_id}", {"Authorization": f"Bearer {token()}"}, sessions[name], name="failover"
        )
        async with again:
            await collectors[name].drain(again, timeout=60)
        collectors[name].assert_complete()

    holder = presence_store().get(exe_id)
    assert holder is not None
    assert holder.connection_id != first_holder.connection_id
    assert await holder_index(gateway_cluster, exe_id, holder.connection_id) != doomed
    assert any("took over the executor's virtual sessions" in g.log() for g in gateway_cluster.alive())
    assert server.alive(), "the exec-server exited instead of reconnecting"
