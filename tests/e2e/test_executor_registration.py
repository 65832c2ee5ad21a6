"""The real ``codex exec-server --remote … --remote-transport direct --aws-sigv4`` registering with
a real gateway (``manage.py serve``) on the test database."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from django.conf import settings

from executors import services
from executors.models import Executor
from executors.presence import presence_store
from tests.e2e.harness import ExecServer, ExecutorCredentials, http_request, wait_for
from tests.executors.test_sigv4 import sign

pytestmark = pytest.mark.e2e

EVIDENCE_TIMEOUT = 20.0
# The pinned @openai/codex (package.json) that the executor runs.
PINNED_CODEX_VERSION = json.loads((settings.BASE_DIR / "package.json").read_text())["dependencies"]["@openai/codex"]
EXIT_TIMEOUT = 20.0


def test_real_codex_registers_with_the_gateway_and_dials_the_returned_websocket(gateway_server, codex_bin, tmp_path):
    created = services.register_executor("user-e2e", "e2e executor")
    exe_id = created.executor.exe_id
    ws_path = f"codex-exec/{exe_id}"
    credentials = ExecutorCredentials(exe_id, created.registration_token)
    ex = ExecServer.remote(codex_bin, gateway_server.base_url, credentials, tmp_path / "home")
    try:

        def registered() -> bool:
            return Executor.objects.get(exe_id=exe_id).last_seen_at is not None

        assert wait_for(registered, EVIDENCE_TIMEOUT), (
            f"registration not recorded\nexecutor:\n{ex.output()}\ngateway:\n{gateway_server.log()}"
        )

        # Having registered, the executor dials the URL the gateway returned
        # (ws://127.0.0.1:PORT/codex-exec/<exe_id>); the SigV4-signed upgrade is accepted and the
        # gateway's executor consumer takes the connection: presence says online.
        def connected() -> bool:
            return "direct exec-server connected" in ex.log() and presence_store().get(exe_id) is not None

        assert wait_for(connected, EVIDENCE_TIMEOUT), (
            f"executor never connected to ws://{gateway_server.host_port}/{ws_path}\n"
            f"executor:\n{ex.output()}\ngateway:\n{gateway_server.log()}"
        )
        assert ex.alive()
        assert Executor.objects.get(exe_id=exe_id).connected_at is not None

        # The version and OS come from the executor's answer to the gateway's initialize.
        def reported() -> bool:
            row = Executor.objects.get(exe_id=exe_id)
            return (row.codex_version, row.client_os) == (PINNED_CODEX_VERSION, "linux")

        assert wait_for(reported, EVIDENCE_TIMEOUT), (
            f"version not recorded: {Executor.objects.filter(exe_id=exe_id).values('codex_version', 'client_os')}\n"
            f"gateway:\n{gateway_server.log()}"
        )
    finally:
        ex.stop()
    output = ex.output()
    assert "environment registry" not in output, output
    row = Executor.objects.get(exe_id=exe_id)
    assert row.client_ip == "127.0.0.1"
    # codex sends no User-Agent, and a connection without one keeps the reported version.
    assert (row.client_ua, row.codex_version) == ("", PINNED_CODEX_VERSION)
    assert "executor registered" in gateway_server.log()


def test_gateway_returns_the_websocket_url_to_a_signed_registration(gateway_server):
    """The same request shape as codex's, sent over real HTTP to the gateway (the ASGI raw-path branch
    of the verifier), including a signed query string with percent-encoding and a ``+``."""
    created = services.register_executor("user-e2e", "e2e executor")
    exe_id = created.executor.exe_id
    path = f"/cloud/environment/{exe_id}/direct/register"
    query = "probe=a%2Fb&sp=x+y"
    body = b'{"transport":"direct_jsonrpc_v1"}'
    headers = sign(
        method="POST",
        path=path,
        query=query,
        headers={"content-type": "application/json", "host": gateway_server.host_port},
        body=body,
        access_key_id=exe_id,
        secret=created.registration_token,
        at=datetime.now(UTC),
    )
    status, payload = post(gateway_server.base_url + f"{path}?{query}", body, headers)
    assert status == 200, (payload, gateway_server.log())
    assert isinstance(payload, dict)
    assert payload["url"] == f"ws://{gateway_server.host_port}/codex-exec/{exe_id}"
    assert payload["environment_id"] == exe_id
    assert payload["transport"] == "direct_jsonrpc_v1"
    assert Executor.objects.get(exe_id=exe_id).last_seen_at is not None

    headers["host"] = "other.example.com:80"
    status, payload = post(gateway_server.base_url + f"{path}?{query}", body, headers)
    assert (status, payload) == (401, {"error": "unauthorized"})


def test_real_codex_with_a_wrong_secret_exits_on_401(gateway_server, codex_bin, tmp_path):
    created = services.register_executor("user-e2e", "e2e executor")
    exe_id = created.executor.exe_id
    wrong = ExecutorCredentials(exe_id, "not-" + created.registration_token)
    ex = ExecServer.remote(codex_bin, gateway_server.base_url, wrong, tmp_path / "home")
    try:
        returncode = ex.wait_exit(EXIT_TIMEOUT)
    finally:
        ex.stop()
    assert returncode != 0
    output = ex.output()
    assert "authentication failed (401" in output, output
    assert wait_for(lambda: "executor registration refused" in gateway_server.log(), 5), gateway_server.log()
    assert f"codex-exec/{exe_id}" not in gateway_server.log(), "no WebSocket attempt after a refused registration"
    row = Executor.objects.get(exe_id=exe_id)
    assert row.last_seen_at is None
    assert (row.client_ip, row.client_ua) == ("", "")


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, object]:
    """POST exactly these bytes (the signature covers them)."""
    status, raw = http_request("POST", url, body=body, headers=headers)
    return status, json.loads(raw)
