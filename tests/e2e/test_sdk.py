"""The SDK REST surface (/api/connectors/*) against real executors through a two-process gateway,
authenticated by a fake agentserver (a real HTTP server), with the byte relay behind a
round-robin balancer so its PUT and GET land on different gateway processes."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings

from tests.e2e.harness import GatewayCluster, TcpCutProxy, http_json, wait_for
from tests.e2e.test_relay import rss
from tests.fake_agentserver import FakeAgentserver, FakeResponse, RecordedRequest

pytestmark = pytest.mark.e2e

WORKSPACE = "ws-sdk"
OTHER_WORKSPACE = "ws-other"
TOKEN = "proxy-token-sdk"
OTHER_TOKEN = "proxy-token-other"
MiB = 1024 * 1024


@dataclass
class Sdk:
    cluster: GatewayCluster
    balancer: TcpCutProxy
    agentserver: FakeAgentserver

    def call(self, process: int, method: str, path: str, body: Any = None, token: str = TOKEN) -> tuple[int, Any]:
        url = f"{self.cluster[process].base_url}/api/connectors{path}"
        return http_json(method, url, body, headers={"Authorization": f"Bearer {token}"}, timeout=120)

    def tool(self, process: int, env: str, tool: str, **arguments: Any) -> dict[str, Any]:
        status, body = self.call(process, "POST", f"/envs/{env}/tool/call", {"tool": tool, "arguments": arguments})
        assert status == 200, body
        result: dict[str, Any] = body
        return result


@pytest.fixture
def sdk(start_gateway_cluster, tcp_proxies) -> Iterator[Sdk]:
    agentserver = FakeAgentserver(settings.CXG_AGENTSERVER_INTERNAL_SECRET)
    identities = {TOKEN: WORKSPACE, OTHER_TOKEN: OTHER_WORKSPACE}

    def validate(request: RecordedRequest) -> FakeResponse:
        workspace = identities.get(request.body.get("token"))
        if request.headers.get("x-internal-secret") != settings.CXG_AGENTSERVER_INTERNAL_SECRET or workspace is None:
            return FakeResponse(401, {"error": "invalid_token"})
        return FakeResponse(200, {"workspace_id": workspace, "user_id": "u-sdk"})

    agentserver.route("POST", "/internal/validate-proxy-token", validate)
    with agentserver:
        balancer = tcp_proxies("127.0.0.1", 1)  # retargeted once the gateways' ports are known
        cluster = start_gateway_cluster(
            2,
            env={
                "CXG_AGENTSERVER_INTERNAL_URL": agentserver.base_url,
                "CXG_PUBLIC_HTTPS_BASE_URL": balancer.url("http"),
            },
        )
        balancer.round_robin([("127.0.0.1", gateway.port) for gateway in cluster])
        yield Sdk(cluster, balancer, agentserver)


def text(result: dict[str, Any]) -> str:
    value: str = result["content"][0]["text"]
    return value


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_tools_sessions_and_files_through_the_sdk(sdk: Sdk, bound_executors, tmp_path):
    bound_executors(WORKSPACE, "box", process=0, cluster=sdk.cluster)

    status, body = sdk.call(1, "POST", "/envs/list")
    assert status == 200
    [env] = body["envs"]
    assert (env["name"], env["type"]) == ("box", "executor")
    assert {"shell", "exec_command", "read_file", "write_file", "apply_patch", "copy_path"} <= {
        tool["name"] for tool in env["tools"]
    }

    # shell, with its exit code (a non-zero exit is not an error)
    result = sdk.tool(1, "box", "shell", command=["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    assert result["isError"] is False
    assert result["structuredContent"]["stdout"] == "out\n"
    assert result["structuredContent"]["stderr"] == "err\n"
    assert result["structuredContent"]["exit_code"] == 3

    # exec_command on cat: stdin, output and terminate through the REST routes, on either process
    started = sdk.tool(1, "box", "exec_command", command=["/bin/cat"])
    assert started["isError"] is False, started
    session = started["structuredContent"]["session_id"]
    data = base64.b64encode(b"hello through the sdk\n").decode()
    status, written = sdk.call(0, "POST", f"/processes/{session}/stdin", {"data_b64": data})  # forwarded
    assert (status, written["ok"]) == (200, True)

    def echoed() -> bool:
        status, output = sdk.call(0, "GET", f"/processes/{session}/output?since=0")
        return status == 200 and b"".join(base64.b64decode(c["data_b64"]) for c in output["chunks"]) == (
            b"hello through the sdk\n"
        )

    assert wait_for(echoed, 20)
    status, bad = sdk.call(1, "POST", f"/processes/{session}/stdin", {"data_b64": "!!"})
    assert (status, bad["error"]["code"]) == (400, "bad_base64")
    status, foreign = sdk.call(0, "GET", f"/processes/{session}/output", token=OTHER_TOKEN)
    assert (status, foreign["error"]["code"]) == (403, "forbidden")
    status, missing = sdk.call(1, "GET", "/processes/no-such-session/output")
    assert (status, missing["error"]["code"]) == (404, "session_not_found")
    status, stopped = sdk.call(0, "POST", f"/processes/{session}/terminate")
    assert (status, stopped["running"]) == (200, True)

    def finished() -> bool:
        status, output = sdk.call(1, "GET", f"/processes/{session}/output?since=0")
        return status == 200 and output["session_alive"] is False

    assert wait_for(finished, 20)

    # write_file / read_file / apply_patch round trips
    target = tmp_path / "notes.txt"
    result = sdk.tool(0, "box", "write_file", path=str(target), content="alpha\nbeta\n")
    assert result["isError"] is False, result
    assert target.read_text() == "alpha\nbeta\n"
    assert text(sdk.tool(1, "box", "read_file", path=str(target))) == "alpha\nbeta\n"
    patch = f"*** Begin Patch\n*** Update File: {target}\n@@\n alpha\n-beta\n+gamma\n*** End Patch\n"
    result = sdk.tool(1, "box", "apply_patch", patch=patch)
    assert result["isError"] is False, result
    assert target.read_text() == "alpha\ngamma\n"

    # errors are results, not HTTP errors
    result = sdk.tool(0, "nowhere", "read_file", path=str(target))
    assert result["isError"] is True
    assert "list_environments" in text(result)
    status, unknown = sdk.call(0, "POST", "/envs/box/tool/call", {"tool": "rm_rf", "arguments": {}})
    assert (status, unknown["error"]["code"]) == (400, "unknown_tool")


def test_copy_path_of_50_mib_over_the_relay_with_bounded_gateway_memory(sdk: Sdk, bound_executors, tmp_path):
    bound_executors(WORKSPACE, "src", process=0, cluster=sdk.cluster)
    bound_executors(WORKSPACE, "dst", process=1, cluster=sdk.cluster)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(50 * MiB))
    destination = tmp_path / "copy" / "big.bin"
    destination.parent.mkdir()
    before = [rss(gateway.pid) for gateway in sdk.cluster]
    connections_before = sdk.balancer.connections_total
    started = time.monotonic()
    result = sdk.tool(
        1,
        "src",
        "copy_path",
        source_environment_id="src",
        source_path=str(source),
        destination_environment_id="dst",
        destination_path=str(destination),
        transport="http",
    )
    elapsed = time.monotonic() - started
    assert result["isError"] is False, result
    assert result["structuredContent"]["transport"] == "http"
    assert sha256(destination.read_bytes()) == sha256(source.read_bytes())
    # The PUT and the GET each came through the balancer, which alternates between the processes.
    assert sdk.balancer.connections_total - connections_before == 2
    growth = [rss(gateway.pid) - was for gateway, was in zip(sdk.cluster, before, strict=True)]
    assert max(growth) < 150 * MiB, growth
    assert elapsed < 120
