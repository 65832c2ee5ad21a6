"""The app gateway: TUI connect → ``initialize`` reply on a cold workspace (the gateway spawns
``codex app-server``) and a warm one, and the proxy's cost per frame against a direct connection
to the same app-server child (``account/read`` round trips on both)."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.report import percentile
from tests.e2e.harness import GatewayProcess, RpcClient

WORKSPACE = "ws-bench-app"
TOKEN = "ast_bench"  # noqa: S105 - the fake agentserver's token, not a secret
_APP_SERVER_URL = re.compile(r"codex-app-server.*?(ws://127\.0\.0\.1:\d+)")
TUI_INITIALIZE = {
    "clientInfo": {"name": "codex-tui", "title": None, "version": "0.169.0"},
    "capabilities": {"experimentalApi": True},
}


@dataclass
class AppGatewayResult:
    cold_s: float
    warm_s: float
    direct_p50_ms: float
    proxied_p50_ms: float
    direct_p99_ms: float
    proxied_p99_ms: float
    calls: int


async def _connect(url: str, headers: dict[str, str]) -> tuple[RpcClient, float]:
    started = time.perf_counter()
    client = await RpcClient.connect(url, headers, open_timeout=60)
    await client.call_result("initialize", TUI_INITIALIZE, timeout=120)
    elapsed = time.perf_counter() - started
    await client.notify("initialized")
    return client, elapsed


async def _round_trips(client: RpcClient, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await client.call_result("account/read", {}, timeout=30)
        samples.append(time.perf_counter() - started)
    return samples


async def measure(gateway: GatewayProcess, calls: int, warm_repeats: int = 5) -> AppGatewayResult:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    client, cold = await _connect(gateway.ws_base_url + "/", headers)
    await client.close()
    warm = []
    for _ in range(warm_repeats):
        client, elapsed = await _connect(gateway.ws_base_url + "/", headers)
        warm.append(elapsed)
        await client.close()
    found = _APP_SERVER_URL.search(gateway.log())
    if found is None:
        raise RuntimeError(f"no app-server URL in the gateway's log:\n{gateway.log()[-3000:]}")
    proxied, _ = await _connect(gateway.ws_base_url + "/", headers)
    direct, _ = await _connect(found.group(1), {})
    try:
        await _round_trips(proxied, 20)
        await _round_trips(direct, 20)
        via_gateway = await _round_trips(proxied, calls)
        straight = await _round_trips(direct, calls)
    finally:
        await asyncio.gather(proxied.close(), direct.close())
    return AppGatewayResult(
        cold_s=cold,
        warm_s=statistics.median(warm),
        direct_p50_ms=percentile(straight, 0.5) * 1000,
        proxied_p50_ms=percentile(via_gateway, 0.5) * 1000,
        direct_p99_ms=percentile(straight, 0.99) * 1000,
        proxied_p99_ms=percentile(via_gateway, 0.99) * 1000,
        calls=calls,
    )


def run(codex_bin: Path, tmp: Path, calls: int) -> AppGatewayResult:
    from django.conf import settings

    from tests.appgateway.fake_model import FakeModel
    from tests.fake_agentserver import FakeAgentserver

    with FakeModel(default_text="bench") as model, FakeAgentserver(settings.CXG_AGENTSERVER_INTERNAL_SECRET) as agent:
        agent.add_token(TOKEN, user_id="user-bench", workspace_id=WORKSPACE)
        (tmp / "work").mkdir(exist_ok=True)
        env = {
            "CODEXGW_ROLES": "exec,app",
            "CODEXGW_DATA_DIR": str(tmp / "data"),
            "CXG_CODEX_BIN": str(codex_bin),
            "CXG_TMP_ROOT": str(tmp / "homes"),
            "CXG_MODEL_PROVIDER": "fake",
            "CXG_MODEL_PROVIDER_NAME": "Fake",
            "CXG_MODEL": model.model,
            "CXG_MODEL_PROVIDER_BASE_URL": model.base_url,
            "CXG_MODEL_PROVIDER_ENV_KEY": "CXG_BENCH_MODEL_KEY",
            "CXG_CODEX_API_KEY": "sk-fake",
            "CXG_PROJECT_TRUSTED_PATHS": str(tmp / "work"),
            "CXG_AGENTSERVER_INTERNAL_URL": agent.base_url,
            "CODEXGW_LOG_FORMAT": "text",
        }
        gateway = GatewayProcess.start(env=env, name="app-gateway")
        try:
            return asyncio.run(measure(gateway, calls))
        finally:
            gateway.terminate(30)
