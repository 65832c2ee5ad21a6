"""SIGTERM drains a gateway process (codexgw/drain.py): three real gateway processes behind
haproxy, the real exec-server dialling through it, bridges with requests in flight."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from websockets.exceptions import InvalidStatus

from bridge import relay
from bridge.relay_client import RelayTicket
from codexgw import redis as gwredis
from executors import captoken, services
from executors.presence import Holder, presence_store
from tests.appgateway.fake_model import FakeModel
from tests.e2e.conftest import ExecServers
from tests.e2e.faults import OutputAccount, numbered_lines, ticker_params
from tests.e2e.harness import (
    Balancer,
    ExecServer,
    ExecutorCredentials,
    GatewayCluster,
    RpcClient,
    app_gateway_env,
    http_json,
    http_request,
    mint_relay_ticket,
    wait_for,
)
from tests.e2e.test_bridge import run_to_close, start_params
from tests.e2e.test_tui_proxy import tui
from tests.fake_agentserver import FakeAgentserver

pytestmark = pytest.mark.e2e

WORKSPACE = "ws-drain"
DRAIN_TIMEOUT = 10.0
# Long enough to look at the draining process before its connections are handed over.
READINESS_DELAY = 2.0
DRAIN_ENV = {
    "CODEXGW_DRAIN_TIMEOUT": f"{DRAIN_TIMEOUT}s",
    "CODEXGW_DRAIN_READINESS_DELAY": f"{READINESS_DELAY}s",
}
# Bound of the whole stop: the drain, then up to codexgw.server.STOP_GRACE to stop.
EXIT_BOUND = DRAIN_TIMEOUT + 3.0
CONNECTED = "executor connected"
TICKS = 600


@dataclass
class Fleet:
    cluster: GatewayCluster
    balancer: Balancer
    credentials: ExecutorCredentials
    executor: ExecServer

    @property
    def exe_id(self) -> str:
        return self.credentials.exe_id

    def holder(self) -> Holder | None:
        return presence_store().get(self.exe_id)

    def connected_in(self) -> list[int]:
        """The processes whose log shows the executor connecting (there is one executor)."""
        return [index for index, gateway in enumerate(self.cluster) if CONNECTED in gateway.log()]

    def token(self) -> str:
        return captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="trn_drain", workspace_id=WORKSPACE, ttl=600)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    async def bridge(self, ws_base_url: str) -> RpcClient:
        return await RpcClient.connect(f"{ws_base_url}/bridge/{self.exe_id}", self.headers())


@pytest.fixture
def fleet(
    gateway_cluster: GatewayCluster,
    balancer: Callable[..., Balancer],
    make_executor_credentials: Callable[..., ExecutorCredentials],
    exec_servers: ExecServers,
) -> Fleet:
    """The executor online through the balancer, on exactly one of the three processes."""
    lb = balancer(gateway_cluster)
    lb.wait_for_states({f"g{index}": "UP" for index in range(len(gateway_cluster))})
    credentials = make_executor_credentials()
    services.bind_executor(WORKSPACE, credentials.exe_id, "box", "the drained executor", True)
    server = exec_servers.remote(lb.base_url, credentials)
    fleet = Fleet(gateway_cluster, lb, credentials, server)
    assert wait_for(lambda: fleet.holder() is not None and len(fleet.connected_in()) == 1, 20), (
        f"executor did not come online\n{server.log()}\n{gateway_cluster.log()}\n{lb.log()}"
    )
    return fleet


def answered(response: dict[str, Any]) -> bool:
    """A result, or the retryable error a client retries on."""
    if "result" in response:
        return True
    error = response.get("error") or {}
    return error.get("code") == -32000 and (error.get("data") or {}).get("retryable") is True


@pytest.mark.gateway_cluster(count=3, env=DRAIN_ENV)
async def test_sigterm_hands_the_executor_to_another_process_and_answers_every_request(fleet: Fleet, tmp_path: Path):
    (draining,) = fleet.connected_in()
    gateway = fleet.cluster[draining]
    other = fleet.cluster[(draining + 1) % 3]
    before = fleet.holder()
    assert before is not None
    (tmp_path / "note.txt").write_bytes(b"still here\n")

    # Bridges on the draining process and on another one, each with requests in flight.
    bridges = {"local": await fleet.bridge(gateway.ws_base_url), "remote": await fleet.bridge(other.ws_base_url)}
    pending: list[tuple[str, str, asyncio.Task[dict[str, Any]]]] = []
    sessions: dict[str, str] = {}
    accounts = {name: OutputAccount(f"tick-{name}") for name in bridges}
    for name, client in bridges.items():
        sessions[name] = (await client.initialize(f"drain-{name}"))["sessionId"]
        await client.call_result("process/start", start_params(f"sleeper-{name}", ["/bin/sleep", "60"]))
        # Output streaming across the drain: it must continue exactly once after the resume.
        await client.call_result("process/start", ticker_params(f"tick-{name}", TICKS, 0.01))
        requests: list[tuple[str, dict[str, Any]]] = [
            ("process/read", {"processId": f"sleeper-{name}", "afterSeq": 0, "waitMs": 30000}),
            ("fs/readFile", {"path": (tmp_path / "note.txt").as_uri()}),
            ("process/read", {"processId": f"sleeper-{name}", "afterSeq": 0, "waitMs": 30000}),
        ]
        for method, params in requests:
            pending.append((name, method, asyncio.create_task(client.call(method, params, timeout=EXIT_BOUND + 10))))
    await asyncio.sleep(0.5)  # the long-polls are held by the gateway now
    assert not any(task.done() for name, method, task in pending if method == "process/read")
    for name, client in bridges.items():
        while not accounts[name].order:
            accounts[name].add(await client.next_notification("process/output", timeout=10))

    os.kill(gateway.pid, signal.SIGTERM)

    # Readiness fails at once, and new WebSockets are refused with a status the client retries on.
    def readiness() -> tuple[int, Any]:
        return http_json("GET", gateway.base_url + "/readyz", timeout=5)

    assert await asyncio.to_thread(wait_for, lambda: readiness()[0] == 503, 5), gateway.log()
    assert readiness()[1] == {"ready": False, "status": "draining"}
    with pytest.raises(InvalidStatus) as refused:
        await fleet.bridge(gateway.ws_base_url)
    assert refused.value.response.status_code == 503
    assert refused.value.response.headers["Retry-After"] == "1"

    # Every request sent got an answer: its result, or an error the client retries on.
    for name, method, task in pending:
        response = await task
        assert answered(response), (name, method, response)
    # The bridges were told to reconnect (a service restart), on both processes.
    for name, client in bridges.items():
        assert await client.wait_closed(EXIT_BOUND) == 1012, (name, client.close_code, client.close_reason)
        for event in client.drain_notifications():
            accounts[name].add(event)
        assert not accounts[name].closed, "the ticker ended before the drain: it tests nothing"

    # The process exits cleanly within the bound.
    assert await asyncio.to_thread(gateway.process.wait, EXIT_BOUND + 5) == 0, gateway.log()
    assert "drain finished" in gateway.log()

    # The executor reconnected, through the balancer, to another process.
    def moved() -> bool:
        holder = fleet.holder()
        now_on = [index for index in fleet.connected_in() if index != draining]
        return holder is not None and holder.connection_id != before.connection_id and len(now_on) == 1

    assert await asyncio.to_thread(wait_for, moved, 10), f"{fleet.executor.log()}\n{fleet.cluster.log()}"
    assert draining in fleet.connected_in()
    assert fleet.executor.alive()
    assert fleet.balancer.states()[f"g{draining}"].startswith("DOWN")

    # A new bridge through the balancer works against the executor.
    async with await fleet.bridge(fleet.balancer.ws_base_url) as client:
        await client.initialize("after-drain")
        await client.call_result("process/start", start_params("echo", ["/bin/echo", "hello"]))
        output, _ = await run_to_close(client, "echo")
        assert output == b"hello\n"
    # Each bridge's virtual session resumes through the balancer, its process still running.
    for name, session_id in sessions.items():
        async with await fleet.bridge(fleet.balancer.ws_base_url) as client:
            resumed = await client.initialize(f"drain-{name}-again", resume_session_id=session_id)
            assert resumed["sessionId"] == session_id
            read = await client.call_result("process/read", {"processId": f"sleeper-{name}", "afterSeq": 0})
            assert read["closed"] is False, read
            await client.call_result("process/terminate", {"processId": f"sleeper-{name}"})
            # The ticker's lines, before and after the drain: each exactly once, in order.
            account = accounts[name]
            await account.take(client, timeout=30)
            account.check()
            assert account.lost == [], account.summary()
            assert account.repeats == 0, account.summary()  # a drain repeats nothing
            assert numbered_lines(account.output, f"tick-{name}") == list(range(1, TICKS + 1)), account.summary()
    for client in bridges.values():
        await client.close()


def test_a_step_that_outlasts_the_bound_is_cut_off_and_the_process_exits(
    start_gateway_cluster: Callable[..., GatewayCluster],
):
    # The readiness step alone would take a minute; the drain is bounded to one second.
    (gateway,) = start_gateway_cluster(1, {"CODEXGW_DRAIN_TIMEOUT": "1s", "CODEXGW_DRAIN_READINESS_DELAY": "60s"})
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(1 + 3 + 5) == 0, gateway.log()
    assert "drain step readiness: timed out" in gateway.log()
    # Time kept back for the later steps (the app gateway's reserve): they still ran.
    assert "drain step executors: done" in gateway.log()
    assert "drain step app-gateway: done" in gateway.log()


def test_a_second_signal_exits_at_once(start_gateway_cluster: Callable[..., GatewayCluster]):
    (gateway,) = start_gateway_cluster(1, {"CODEXGW_DRAIN_TIMEOUT": "60s", "CODEXGW_DRAIN_READINESS_DELAY": "60s"})
    gateway.process.send_signal(signal.SIGTERM)
    assert wait_for(lambda: http_json("GET", gateway.base_url + "/readyz")[0] == 503, 5), gateway.log()
    gateway.process.send_signal(signal.SIGINT)
    assert gateway.process.wait(10) == 128 + signal.SIGINT, gateway.log()
    assert "SIGINT during the drain: exiting now" in gateway.log()


# --- in-flight relays -------------------------------------------------------------------------

MiB = 1024 * 1024
RELAY_BASE = "https://gw.example.test"
RELAY_DRAIN = 5.0
RELAY_ENV = {
    "CXG_PUBLIC_HTTPS_BASE_URL": RELAY_BASE,
    "CODEXGW_ROLES": "exec",
    "CODEXGW_DRAIN_TIMEOUT": f"{RELAY_DRAIN}s",
}


def mint_ticket(cluster: GatewayCluster) -> RelayTicket:
    return mint_relay_ticket(cluster[1].base_url, WORKSPACE, "user-drain")


class Transfer:
    """A relay whose PUT goes to gateway 0 over a raw socket (so it can stall mid-body) and
    whose GET is ``curl`` on gateway 1."""

    def __init__(self, cluster: GatewayCluster, dest: Path, size: int) -> None:
        self.ticket = mint_ticket(cluster)
        self.path = self.ticket.upload_url.removeprefix(RELAY_BASE)
        self.body = os.urandom(size)
        self.dest = dest
        bearer = f"Authorization: Bearer {self.ticket.ticket}"
        self.get = subprocess.Popen(
            ["curl", "-sS", "-H", bearer, "-o", str(dest), cluster[1].base_url + self.path], stderr=subprocess.PIPE
        )
        host, port = cluster[0].host_port.rsplit(":", 1)
        self.upload = socket.create_connection((host, int(port)), timeout=15)
        head = f"PUT {self.path} HTTP/1.1\r\nHost: x\r\n{bearer}\r\nContent-Length: {size}\r\n\r\n"
        self.upload.sendall(head.encode() + self.body[: size // 2])

    def streaming(self) -> bool:
        return self.dest.exists() and self.dest.stat().st_size > 0

    def finish_upload(self) -> bytes:
        """Send the rest of the body; the gateway's whole answer."""
        self.upload.sendall(self.body[len(self.body) // 2 :])
        return self.answer()

    def answer(self) -> bytes:
        """What the gateway sent on the PUT connection until it closed or answered."""
        received = b""
        try:
            while chunk := self.upload.recv(65536):
                received += chunk
                head, _, body = received.partition(b"\r\n\r\n")
                length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                if length and len(body) >= int(length[0].split(b":")[1]):
                    break
        except ConnectionResetError:
            pass
        return received

    def close(self) -> None:
        self.upload.close()
        self.get.kill()
        self.get.wait()


@pytest.mark.gateway_cluster(count=2, env=RELAY_ENV)
def test_in_flight_relays_may_finish_and_the_rest_fail_on_both_sides(gateway_cluster: GatewayCluster, tmp_path: Path):
    gateway = gateway_cluster[0]
    finishing = Transfer(gateway_cluster, tmp_path / "finishing", 8 * MiB)
    stalled = Transfer(gateway_cluster, tmp_path / "stalled", 8 * MiB)
    try:
        assert wait_for(lambda: finishing.streaming() and stalled.streaming(), 10), gateway_cluster.log()
        gateway.process.send_signal(signal.SIGTERM)
        assert wait_for(lambda: http_json("GET", gateway.base_url + "/readyz")[0] == 503, 5), gateway.log()

        # A new transfer is refused: the client retries elsewhere.
        fresh = mint_ticket(gateway_cluster)
        status, _ = http_request(
            "GET",
            gateway.base_url + fresh.upload_url.removeprefix(RELAY_BASE),
            headers={"Authorization": f"Bearer {fresh.ticket}"},
        )
        assert status == 503

        # One in flight completes during the drain, byte for byte.
        answer = finishing.finish_upload()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert answer.endswith(b'{"bytes":%d,"status":"ok"}' % len(finishing.body)), answer
        assert finishing.get.wait(10) == 0
        assert hashlib.sha256(finishing.dest.read_bytes()).digest() == hashlib.sha256(finishing.body).digest()

        # The other is still stalled at the drain's deadline: both of its sides fail, neither
        # sees a short body that looks complete.
        assert stalled.get.wait(RELAY_DRAIN + 10) in (18, 56), stalled.get.stderr.read() if stalled.get.stderr else b""
        assert stalled.dest.stat().st_size < len(stalled.body)
        assert not stalled.answer().startswith(b"HTTP/1.1 200")
        client = gwredis.sync_client()
        assert client is not None
        state = client.hmget(gwredis.key("relay", "t", stalled.ticket.ticket), ["state", "outcome", "reason"])
        assert state == ["done", "upload_failed", relay.CANCELLED]

        assert gateway.process.wait(RELAY_DRAIN + 5) == 0, gateway.log()
        assert "aborted 1 relay transfers" in gateway.log()
    finally:
        finishing.close()
        stalled.close()


# --- the app gateway ------------------------------------------------------------------------------

TUI_WORKSPACE = "ws-drain-tui"
TUI_TOKEN = "ast_drain_e2e"


@pytest.fixture
def app_cluster(
    start_gateway_cluster: Callable[..., GatewayCluster], tmp_path: Path, codex_bin: Path
) -> Iterator[GatewayCluster]:
    with FakeModel(default_text="hello") as model, FakeAgentserver(settings.CXG_AGENTSERVER_INTERNAL_SECRET) as agent:
        agent.add_token(TUI_TOKEN, user_id="user-drain", workspace_id=TUI_WORKSPACE)
        env = app_gateway_env(tmp_path, codex_bin, model.model, model.base_url, agent.base_url)
        cluster = start_gateway_cluster(2, {**env, "CODEXGW_DRAIN_TIMEOUT": "20s"})
        yield cluster
        cluster.stop()


def app_server_lease() -> dict[str, Any] | None:
    client = gwredis.sync_client()
    assert client is not None
    raw = client.get(gwredis.key("appserver", TUI_WORKSPACE))
    return json.loads(str(raw)) if raw else None


async def test_sigterm_closes_tuis_with_1012_and_stops_the_app_server_persisting_it(
    app_cluster: GatewayCluster, tmp_path: Path
):
    owner, other = app_cluster[0], app_cluster[1]
    local = await tui(owner, token=TUI_TOKEN)  # spawns the app-server in the owner
    relayed = await tui(other, token=TUI_TOKEN)  # relayed over Redis to the owner
    try:
        held = app_server_lease()
        assert held is not None
        assert int(held["process_id"].split(":")[1]) == owner.pid

        owner.process.send_signal(signal.SIGTERM)

        for client in (local, relayed):
            assert await client.wait_closed(20) == 1012, (client.close_code, client.close_reason)
        assert await asyncio.to_thread(owner.process.wait, 20 + 3 + 5) == 0, owner.log()
        assert "drain step app-gateway: done" in owner.log()
        # The child is gone, its lease released for another process, its CODEX_HOME saved.
        assert await asyncio.to_thread(wait_for, lambda: not _alive(int(held["pid"])), 5)
        assert app_server_lease() is None
        assert list((tmp_path / "data").rglob(f"{TUI_WORKSPACE}.tar.gz")), owner.log()
    finally:
        await local.close()
        await relayed.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
