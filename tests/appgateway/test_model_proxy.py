"""The model proxy in a real gateway process: a real codex app-server's turns go through it with
the workspace's current token, rotation needs no respawn, SSE streams through unbuffered, a
client that leaves closes the upstream, and unknown credentials get 401."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from appgateway import codexhome, model_credentials
from tests.appgateway.conftest import app_client, run_turn
from tests.appgateway.test_model_credentials import SECRET, TokenIssuer, token_path
from tests.e2e.harness import GatewayCluster, async_wait_for, http_request
from tests.fake_agentserver import FakeAgentserver

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def agentserver() -> Iterator[FakeAgentserver]:
    with FakeAgentserver(SECRET) as server:
        yield server


@pytest.fixture
def proxy_gateway(transactional_db: None, agentserver: FakeAgentserver) -> Iterator[Callable[[str], str]]:
    """``proxy_gateway(upstream_base_url)``: the base URL of a real gateway whose model proxy
    forwards there and asks the fake agentserver for tokens."""
    clusters: list[GatewayCluster] = []

    def start(upstream: str) -> str:
        env = {"CXG_MODEL_PROVIDER_BASE_URL": upstream, "CXG_AGENTSERVER_INTERNAL_URL": agentserver.base_url}
        clusters.append(GatewayCluster.start(1, env=env))
        return clusters[-1][0].base_url

    try:
        yield start
    finally:
        for cluster in clusters:
            cluster.stop()


async def test_turns_use_the_current_token_and_rotation_needs_no_respawn(
    sup, appgw, fake_model, agentserver, proxy_gateway, tmp_path
):
    issuer = TokenIssuer(agentserver)
    issuer.serve("ws-rot")
    # This test process supervises the app-server; the gateway process proxies its model calls.
    appgw.CXG_AGENTSERVER_INTERNAL_URL = agentserver.base_url
    appgw.CXG_SELF_HTTP_BASE_URL = proxy_gateway(fake_model.base_url)

    sup.set_spawn_builder(model_credentials.spawn_settings)
    handle = await sup.ensure_app_server("ws-rot")
    config = (codexhome.home_path("ws-rot") / codexhome.CONFIG_FILE).read_text()
    assert f'base_url = "{appgw.CXG_SELF_HTTP_BASE_URL}/api/model-proxy/v1"' in config

    client = await app_client(handle.ws_url)
    try:
        first = await run_turn(client, str(tmp_path), "first")
        assert first["turn"]["status"] == "completed"
        assert fake_model.responses_requests()[-1].headers["authorization"] == "Bearer token-1"

        # The agentserver rotates; the beat task (an hour on) picks up the new token.
        issuer.token = "token-2"
        assert await model_credentials.refresh_live(now=time.time() + 3100) == 1
        fetches = issuer.fetches("ws-rot")

        second = await run_turn(client, str(tmp_path), "second", thread_id=first["threadId"])
    finally:
        await client.close()
    assert second["turn"]["status"] == "completed"
    last = fake_model.responses_requests()[-1]
    assert last.user_texts()[-1] == "second"
    assert last.headers["authorization"] == "Bearer token-2"
    assert issuer.fetches("ws-rot") == fetches  # the proxy used the refreshed cache entry
    same = await sup.ensure_app_server("ws-rot")
    assert (same.pid, same.started_at) == (handle.pid, handle.started_at)  # no respawn
    assert sup.live_sessions()[0].pid == handle.pid


class GatedUpstream:
    """A Responses-like upstream that sends one SSE event, then waits for ``release`` before
    the rest; records each request and whether its client closed the connection early."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.client_closed = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream.requests.append(
                    {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                )
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b'event: response.created\ndata: {"n":1}\n\n')
                self.wfile.flush()
                # Blocks until the proxy closes the connection or the test releases the rest.
                self.connection.settimeout(0.05)
                while not upstream.release.is_set():
                    try:
                        if self.connection.recv(1) == b"":
                            upstream.client_closed.set()
                            return
                    except TimeoutError:
                        continue
                self.wfile.write(b'event: response.completed\ndata: {"n":2}\n\n')
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gated() -> Iterator[GatedUpstream]:
    upstream = GatedUpstream()
    try:
        yield upstream
    finally:
        upstream.stop()


async def test_sse_streams_through_unbuffered_with_the_upstream_token(agentserver, proxy_gateway, gated):
    TokenIssuer(agentserver).serve("ws-sse")
    base = proxy_gateway(gated.base_url)
    credential = model_credentials.proxy_credential("ws-sse")
    headers = {
        "Authorization": f"Bearer {credential}",
        "Content-Type": "application/json",
        "OpenAI-Beta": "responses=experimental",
        "Keep-Alive": "timeout=5",
        "Connection": "keep-alive",
    }
    async with (
        httpx.AsyncClient(timeout=20) as client,
        client.stream(
            "POST", f"{base}/api/model-proxy/v1/responses?stream=1", headers=headers, json={"model": "m"}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        chunks = response.aiter_text()
        received = ""
        while "\n\n" not in received:
            received += await asyncio.wait_for(anext(chunks), 10)
        # The first event is here while the upstream still holds back the second.
        assert received == 'event: response.created\ndata: {"n":1}\n\n'
        gated.release.set()
        async for chunk in chunks:
            received += chunk
    assert received.endswith('event: response.completed\ndata: {"n":2}\n\n')

    [request] = gated.requests
    assert request["path"] == "/v1/responses?stream=1"
    assert request["headers"]["authorization"] == "Bearer token-1"
    assert request["headers"]["openai-beta"] == "responses=experimental"
    assert "keep-alive" not in request["headers"]
    assert json.loads(request["body"]) == {"model": "m"}


async def test_a_client_that_leaves_closes_the_upstream(agentserver, proxy_gateway, gated):
    TokenIssuer(agentserver).serve("ws-gone")
    base = proxy_gateway(gated.base_url)
    headers = {"Authorization": f"Bearer {model_credentials.proxy_credential('ws-gone')}"}
    async with (
        httpx.AsyncClient(timeout=20) as client,
        client.stream("POST", f"{base}/api/model-proxy/v1/responses", headers=headers, json={}) as response,
    ):
        assert response.status_code == 200
        await asyncio.wait_for(anext(response.aiter_bytes()), 10)
    assert await async_wait_for(gated.client_closed.is_set, 10)
    assert not gated.release.is_set()


async def test_unknown_proxy_credentials_are_refused(agentserver, proxy_gateway, gated):
    base = proxy_gateway(gated.base_url)
    good = model_credentials.proxy_credential("ws-x")
    forged = good[:-1] + ("1" if good.endswith("0") else "0")
    async with httpx.AsyncClient(timeout=20) as client:
        for authorization in (None, "Bearer nope", f"Bearer {forged}", f"Basic {good}", "Bearer sk-static"):
            headers = {"Authorization": authorization} if authorization else {}
            response = await client.post(f"{base}/api/model-proxy/v1/responses", headers=headers, json={})
            assert response.status_code == 401, authorization
        for outside in ("v2/responses", "v1/../admin/", "v1/./responses"):
            # Sent as written (urllib keeps dot segments; httpx would resolve them itself).
            request = functools.partial(http_request, body=b"{}", headers={"Authorization": f"Bearer {good}"})
            status, _ = await asyncio.to_thread(request, "POST", f"{base}/api/model-proxy/{outside}")
            assert status == 404, outside
    assert gated.requests == []
    assert agentserver.requests_to(token_path("ws-x"), "GET") == []
