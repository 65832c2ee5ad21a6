"""codex's own ``exec_command`` from a real ``codex app-server`` whose environments are (a) a
direct exec-server, (b) the gateway's ``/bridge`` on the executor's process and (c) on the other
process: one app-server, one client, the environment the only difference.

What is timed is the tool call as codex sees it: from the fake model's ``/responses`` request that
it answers with an ``exec_command`` call to the next request, which carries the command's output
(``process/start`` and ``process/terminate`` round trips to the environment, the pushed
``process/exited``/``closed`` and codex's own handling around them). codex's ``command/exec`` and
``thread/shellCommand`` would be cleaner to time but run only in its local environment (0.171.0
answers "local environment is not configured"), and a whole turn would add turn start and end.
An unknown tool through the same path shows codex's share without any environment."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import Fact, Row, percentile
from tests.appgateway.fake_model import FakeModel, FunctionCall, RecordedRequest, Reply, Step
from tests.e2e.harness import RpcClient

PER_TURN = 10  # calls in one turn; each round starts fresh threads, so history stays short
APP_KEY_ENV = "CXG_BENCH_MODEL_KEY"
INITIALIZE = {"clientInfo": {"name": "codexgw-bench", "version": "0"}, "capabilities": {"experimentalApi": True}}


@dataclass(frozen=True)
class Place:
    """An environment for the app-server: ``url`` with ``token`` (a bridge) or none (direct), and
    the executor's CODEX_HOME, which the command prints to show where it ran."""

    label: str
    url: str
    codex_home: Path
    token: str | None = None


def bridge(label: str, ws_base_url: str, workspace_id: str, exe_id: str, codex_home: Path) -> Place:
    """The executor's ``/bridge`` on a gateway process, with the token a gateway spawn gives an
    environment (``appgateway.spawn_builder.environment_token``): limited to that one executor."""
    from django.conf import settings

    from executors import captoken
    from executors.environment_block import bridge_url

    secret = settings.CXG_CAPTOKEN_HMAC_SECRET
    token = captoken.mint(secret, turn_id="trn_bench_native", workspace_id=workspace_id, ttl=7200, exe_ids=[exe_id])
    return Place(label, bridge_url(ws_base_url, exe_id), codex_home, token)


@dataclass
class NativeExec:
    rows: list[Row]
    facts: list[Fact]


def _outputs(request: RecordedRequest) -> dict[str, str]:
    """call_id → tool output in a ``/responses`` request."""
    items = request.body.get("input", []) if isinstance(request.body, dict) else []
    return {i["call_id"]: str(i.get("output")) for i in items if i.get("type") == "function_call_output"}


async def _thread(client: RpcClient, environment: str, cwd: str) -> str:
    params = {"environments": [{"environmentId": environment, "cwd": cwd}]}
    started = await client.call_result("thread/start", params, timeout=60)
    thread_id: str = started["thread"]["id"]
    return thread_id


async def _timed_turn(
    client: RpcClient, model: FakeModel, thread_id: str, calls: list[FunctionCall], expect: str
) -> list[float]:
    """One turn of ``calls``; per call, seconds from the request answered with it to the request
    that brings its output (which must contain ``expect``)."""
    before = len(model.responses_requests())
    steps: list[Step] = [*calls, Reply("done")]
    model.script(*steps)
    await client.call_result("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "run"}]}, 60)
    while (await client.next_notification("turn/completed", timeout=120))["params"]["threadId"] != thread_id:
        pass
    client.drain_notifications()
    requests = model.responses_requests()[before:]
    if len(requests) != len(steps):
        raise RuntimeError(f"{len(requests)} model requests for {len(steps)} scripted steps")
    samples = []
    for call, asked, answered in zip(calls, requests, requests[1:], strict=False):
        output = _outputs(answered).get(call.call_id, "")
        if expect not in output:
            raise RuntimeError(f"{call.name} {call.call_id}: {expect!r} not in its output {output!r}")
        samples.append(answered.received_at - asked.received_at)
    return samples


def _calls(name: str, arguments: dict[str, Any], prefix: str, count: int) -> list[FunctionCall]:
    return [FunctionCall(name, arguments, call_id=f"{prefix}_{n}") for n in range(count)]


async def measure(app_url: str, model: FakeModel, places: list[Place], cwd: str, calls: int) -> NativeExec:
    client = await RpcClient.connect(app_url, open_timeout=60)
    try:
        await client.call_result("initialize", INITIALIZE, timeout=60)
        await client.notify("initialized")
        for place in places:
            params: dict[str, Any] = {"environmentId": place.label, "execServerUrl": place.url}
            if place.token is not None:
                params["authBearerToken"] = place.token
            await client.call_result("environment/add", params, timeout=60)
        per_turn = min(PER_TURN, calls)
        rounds = -(-calls // per_turn)
        # login=false: bash -c, not -lc, so the executor's profile scripts are not timed.
        command = {"cmd": "echo $CODEX_HOME", "login": False}
        samples: dict[str, list[float]] = {place.label: [] for place in places}
        control: list[float] = []
        for number in range(rounds):
            # Interleaved, so that load from other processes on the machine hits every target alike.
            for place in places:
                thread_id = await _thread(client, place.label, cwd)
                turn_calls = _calls("exec_command", command, f"{place.label}{number}", per_turn)
                samples[place.label] += await _timed_turn(client, model, thread_id, turn_calls, str(place.codex_home))
            thread_id = await _thread(client, places[0].label, cwd)
            unknown = _calls("bench_no_such_tool", {}, f"control{number}", per_turn)
            control += await _timed_turn(client, model, thread_id, unknown, "unsupported call")
    finally:
        await client.close()
    note = f"{rounds * per_turn} calls, {per_turn} per turn; model request → next model request"
    rows = [
        Row(f"exec_command round trip {name}", "ms", [percentile(samples[p.label], q) * 1000 for p in places], note)
        for name, q in (("p50", 0.5), ("p90", 0.9))
    ]
    facts = [
        Fact(
            "exec_command: the same path for an unknown tool (no environment)",
            f"p50 {percentile(control, 0.5) * 1000:.1f} ms, p90 {percentile(control, 0.9) * 1000:.1f} ms",
            "codex's own share of the round trip",
        )
    ]
    return NativeExec(rows, facts)


async def _run(tmp: Path, places: list[Place], calls: int) -> NativeExec:
    from appgateway import codexhome
    from appgateway.app_server_process import AppServerProcess, child_env, child_logger

    # The child's log would go into the bench's output (an error line per unknown-tool call).
    child_logger.setLevel(logging.WARNING)
    with FakeModel(default_text="unexpected extra request") as model:
        home = tmp / "app-server-home"
        home.mkdir(mode=0o700)
        config = codexhome.CodexConfig(
            model_provider="fake",
            model=model.model,
            provider_name="Fake",
            base_url=model.base_url,
            env_key=APP_KEY_ENV,
            # codex would sandbox the command with the executor's codex-linux-sandbox, which it does
            # not set up for a CODEX_HOME under /tmp; the sandbox is not what is measured.
            sandbox_mode="danger-full-access",
        )
        codexhome.write_config(home, codexhome.render_config_toml(config))
        # As the gateway's spawns: no local environment, only the ones added below.
        codexhome.write_config(home, codexhome.ENVIRONMENTS_TOML, codexhome.ENVIRONMENTS_FILE)
        app = await AppServerProcess.start("bench-native", home, child_env(home, {APP_KEY_ENV: "sk-fake"}))
        try:
            return await measure(app.handle.ws_url, model, places, str(tmp), calls)
        finally:
            await app.stop(10)


def run(tmp: Path, places: list[Place], calls: int) -> NativeExec:
    return asyncio.run(_run(tmp, places, calls))
