"""The supervisor against the real ``codex app-server`` (the model is the fake on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from appgateway import codexhome, leases, persistence, process_messages, relay
from appgateway.app_server_process import SpawnError
from appgateway.codexhome import McpServer
from appgateway.supervisor import OwnedElsewhere, SpawnConfig
from appgateway.tasks import checkpoint_codex_homes
from bridge import process_rpc
from codexgw import redis as gwredis
from tests.appgateway.conftest import MODEL_KEY, MODEL_KEY_NAME, app_client, run_turn
from tests.e2e.harness import REPO, async_wait_for, gateway_env, http_request

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def archive_members(workspace_id: str) -> list[str]:
    path = Path(persistence.storage().path(persistence.archive_name(workspace_id)))
    with tarfile.open(path, "r:gz") as archive:
        return archive.getnames()


async def test_spawn_serves_a_real_turn_and_holds_the_lease(sup, appgw, fake_model, tmp_path):
    handle = await sup.ensure_app_server("ws-turn")

    assert handle.ws_url.startswith("ws://127.0.0.1:")
    status, body = await asyncio.to_thread(http_request, "GET", handle.ws_url.replace("ws://", "http://") + "/readyz")
    assert status == 200, body
    home = codexhome.home_path("ws-turn")
    assert handle.codex_home == home
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "config.toml").stat().st_mode & 0o777 == 0o600

    client = await app_client(handle.ws_url)
    try:
        completed = await run_turn(client, str(tmp_path))
    finally:
        await client.close()
    assert completed["turn"]["status"] == "completed"
    assert [item["text"] for item in completed["turn"]["items"] if item["type"] == "agentMessage"] == [
        "Hello from the fake model"
    ]
    # The child had the model key (and only through the allow-listed variable env_key names).
    request = fake_model.responses_requests()[0]
    assert request.headers["authorization"] == f"Bearer {MODEL_KEY}"
    assert request.body["model"] == fake_model.model

    client_redis = gwredis.sync_client()
    assert client_redis is not None
    lease = json.loads(str(client_redis.get(gwredis.key("appserver", "ws-turn"))))
    assert lease["process_id"] == sup.process_id
    assert (lease["pid"], lease["ws_url"]) == (handle.pid, handle.ws_url)
    assert lease["channel_name"] == await process_rpc.process_channel()
    assert (await sup.lease_owner("ws-turn")).pid == handle.pid
    sessions = sup.live_sessions()
    assert [(s.workspace_id, s.pid, s.process_id) for s in sessions] == [("ws-turn", handle.pid, sup.process_id)]
    assert sessions[0].uptime >= 0


async def test_no_gateway_directory_is_presented_as_the_working_directory(sup, fake_model):
    handle = await sup.ensure_app_server("ws-cwd")
    # The app-server runs in "/" (docs/app-gateway.md), not in its CODEX_HOME.
    assert os.readlink(f"/proc/{handle.pid}/cwd") == "/"

    client = await app_client(handle.ws_url)
    try:
        # Like the TUI's thread/start: no cwd, so the thread takes the app-server's.
        started = await client.call_result("thread/start", {})
        thread_id = started["thread"]["id"]
        await client.call_result("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": "hi"}]})
        await client.next_notification("turn/completed", timeout=60)
    finally:
        await client.close()
    assert (started["cwd"], started["thread"]["cwd"]) == ("/", "/")
    # Nor is the model told it works there (codex's bundled skills are still listed from CODEX_HOME).
    sent = json.dumps(fake_model.responses_requests()[0].body)
    context = re.findall(r"<environment_context>.*?</environment_context>", sent)
    assert context
    # Without the local environment and with no executor selected, codex names no directory at all.
    assert set(re.findall(r"<(?:cwd|root)>([^<]*)</", "".join(context))) <= {"/"}


async def test_concurrent_ensure_spawns_once(sup, caplog):
    caplog.set_level(logging.INFO, logger="appgateway.supervisor")
    handles = await asyncio.gather(*(sup.ensure_app_server("ws-race") for _ in range(5)))
    assert len({(h.pid, h.ws_url) for h in handles}) == 1
    started = [r for r in caplog.records if r.getMessage() == "app-server started"]
    assert len(started) == 1
    assert pid_alive(handles[0].pid)


async def test_killed_child_is_respawned_by_the_next_ensure(sup, tmp_path):
    first = await sup.ensure_app_server("ws-crash")
    os.kill(first.pid, signal.SIGKILL)
    assert await async_wait_for(lambda: not pid_alive(first.pid), 10), "the child was not reaped"
    await asyncio.sleep(0.2)  # the child watcher records the exit on the loop

    second = await sup.ensure_app_server("ws-crash")

    assert second.pid != first.pid
    assert second.ws_url != first.ws_url
    client = await app_client(second.ws_url)
    try:
        completed = await run_turn(client, str(tmp_path))
    finally:
        await client.close()
    assert completed["turn"]["status"] == "completed"
    assert (await sup.lease_owner("ws-crash")).pid == second.pid
    # The dead child's home was persisted (best effort) before the respawn.
    assert persistence.storage().exists(persistence.archive_name("ws-crash"))


async def test_idle_shutdown_persists_and_a_fresh_spawn_restores_threads(sup, appgw, tmp_path):
    first = await sup.ensure_app_server("ws-idle")
    client = await app_client(first.ws_url)
    try:
        completed = await run_turn(client, str(tmp_path), text="remember me")
    finally:
        await client.close()
    thread_id = completed["threadId"]

    appgw.CXG_IDLE_SHUTDOWN = 1.0
    assert await async_wait_for(lambda: not pid_alive(first.pid), 15), "idle child was not stopped"
    assert await async_wait_for(lambda: sup.live_sessions() == [], 15), "lease was not released"
    assert not first.codex_home.exists()
    members = archive_members("ws-idle")
    assert any(name.startswith("sessions/") and name.endswith(".jsonl") for name in members)
    assert "config.toml" not in members

    appgw.CXG_IDLE_SHUTDOWN = 1800.0
    second = await sup.ensure_app_server("ws-idle")
    assert second.pid != first.pid
    client = await app_client(second.ws_url)
    try:
        listed = await client.call_result("thread/list", {})
        read = await client.call_result("thread/read", {"threadId": thread_id, "includeTurns": True})
    finally:
        await client.close()
    assert thread_id in [thread["id"] for thread in listed["data"]]
    assert read["thread"]["id"] == thread_id


async def test_touch_keeps_a_workspace_alive(sup, appgw):
    handle = await sup.ensure_app_server("ws-busy")
    appgw.CXG_IDLE_SHUTDOWN = 1.0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        sup.touch("ws-busy")
        await asyncio.sleep(0.1)
    assert pid_alive(handle.pid)
    assert await async_wait_for(lambda: not pid_alive(handle.pid), 15), "reaper never stopped the idle child"


async def test_config_is_fresh_on_every_spawn_and_never_persisted(sup, appgw):
    first = await sup.ensure_app_server("ws-config")
    config = first.codex_home / "config.toml"
    config.write_text("# tampered\n")
    await sup.shutdown("ws-config", "test")
    assert "config.toml" not in archive_members("ws-config")

    appgw.CXG_MODEL = "another-model"
    second = await sup.ensure_app_server("ws-config")
    text = (second.codex_home / "config.toml").read_text()
    assert text == codexhome.render_config_toml(codexhome.config_from_settings())
    assert 'model = "another-model"' in text


async def test_child_environment_is_an_allow_list(sup, appgw, monkeypatch):
    secrets_in_gateway = {
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "CXG_CAPTOKEN_HMAC_SECRET": settings.CXG_CAPTOKEN_HMAC_SECRET,
        "CXG_AGENTSERVER_INTERNAL_SECRET": settings.CXG_AGENTSERVER_INTERNAL_SECRET,
        "CXG_INTERNAL_SHARED_SECRET": settings.CXG_INTERNAL_SHARED_SECRET,
        "CXG_S3_SECRET_ACCESS_KEY": "s3-secret-value",
        "CXG_CODEX_API_KEY_FILE": "/run/secrets/not-for-children",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "DATABASE_URL": "postgres://user:db-password@127.0.0.1/x",
    }
    for name, value in secrets_in_gateway.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RUST_LOG", "warn")

    async def builder(workspace_id: str) -> SpawnConfig:
        return SpawnConfig(env={"CXG_WORKSPACE_TOKEN": f"token-for-{workspace_id}"})

    sup.set_spawn_builder(builder)
    handle = await sup.ensure_app_server("ws-env")

    with open(f"/proc/{handle.pid}/environ", "rb") as environ:  # noqa: ASYNC230 - procfs, instant
        raw = environ.read()
    child_env = dict(entry.split("=", 1) for entry in raw.decode().split("\0") if entry)
    assert set(child_env) == {
        "PATH",
        "HOME",
        "LANG",
        "NO_COLOR",
        "RUST_LOG",
        "CODEX_HOME",
        MODEL_KEY_NAME,
        "CXG_WORKSPACE_TOKEN",
    }
    assert child_env["CODEX_HOME"] == str(handle.codex_home)
    assert child_env[MODEL_KEY_NAME] == MODEL_KEY
    assert child_env["CXG_WORKSPACE_TOKEN"] == "token-for-ws-env"
    assert child_env["RUST_LOG"] == "warn"
    for value in secrets_in_gateway.values():
        assert value not in raw.decode()


async def test_mcp_servers_from_the_builder_are_rendered(sup):
    async def builder(workspace_id: str) -> SpawnConfig:
        return SpawnConfig(mcp_servers=[McpServer("agentserver", f"http://127.0.0.1:9/mcp/env/{workspace_id}", "T")])

    sup.set_spawn_builder(builder)
    handle = await sup.ensure_app_server("ws-mcp")
    text = (handle.codex_home / "config.toml").read_text()
    assert '[mcp_servers.agentserver]\nurl = "http://127.0.0.1:9/mcp/env/ws-mcp"\nbearer_token_env_var = "T"\n' in text
    # No local environment: the model's tools can only run in the environments the gateway adds.
    assert (handle.codex_home / "environments.toml").read_text() == "include_local = false\n"
    assert (handle.codex_home / "environments.toml").stat().st_mode & 0o777 == 0o600


async def test_builder_error_propagates_and_nothing_is_spawned(sup):
    async def builder(workspace_id: str) -> SpawnConfig:
        raise RuntimeError("token service down")

    sup.set_spawn_builder(builder)
    with pytest.raises(RuntimeError, match="token service down"):
        await sup.ensure_app_server("ws-builder")
    assert await sup.lease_owner("ws-builder") is None
    assert not (Path(settings.CXG_TMP_ROOT) / "ws-builder").exists()


async def test_a_bad_binary_fails_cleanly(sup, appgw, tmp_path):
    appgw.CXG_CODEX_BIN = str(tmp_path / "no-such-codex")
    with pytest.raises(SpawnError, match="cannot run"):
        await sup.ensure_app_server("ws-badbin")
    assert await sup.lease_owner("ws-badbin") is None
    assert not (Path(settings.CXG_TMP_ROOT) / "ws-badbin").exists()


async def test_invalid_workspace_ids_are_refused(sup):
    for bad in ("..", "a/b", "", "../etc", "x" * 200):
        with pytest.raises(codexhome.CodexHomeError):
            await sup.ensure_app_server(bad)


async def test_checkpoint_task_persists_live_homes_without_stopping_them(sup, tmp_path):
    handle = await sup.ensure_app_server("ws-checkpoint")
    client = await app_client(handle.ws_url)
    try:
        await run_turn(client, str(tmp_path))
    finally:
        await client.close()
    name = persistence.archive_name("ws-checkpoint")
    assert not persistence.storage().exists(name)

    # The Celery task runs in a worker: it can only message the owner, which persists.
    asked = await asyncio.to_thread(checkpoint_codex_homes)

    assert asked == 1
    assert await async_wait_for(lambda: persistence.storage().exists(name), 15), "no checkpoint was written"
    assert pid_alive(handle.pid)
    assert (await sup.ensure_app_server("ws-checkpoint")).pid == handle.pid
    members = archive_members("ws-checkpoint")
    assert any(member.startswith("sessions/") for member in members)
    assert "config.toml" not in members
    # SQLite databases are snapshots that open cleanly on their own (no -wal needed).
    assert not [member for member in members if member.endswith(("-wal", "-shm"))]


# --- other processes ---------------------------------------------------------------------------

_OTHER_PROCESS = """
import asyncio, json, sys, time
import django
django.setup()
from appgateway.supervisor import OwnedElsewhere, get_supervisor

async def main(workspace_id):
    supervisor = get_supervisor()
    lease = await supervisor.lease_owner(workspace_id)
    try:
        await supervisor.ensure_app_server(workspace_id)
        refused = None
    except OwnedElsewhere as exc:
        refused = exc.lease.process_id
    sessions = [(s.workspace_id, s.process_id, s.pid) for s in supervisor.live_sessions()]
    # A TUI attached here (relaying to the owner) keeps the workspace busy: the touch reaches the lease.
    supervisor.touch(workspace_id)
    touched_at = time.time()
    await asyncio.sleep(1.2)
    print(json.dumps({"me": supervisor.process_id, "lease": lease and lease.to_json(), "refused_by": refused,
                      "sessions": sessions, "touched_at": touched_at}))
    await supervisor.shutdown_all("done")

asyncio.run(main(sys.argv[1]))
"""


def _run_other_process(workspace_id: str, extra_env: dict[str, str]) -> Any:
    env = gateway_env({"DJANGO_SETTINGS_MODULE": "tests.settings", **extra_env})
    result = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, workspace_id],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


async def test_lease_is_visible_to_another_process_which_does_not_spawn(sup, appgw):
    appgw.CXG_APP_SERVER_LEASE_TTL = 1.5  # refresh (and merge touches) every 0.5 s
    handle = await sup.ensure_app_server("ws-shared")
    other = await asyncio.to_thread(
        _run_other_process,
        "ws-shared",
        {"CXG_TMP_ROOT": appgw.CXG_TMP_ROOT, "CXG_CODEX_BIN": appgw.CXG_CODEX_BIN, "CXG_APP_SERVER_LEASE_TTL": "1.5s"},
    )
    assert other["me"] != sup.process_id
    lease = json.loads(other["lease"])
    assert (lease["process_id"], lease["pid"], lease["ws_url"]) == (sup.process_id, handle.pid, handle.ws_url)
    assert other["refused_by"] == sup.process_id
    assert other["sessions"] == [["ws-shared", sup.process_id, handle.pid]]
    assert pid_alive(handle.pid)
    assert other["touched_at"] > handle.started_at
    assert await async_wait_for(lambda: sup.last_activity("ws-shared") >= other["touched_at"] - 0.01, 5), (
        "the other process's touch never reached the owner's idle clock"
    )


_OWNER_PROCESS = """
import asyncio, json, sys
import django
django.setup()
from appgateway.supervisor import get_supervisor

async def main(workspace_id):
    handle = await get_supervisor().ensure_app_server(workspace_id)
    print(json.dumps({"pid": handle.pid, "process_id": get_supervisor().process_id}), flush=True)
    await asyncio.sleep(600)

asyncio.run(main(sys.argv[1]))
"""


async def test_another_process_takes_over_after_the_owner_dies(sup, appgw, tmp_path):
    appgw.CXG_APP_SERVER_LEASE_TTL = 1.5
    env = gateway_env(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "CXG_TMP_ROOT": appgw.CXG_TMP_ROOT,
            "CXG_CODEX_BIN": appgw.CXG_CODEX_BIN,
            "CXG_APP_SERVER_LEASE_TTL": "1.5s",
            "CXG_MODEL_PROVIDER_BASE_URL": appgw.CXG_MODEL_PROVIDER_BASE_URL,
        }
    )
    owner = subprocess.Popen(  # noqa: ASYNC220 - only its pipe is read, in a thread
        [sys.executable, "-c", _OWNER_PROCESS, "ws-takeover"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert owner.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(owner.stdout.readline), 60)
        started = json.loads(line)
        with pytest.raises(OwnedElsewhere) as refused:
            await sup.ensure_app_server("ws-takeover")
        assert refused.value.lease.process_id == started["process_id"]

        owner.kill()  # a crash: no goodbye, no lease release
        owner.wait(10)
        # The orphan is told to stop by the kernel (parent-death signal), the lease expires.
        assert await async_wait_for(lambda: not pid_alive(started["pid"]), 15), "the orphaned child survived"
        assert await async_wait_for(lambda: sup.live_sessions() == [], 10), "the dead owner's lease did not expire"

        handle = await sup.ensure_app_server("ws-takeover")
        assert (await sup.lease_owner("ws-takeover")).process_id == sup.process_id
        status, _ = await asyncio.to_thread(http_request, "GET", handle.ws_url.replace("ws://", "http://") + "/readyz")
        assert status == 200
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)


async def test_process_channel_delivers_registered_message_types(sup):
    from channels.layers import get_channel_layer

    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handler(message: dict[str, Any]) -> None:
        await received.put(message)

    process_messages.on_message("tui.relay_test", handler)
    with pytest.raises(ValueError, match="supervisor's own"):
        process_messages.on_message("appserver.checkpoint", handler)
    channel = await process_rpc.process_channel()
    assert await process_rpc.process_channel() == channel
    layer = get_channel_layer()
    assert layer is not None
    await layer.send(channel, {"type": "tui.relay_test", "n": 1})
    message = await asyncio.wait_for(received.get(), 10)
    assert message == {"type": "tui.relay_test", "n": 1}


async def test_embedded_default_keeps_leases_in_process_and_checkpoints_in_process(sup, appgw):
    real_redis = gwredis.sync_client()
    appgw.REDIS_URL = ""
    appgw.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    handle = await sup.ensure_app_server("ws-embedded")
    # The admin reads sessions from another thread; nothing went to the real Redis (the lease is
    # in the in-process fakeredis).
    sessions = await asyncio.to_thread(sup.live_sessions)
    assert [(s.workspace_id, s.pid) for s in sessions] == [("ws-embedded", handle.pid)]
    assert real_redis.exists(gwredis.key("appserver", "ws-embedded")) == 0

    # The in-process beat runs the task on its own thread.
    assert await asyncio.to_thread(checkpoint_codex_homes) == 1
    name = persistence.archive_name("ws-embedded")
    assert await async_wait_for(lambda: persistence.storage().exists(name), 15), "no checkpoint was written"
    assert pid_alive(handle.pid)

    await sup.shutdown("ws-embedded", "test")
    assert not pid_alive(handle.pid)
    assert await asyncio.to_thread(sup.live_sessions) == []


_STUBBORN_CHILD = """#!{python}
import signal, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer

signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Ready(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Ready)
print("  listening on: ws://127.0.0.1:%d" % server.server_address[1], file=sys.stderr, flush=True)
# Far more than a pipe buffer, and one line over the reader's limit, before /readyz answers:
# a supervisor that stopped reading after the URL would leave this child blocked here.
sys.stderr.write("x" * 200000 + "\\n")
for i in range(3000):
    sys.stdout.write("noise %d %s\\n" % (i, "y" * 400))
sys.stdout.flush()
server.serve_forever()
"""


async def test_output_is_drained_and_sigterm_is_escalated_to_sigkill(sup, appgw, tmp_path):
    fake = tmp_path / "stubborn-codex"
    fake.write_text(_STUBBORN_CHILD.format(python=sys.executable))
    fake.chmod(0o700)
    appgw.CXG_CODEX_BIN = str(fake)
    appgw.CXG_APP_SERVER_STOP_GRACE = 0.5

    handle = await sup.ensure_app_server("ws-stubborn")
    assert pid_alive(handle.pid)
    started = time.monotonic()
    await sup.shutdown("ws-stubborn", "test")
    assert not pid_alive(handle.pid)
    assert 0.5 <= time.monotonic() - started < 10
    assert await sup.lease_owner("ws-stubborn") is None


async def test_restart_replaces_the_child_and_keeps_its_threads(sup, tmp_path):
    first = await sup.ensure_app_server("ws-restart")
    client = await app_client(first.ws_url)
    try:
        thread_id = (await run_turn(client, str(tmp_path)))["threadId"]
    finally:
        await client.close()

    second = await sup.restart("ws-restart")

    assert second.pid != first.pid
    assert not pid_alive(first.pid)
    assert (await sup.lease_owner("ws-restart")).pid == second.pid
    client = await app_client(second.ws_url)
    try:
        listed = await client.call_result("thread/list", {})
    finally:
        await client.close()
    assert thread_id in [thread["id"] for thread in listed["data"]]


async def test_shutdown_requested_from_another_process_reaches_the_owner(sup, appgw):
    handle = await sup.ensure_app_server("ws-remote-stop")
    script = (
        "import asyncio, django; django.setup()\n"
        "from appgateway.supervisor import get_supervisor\n"
        "async def main():\n"
        "    await get_supervisor().shutdown('ws-remote-stop', 'admin')\n"
        "    await get_supervisor().shutdown_all('done')\n"
        "asyncio.run(main())\n"
    )
    env = gateway_env({"DJANGO_SETTINGS_MODULE": "tests.settings"})
    run = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert await async_wait_for(lambda: not pid_alive(handle.pid), 15), "the owner never stopped its child"
    assert await async_wait_for(lambda: sup.live_sessions() == [], 10)
    assert persistence.storage().exists(persistence.archive_name("ws-remote-stop"))


async def test_an_exit_during_a_shutdown_still_releases_the_lease_and_removes_the_home(sup, appgw, monkeypatch):
    """The gateway exits (shutdown_all) while a shutdown of its own is persisting a workspace: the
    task is cancelled there, and its clean-up (the home removed, the lease released) runs to its
    end. Cancelled again every 0.2 s, a slow clean-up was cut short and the lease of a gone
    process stayed in Redis until its TTL, with other processes relaying to it."""
    handle = await sup.ensure_app_server("ws-exiting")
    persisting = asyncio.Event()
    loop = asyncio.get_running_loop()
    remove_home = codexhome.remove_home

    def slow_persist(*args: Any) -> None:
        loop.call_soon_threadsafe(persisting.set)
        time.sleep(1.0)

    def slow_remove(home: Path) -> None:
        time.sleep(0.5)  # a large CODEX_HOME
        remove_home(home)

    monkeypatch.setattr(persistence, "persist", slow_persist)
    monkeypatch.setattr(codexhome, "remove_home", slow_remove)
    sup.in_background(sup.shutdown("ws-exiting", "asked by another process"), "shutdown ws-exiting")
    await asyncio.wait_for(persisting.wait(), 30)
    await sup.shutdown_all("gateway exit")
    assert await asyncio.to_thread(leases.lease_of, "ws-exiting") is None
    assert not handle.codex_home.exists()


async def test_a_client_stopped_before_its_reader_ran_leaves_nothing_unawaited(sup, appgw):
    """The TUI or a broker dial leaves in the same loop step that attached it: the reader task
    is cancelled before its first step. It once held the leg's pump coroutine already made, never
    awaited (a RuntimeWarning, an error under this suite's warning filters)."""
    await sup.ensure_app_server("ws-quick")

    class Tui:
        async def deliver(self, frame: Any) -> None:
            pass

        async def close_tui(self, code: int, reason: str) -> None:
            pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        client = await relay.attach("ws-quick", "conn-quick", Tui())
        await client.stop()
        del client
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
