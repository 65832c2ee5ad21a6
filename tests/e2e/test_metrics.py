"""GET /metrics and JSON logs of real gateway processes, after real traffic: a real exec-server on
process 0, a bridge client on process 1 running processes through it."""

# ruff: noqa: ASYNC109 - helpers take a timeout like the harness client does

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from executors import captoken
from executors.tasks import prune_revoked_set
from tests.bridge.test_relay import RELAY_ENV, Curl, new_ticket, random_file
from tests.e2e.conftest import BoundExecutor
from tests.e2e.harness import GatewayCluster, GatewayProcess, RpcClient, http_request, wait_for

pytestmark = pytest.mark.e2e

TOKEN = "e2e-metrics-token"
WORKSPACE = "ws-metrics"
CLUSTER = pytest.mark.gateway_cluster(count=2, env={"CXG_METRICS_TOKEN": TOKEN, "CODEXGW_LOG_FORMAT": "json"})

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gateway: GatewayProcess) -> Series:
    status, body = http_request("GET", f"{gateway.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


async def bridge(cluster: GatewayCluster, process: int, exe_id: str) -> RpcClient:
    token = captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="trn_metrics", workspace_id=WORKSPACE, ttl=600)
    url = f"{cluster[process].ws_base_url}/bridge/{exe_id}"
    return await RpcClient.connect(url, {"Authorization": f"Bearer {token}"})


async def run(client: RpcClient, process_id: str, argv: list[str], timeout: float = 30.0) -> bytes:
    params = {"processId": process_id, "argv": argv, "cwd": "file:///tmp", "env": {"PATH": "/usr/bin:/bin"}}
    await client.call_result("process/start", {**params, "tty": False})
    output = b""
    while True:
        event = await client.next_notification(timeout=timeout)
        if event["method"] == "process/output":
            output += base64.b64decode(event["params"]["chunk"])
        if event["method"] == "process/closed":
            return output


async def eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    return await asyncio.to_thread(wait_for, check, timeout, 0.2)


@pytest.fixture
def executor(bound_executors) -> BoundExecutor:
    """A real exec-server online on gateway process 0."""
    online: BoundExecutor = bound_executors(WORKSPACE, "box", process=0)
    return online


@CLUSTER
async def test_metrics_count_real_traffic_and_need_the_token(gateway_cluster: GatewayCluster, executor: BoundExecutor):
    executor_side, bridge_side = gateway_cluster[0], gateway_cluster[1]

    async with await bridge(gateway_cluster, 1, executor.exe_id) as client:
        await client.initialize("metrics")
        assert await run(client, "echo", ["/bin/echo", "hello"]) == b"hello\n"
        script = "for i in $(seq 1 200); do echo line-$i; done"
        assert (await run(client, "long", ["/bin/sh", "-c", script])).count(b"\n") == 200

        # A long-poll the gateway holds shows as a pending request where the multiplexer lives.
        await client.call_result(
            "process/start",
            {"processId": "sleeper", "argv": ["/bin/sleep", "30"], "cwd": "file:///tmp", "tty": False, "env": {}},
        )
        held = asyncio.ensure_future(
            client.call("process/read", {"processId": "sleeper", "afterSeq": 0, "waitMs": 20000}, timeout=30)
        )
        assert await eventually(lambda: value(scrape(executor_side), "codexgw_mux_pending_requests") >= 1)
        open_bridge = await asyncio.to_thread(scrape, bridge_side)
        assert value(open_bridge, "codexgw_ws_connections", role="bridge") == 1
        assert (await client.call_result("process/terminate", {"processId": "sleeper"}))["running"] is True
        await held

    # Once the bridge is gone its gauge drops back; the counters keep what went through.
    assert await eventually(lambda: value(scrape(bridge_side), "codexgw_ws_connections", role="bridge") == 0)
    after = await asyncio.to_thread(scrape, bridge_side)
    assert value(after, "codexgw_ws_connections_opened_total", role="bridge") >= 1
    for direction in ("in", "out"):
        assert value(after, "codexgw_ws_frames_total", role="bridge", direction=direction) >= 5
        assert value(after, "codexgw_ws_bytes_total", role="bridge", direction=direction) > 0
    # 200 output lines went out to the client (base64 in process/output notifications).
    assert value(after, "codexgw_ws_bytes_total", role="bridge", direction="out") > 2000
    # The bridge's frames crossed the channel layer to process 0 and back.
    assert value(after, "codexgw_channel_layer_send_seconds_count") > 0

    executor_metrics = await asyncio.to_thread(scrape, executor_side)
    assert value(executor_metrics, "codexgw_ws_connections", role="executor") == 1
    assert value(executor_metrics, "codexgw_ws_connections_opened_total", role="executor") >= 1
    for direction in ("in", "out"):
        assert value(executor_metrics, "codexgw_ws_frames_total", role="executor", direction=direction) >= 5
        assert value(executor_metrics, "codexgw_ws_bytes_total", role="executor", direction=direction) > 0
    assert value(executor_metrics, "codexgw_channel_layer_send_seconds_count") > 0
    assert value(executor_metrics, "codexgw_mux_sessions") == 1
    assert value(executor_metrics, "codexgw_mux_pending_requests") == 0
    assert value(executor_metrics, "codexgw_ws_connections", role="bridge") == 0  # the bridge was on process 1

    # Celery outcomes are fleet-wide (Redis): a task run anywhere shows on every process.
    assert await asyncio.to_thread(lambda: prune_revoked_set.apply().get()) == 0
    task = {"task": "executors.tasks.prune_revoked_set", "outcome": "succeeded"}
    assert [value(scrape(gateway), "codexgw_celery_tasks_total", **task) for gateway in gateway_cluster] == [1, 1]

    # Not reachable without the token.
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, body = await asyncio.to_thread(http_request, "GET", f"{bridge_side.base_url}/metrics", headers=headers)
        assert status == 401
        assert json.loads(body) == {"error": "unauthorized"}


def json_lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    lines = []
    for line in gateway.output:
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@CLUSTER
def test_json_logs_carry_each_connections_ids(gateway_cluster: GatewayCluster, bound_executors):
    first = bound_executors(WORKSPACE, "first", process=0)
    second = bound_executors(WORKSPACE, "second", process=0)
    gateway = gateway_cluster[0]

    def lines(message: str) -> dict[str, dict[str, Any]]:
        return {line["exe_id"]: line for line in json_lines(gateway) if line["msg"] == message}

    # Presence (what bound_executors waits for) is claimed just before the accept is logged.
    assert wait_for(lambda: set(lines("executor connected")) == {first.exe_id, second.exe_id}, 10), gateway.log()
    connected = lines("executor connected")
    assert connected[first.exe_id]["connection_id"] != connected[second.exe_id]["connection_id"]

    first.server.stop()
    second.server.stop()
    assert wait_for(lambda: len(lines("executor disconnected")) == 2, 15), gateway.log()
    # The disconnect line names only exe_id itself: connection_id comes from the connection's context.
    for exe_id, line in lines("executor disconnected").items():
        assert line["connection_id"] == connected[exe_id]["connection_id"]
        assert line["level"] == "info"
        assert line["logger"] == "bridge.consumers"


def test_relay_bytes_are_counted_where_each_side_is_served(start_gateway_cluster, tmp_path):
    cluster = start_gateway_cluster(2, env={**RELAY_ENV, "CXG_METRICS_TOKEN": TOKEN})
    source = random_file(tmp_path / "src", 300 * 1024 + 7)
    ticket = new_ticket()
    put = Curl.put(f"{cluster[0].base_url}/relay/{ticket}", ticket, source)
    get = Curl.get(f"{cluster[1].base_url}/relay/{ticket}", ticket, tmp_path / "dst")
    assert (get.result().status, put.result().status) == (200, 200)
    assert (tmp_path / "dst").read_bytes() == source.read_bytes()
    size = source.stat().st_size
    uploaded, downloaded = scrape(cluster[0]), scrape(cluster[1])
    assert value(uploaded, "codexgw_relay_bytes_total", direction="upload") == size
    assert value(uploaded, "codexgw_relay_bytes_total", direction="download") == 0
    assert value(downloaded, "codexgw_relay_bytes_total", direction="download") == size
