"""Fault: the Redis the gateway cluster uses is killed and started again (empty) mid-stream.

Two real gateway processes on their own private ``redis-server`` (never the machine's), the real
exec-server connected to process 0, a bridge client on process 1 streaming numbered lines. Redis
is SIGKILLed and restarted on its port while the lines flow: presence, the virtual-session table,
the exec-server session id and every channel-layer message in it are gone. The gateway processes
are not restarted. The client must get every line exactly once (resuming its session if its
connection was closed) or be told exactly which seqs are lost; new bridges work afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.conf import settings

from codexgw import redis as gwredis
from executors import captoken, services
from executors.presence import presence_store
from tests.e2e.conftest import ExecServers
from tests.e2e.faults import OutputAccount, RedisServer, numbered_lines, ticker_params
from tests.e2e.harness import (
    ExecServer,
    ExecutorCredentials,
    GatewayCluster,
    RpcClient,
    resume_session,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.e2e

WORKSPACE = "ws-redis-restart"
LINES = 400
PAUSE = 0.01
# Presence is refreshed every third of its TTL: a short TTL makes a lost entry come back soon.
GATEWAY_ENV = {"CXG_PRESENCE_TTL": "6s", "CODEXGW_LOG_FORMAT": "text"}


@pytest.fixture
def private_redis(tmp_path: Path, settings: Any) -> Iterator[RedisServer]:
    """A private redis-server for this test, used by the test process and its gateways."""
    server = RedisServer.start(tmp_path / "redis")
    settings.REDIS_URL = server.url
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Fleet:
    cluster: GatewayCluster
    exe_id: str
    server: ExecServer


@pytest.fixture
def gateway_env() -> dict[str, str]:
    return GATEWAY_ENV


@pytest.fixture
async def fleet(
    gateway_env: dict[str, str],
    private_redis: RedisServer,
    start_gateway_cluster: Callable[..., GatewayCluster],
    make_executor_credentials: Callable[..., ExecutorCredentials],
    exec_servers: ExecServers,
) -> Fleet:
    """Two gateway processes on the private Redis, the real exec-server online on process 0."""
    cluster = await asyncio.to_thread(start_gateway_cluster, 2, gateway_env)
    credentials = await database_sync_to_async(make_executor_credentials)()
    exe_id = credentials.exe_id
    await database_sync_to_async(services.bind_executor)(WORKSPACE, exe_id, "box", "redis restart", True)
    server = exec_servers.remote(cluster[0].base_url, credentials)
    assert await asyncio.to_thread(wait_for, lambda: presence_store().get(exe_id) is not None, 20), server.log()
    return Fleet(cluster, exe_id, server)


def bearer() -> dict[str, str]:
    token = captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="trn_redis", workspace_id=WORKSPACE, ttl=600)
    return {"Authorization": f"Bearer {token}"}


async def test_redis_restarted_mid_stream_loses_no_output_silently(private_redis: RedisServer, fleet: Fleet) -> None:
    cluster, exe_id, server = fleet.cluster, fleet.exe_id, fleet.server

    url = f"{cluster[1].ws_base_url}/bridge/{exe_id}"
    client = await RpcClient.connect(url, bearer())
    session_id = (await client.initialize("redis-restart"))["sessionId"]
    await client.call_result("process/start", ticker_params("tick", LINES, PAUSE))
    account = OutputAccount("tick")
    while not account.order:
        account.add(await client.next_notification("process/output", timeout=10))

    private_redis.kill()
    killed_at = time.monotonic()
    await asyncio.sleep(1.0)  # lines keep coming while Redis is away
    private_redis.launch()
    back_at = time.monotonic()

    connections = 1
    deadline = time.monotonic() + 45
    while not account.closed:
        assert time.monotonic() < deadline, f"not closed: {account.summary()}\n{cluster.log()}"
        await account.take(client, timeout=max(0.1, deadline - time.monotonic()))
        if account.closed:
            break
        await client.close()
        client = await resume_session(url, bearer(), session_id, timeout=max(1.0, deadline - time.monotonic()))
        connections += 1
    await client.close()
    print(f"redis away {back_at - killed_at:.2f}s; {connections} connection(s); {account.summary()}")
    account.check()
    lost = account.lost_seqs()
    numbers = numbered_lines(account.output, "tick")
    assert len(numbers) == len(set(numbers)), "a line came twice"
    if not lost:
        assert numbers == list(range(1, LINES + 1))

    # What the restart lost is back: presence, the virtual-session table (with this session) and
    # the exec-server session id, written again by the processes that hold them.
    redis = gwredis.sync_client()
    assert redis is not None
    assert await asyncio.to_thread(wait_for, lambda: presence_store().get(exe_id) is not None, 10)
    table = redis.hgetall(gwredis.key("vsessions", exe_id))
    assert f"vs:{session_id}" in table, table
    assert redis.get(gwredis.key("execsession", exe_id)) is not None

    # Afterwards: a new bridge on either process runs a process to the end.
    for index in (0, 1):
        async with await RpcClient.connect(f"{cluster[index].ws_base_url}/bridge/{exe_id}", bearer()) as fresh:
            await fresh.initialize(f"after-{index}")
            await fresh.call_result("process/start", ticker_params(f"after{index}", 3, 0))
            after = OutputAccount(f"after{index}")
            await after.take(fresh, timeout=20)
            after.check()
            assert numbered_lines(after.output, f"after{index}") == [1, 2, 3]
    assert server.alive()
    assert all(gateway.alive() for gateway in cluster)


@pytest.mark.parametrize("gateway_env", [{**GATEWAY_ENV, "CODEXGW_LAYER_DIRECT": "false"}])
async def test_frames_inside_redis_when_it_restarts_are_not_lost_silently(
    private_redis: RedisServer, fleet: Fleet
) -> None:
    """The bridge's process is stopped (SIGSTOP) so frames for it pile up inside Redis (the
    channel layer's direct path is off: everything goes through Redis); Redis is killed with them
    and restarted; the process resumes. Those frames are gone (the session counted them
    delivered): the bridge's process sees seqs skipped and tells the client exactly which
    (gateway/outputLost, bridge/outbox.py), never a silent gap."""
    cluster = fleet.cluster
    account = await _stop_the_bridge_process_across_a_restart(private_redis, fleet)
    print(f"frames inside Redis: {account.summary()}")
    account.check()  # no silent gap: every seq delivered or told lost
    assert account.lost, f"nothing was inside Redis when it died: this run tested nothing ({account.summary()})"
    assert account.repeats == 0
    numbers = numbered_lines(account.output, "tick")
    assert len(numbers) == len(set(numbers)), "a line came twice"
    assert numbers == sorted(numbers)
    assert numbers[-1] == LINES
    assert "output_lost_in_transit" in cluster[1].log()


async def test_frames_for_a_stopped_process_wait_on_the_direct_path_and_none_is_lost(
    private_redis: RedisServer, fleet: Fleet
) -> None:
    """The same with the direct path on (the default): the frames for the stopped process wait
    on its connection, not inside Redis, so the restart loses none of them."""
    account = await _stop_the_bridge_process_across_a_restart(private_redis, fleet)
    print(f"frames on the direct path: {account.summary()}")
    account.check()
    assert account.lost == []
    assert account.repeats == 0
    assert numbered_lines(account.output, "tick") == list(range(1, LINES + 1))


async def _stop_the_bridge_process_across_a_restart(private_redis: RedisServer, fleet: Fleet) -> OutputAccount:
    cluster = fleet.cluster
    url = f"{cluster[1].ws_base_url}/bridge/{fleet.exe_id}"
    client = await RpcClient.connect(url, bearer())
    await client.initialize("in-redis")
    await client.call_result("process/start", ticker_params("tick", LINES, PAUSE))
    account = OutputAccount("tick")
    while not account.order:
        account.add(await client.next_notification("process/output", timeout=10))
    stop_process(cluster[1].pid)
    try:
        await asyncio.sleep(1.0)  # ~100 lines are sent to the stopped process meanwhile
        private_redis.kill()
        private_redis.launch()
    finally:
        os.kill(cluster[1].pid, signal.SIGCONT)
    await account.take(client, timeout=40)
    await client.close()
    return account
