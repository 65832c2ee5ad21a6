"""The README quick start, end to end, in built-in mode: no agentserver anywhere.

What a new user does, with real parts only (the model is the fake Responses server, standing in
for api.openai.com behind ``CXG_MODEL_PROVIDER_BASE_URL``):

1. ``scripts/run``: ``manage.py localadmin`` (the admin login, and the workspace ``default`` it
   owns), then one ``manage.py serve``, with the model key in ``CXG_CODEX_API_KEY``.
2. ``export CODEXGW_TOKEN=$(manage.py createtoken default)``.
3. In the admin (logged in with the generated password), "Register executor", bound to
   ``default`` as its default environment; then the command the admin shows, run on the
   executor machine (here this machine, with a HOME of its own).
4. ``codex --remote ws://127.0.0.1:PORT --remote-auth-token-env CODEXGW_TOKEN`` (the real TUI,
   under tmux) and a prompt whose tool call runs on the executor.
5. The same over ``POST /api/turns``, and a tool call over ``/api/connectors/*``.

The executor's HOME holds a marker file nothing else knows of, and the model's commands (codex's
own ``exec_command``, which runs in the workspace's default executor) read it from ``~``: its
content reaching the model proves the command ran on the executor.
"""

from __future__ import annotations

import html
import http.cookiejar
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from codexgw import redis as gwredis
from codexgw.local_secrets import LOCAL_SECRET_NAMES
from codexgw.model_key import MISSING_KEY
from executors.models import WorkspaceExecutor
from executors.presence import presence_store
from tests.appgateway.fake_model import FakeModel, FunctionCall, RecordedRequest, Reply
from tests.e2e.conftest import ExecServers
from tests.e2e.harness import (
    REPO,
    ExecServer,
    GatewayCluster,
    GatewayProcess,
    exec_server_env,
    gateway_env,
    http_json,
    strip_ansi,
    wait_for,
)
from workspaces.models import AccessToken, Membership, Role, Workspace

pytestmark = pytest.mark.e2e

WORKSPACE = "default"
ENVIRONMENT = "laptop"  # the executor's name in the workspace, as entered in the admin
TOKEN_FORMAT = re.compile(r"cxgt_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{43}")
MARKER_FILE = "quickstart-marker.txt"  # in the executor's HOME only
TUI_READY = "Ask Codex to do anything"
MODEL_MIGRATION = "2. Use existing model"


@dataclass
class QuickStart:
    gateway: GatewayProcess
    env: dict[str, str]  # the gateway's own environment (also what manage.py commands run with)
    model: FakeModel
    model_key: str
    token: str  # export CODEXGW_TOKEN=$(manage.py createtoken default)

    def createtoken(self, *args: str) -> str:
        created = manage(self.env, "createtoken", *args)
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        assert created.stdout == token + "\n", created.stdout  # the token alone: $(…) takes it as is
        assert TOKEN_FORMAT.fullmatch(token), token
        return token

    @property
    def secrets_file(self) -> Path:
        return secrets_file(self.env)


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``manage.py ARGS`` as a user runs it: in this repository, with the gateway's environment."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=gateway_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def secrets_file(env: dict[str, str]) -> Path:
    return Path(env["CODEXGW_DATA_DIR"]) / "local-secrets.json"


def quickstart_env(data_dir: Path, model_url: str, model_key: str) -> dict[str, str]:
    """The gateway's environment: what the quick start sets, and what keeps this run apart from
    other runs on the machine. Nothing else: model provider, model, env key, roles, trusted
    paths, the codex binary and where the CODEX_HOMEs go (``<data dir>/codex-app-gateway``: per
    run, as the workspace is "default" in every run) are the built-in defaults."""
    return {
        # Built-in identity and no agentserver (the test settings default to agentserver mode).
        "CODEXGW_IDENTITY_BACKEND": "builtin",
        "CXG_AGENTSERVER_INTERNAL_URL": "",
        # The embedded default's generated secrets file, where localadmin puts the admin password.
        # (The database stays the test's PostgreSQL and Redis the test's prefix.)
        "CODEXGW_LOCAL_SECRETS": "true",
        "CODEXGW_DATA_DIR": str(data_dir),
        # The model key, and the fake instead of https://api.openai.com/v1.
        "CXG_CODEX_API_KEY": model_key,
        "OPENAI_API_KEY": "",
        "CXG_MODEL_PROVIDER_BASE_URL": model_url,
        "CODEXGW_LOG_FORMAT": "text",
    }


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """The gateway's data directory, outside /tmp like ``./var`` of a checkout (the CODEX_HOMEs go
    under it, and codex sets up its sandbox helpers only outside /tmp)."""
    path = Path(tempfile.mkdtemp(prefix="cxg-quickstart-data-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_quickstart(
    transactional_db: None,
    data_dir: Path,
    fake_model: FakeModel,
    start_gateway_cluster: Callable[..., GatewayCluster],
) -> Callable[[str], QuickStart]:
    """``start_quickstart(model_key)``: steps 1 and 2, ``manage.py localadmin``, ``manage.py serve``
    and ``manage.py createtoken default``, with ``model_key`` ("" for none) as CXG_CODEX_API_KEY."""

    def start(model_key: str) -> QuickStart:
        env = quickstart_env(data_dir, fake_model.base_url, model_key)
        admin = manage(env, "localadmin")
        assert admin.returncode == 0, admin.stderr
        assert f"workspace '{WORKSPACE}' (owner admin)" in admin.stdout, admin.stdout
        assert f"password in {secrets_file(env)}" in admin.stdout, admin.stdout
        started = QuickStart(start_gateway_cluster(1, env)[0], env, fake_model, model_key, token="")
        started.token = started.createtoken(WORKSPACE)
        return started

    return start


@pytest.fixture
def quickstart(start_quickstart: Callable[[str], QuickStart]) -> QuickStart:
    return start_quickstart(f"sk-quickstart-{secrets.token_hex(8)}")


# --- the admin, as a browser uses it -----------------------------------------------------------


class AdminBrowser:
    """The Django admin over real HTTP with a session cookie and the CSRF token, like a browser."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def open(self, path: str, form: dict[str, str] | None = None) -> tuple[int, str, str]:
        """GET, or POST ``form`` with the CSRF token; (status, final URL, page) after redirects."""
        data = None
        if form is not None:
            data = urllib.parse.urlencode({**form, "csrfmiddlewaretoken": self.csrf_token()}).encode()
        request = urllib.request.Request(self.base_url + path, data=data)
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, response.geturl(), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.geturl(), error.read().decode()

    def csrf_token(self) -> str:
        found = [cookie.value for cookie in self.cookies if cookie.name == "csrftoken" and cookie.value]
        assert found, "no csrftoken cookie: GET the form first"
        return found[0]

    def log_in(self, username: str, password: str) -> None:
        status, _, page = self.open("/admin/login/")
        assert status == 200, page
        status, url, page = self.open(
            "/admin/login/?next=/admin/", {"username": username, "password": password, "next": "/admin/"}
        )
        assert (status, urllib.parse.urlsplit(url).path) == (200, "/admin/"), page
        assert "Log out" in page or "logout" in page, page


@dataclass(frozen=True)
class Launch:
    """The executor command the admin shows: its environment assignments and argv."""

    env: dict[str, str]
    argv: list[str]


def launch_from_page(page: str) -> Launch:
    """The first ``<pre>`` of the "Executor registered" page: ``NAME=value … \\ codex exec-server …``."""
    found = re.search(r"<pre>(.*?)</pre>", page, re.DOTALL)
    assert found is not None, page
    words = shlex.split(html.unescape(found.group(1)).replace("\\\n", " "))
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return Launch(env, words)


def logged_in_admin(start: QuickStart) -> AdminBrowser:
    """The admin, logged in as ``admin`` with the password localadmin generated."""
    password = json.loads(start.secrets_file.read_text())["CODEXGW_LOCAL_ADMIN_PASSWORD"]
    browser = AdminBrowser(start.gateway.base_url)
    browser.log_in("admin", password)
    return browser


def register_executor_in_the_admin(start: QuickStart) -> tuple[str, Launch]:
    """Log in as ``admin`` (password from the local secrets file) and register an executor bound
    to ``default`` as its default environment; the executor's id and its launch command."""
    browser = logged_in_admin(start)
    status, _, page = browser.open("/admin/executors/executor/add/")
    assert status == 200, page
    admin_id = str(get_user_model().objects.get(username="admin").pk)
    status, _, page = browser.open(
        "/admin/executors/executor/add/",
        {
            "user_id": admin_id,
            "display_name": "my laptop",
            "workspace_id": WORKSPACE,
            "binding_name": ENVIRONMENT,
            "description": "the quick start's executor",
            "is_default": "on",
        },
    )
    assert status == 200, page
    assert "Executor registered" in page, page
    binding = WorkspaceExecutor.objects.select_related("executor").get(workspace_id=WORKSPACE, name=ENVIRONMENT)
    assert binding.is_default
    return binding.executor.exe_id, launch_from_page(page)


def start_executor(
    start: QuickStart, launch: Launch, codex_bin: Path, home: Path, exec_servers: ExecServers
) -> ExecServer:
    """The admin's command, verbatim but for the path of ``codex``, with its own HOME."""
    assert launch.argv[:2] == ["codex", "exec-server"], launch
    assert launch.argv[launch.argv.index("--remote") + 1] == start.gateway.base_url, launch
    assert set(launch.env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}, launch
    env = exec_server_env(home / ".codex", extra={**launch.env, "HOME": str(home)})
    server = ExecServer.spawn([str(codex_bin), *launch.argv[1:]], env)
    exec_servers.started.append(server)  # stopped at teardown
    return server


# --- what reached the model -------------------------------------------------------------------


def tool_outputs(requests: list[RecordedRequest]) -> list[str]:
    """Every ``function_call_output`` the requests carried to the model, as text."""
    return [
        item["output"] if isinstance(item["output"], str) else json.dumps(item["output"])
        for request in requests
        for item in request.body.get("input", [])
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    ]


def exec_command_call(command: str) -> FunctionCall:
    """codex's own tool, without ``environment_id``: it runs in the thread's first environment."""
    return FunctionCall("exec_command", {"cmd": command})


# --- the real TUI under tmux ------------------------------------------------------------------


class Tmux:
    """One detached tmux session running a command, on a tmux server of its own (a private
    socket: other tmux users on the machine are not touched); ``screen()`` is its visible pane."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        # remain-on-exit: a command that exits at once leaves its last screen to be read.
        session = ["new-session", "-d", "-s", name, "-x", "160", "-y", "50", "-c", str(cwd), *env_args, *command]
        self.tmux(*session, ";", "set-option", "-t", name, "remain-on-exit", "on", check=True)

    def tmux(self, *args: str, check: bool = False) -> str:
        done = subprocess.run(
            ["tmux", "-L", f"cxg-quickstart-{os.getpid()}", *args], capture_output=True, text=True, check=check
        )
        return done.stdout

    def screen(self) -> str:
        return strip_ansi(self.tmux("capture-pane", "-p", "-t", self.name))

    def exit_status(self) -> int | None:
        """The command's exit status once it has exited, else None."""
        # "1 STATUS PID" once the pane is dead, "0 PID" before (no status yet).
        shown = self.tmux("display-message", "-p", "-t", self.name, "#{pane_dead} #{pane_dead_status} #{pane_pid}")
        fields = shown.split()
        if len(fields) == 3 and fields[0] == "1":
            return int(fields[1])
        pid = fields[-1] if fields else "none"
        # tmux can leave an exited command unreaped (a zombie) for a long while: its exit code is
        # then the last field of /proc/PID/stat.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return int(stat[-1]) >> 8 if stat[0] == "Z" else None

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys, check=True)

    def wait_ready(self, timeout: float) -> None:
        """Until codex's composer is up. A new user is asked nothing on the way: codex offers a
        newer model when the configured one is older than its own latest, and the built-in
        default leaves the model to codex so that it never is."""
        deadline = time.monotonic() + timeout
        ready_since: float | None = None
        while time.monotonic() < deadline:
            screen = self.screen()
            assert MODEL_MIGRATION not in screen, f"codex offered another model:\n{screen}"
            if TUI_READY in screen:
                ready_since = ready_since or time.monotonic()
                if time.monotonic() - ready_since > 3:
                    return
            time.sleep(0.2)
        raise AssertionError(f"codex's composer did not come up within {timeout}s:\n{self.screen()}")

    def type(self, text: str) -> None:
        self.keys("-l", text)
        time.sleep(0.5)
        self.keys("Enter")

    def kill(self) -> None:
        """Stop the session and its server (one session per server), and remove the socket."""
        socket = self.tmux("display-message", "-p", "-t", self.name, "#{socket_path}").strip()
        self.tmux("kill-server")
        if socket:
            Path(socket).unlink(missing_ok=True)


def open_tui(start: QuickStart, codex_bin: Path, tmp_path: Path) -> Tmux:
    """``CODEXGW_TOKEN=… codex --remote ws://127.0.0.1:PORT --remote-auth-token-env CODEXGW_TOKEN``
    in a project directory, as a user with a fresh ~/.codex."""
    project, home = tmp_path / "project", tmp_path / "tui-home"
    project.mkdir(exist_ok=True)
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CODEX_HOME": str(home / ".codex"),
        "TERM": "xterm-256color",
        "CODEXGW_TOKEN": start.token,
    }
    command = [str(codex_bin), "--remote", start.gateway.ws_base_url, "--remote-auth-token-env", "CODEXGW_TOKEN"]
    return Tmux(f"cxg-quickstart-{os.getpid()}", command, env, project)


def app_server_pid() -> int:
    """The pid of the workspace's codex app-server, from its lease."""
    client = gwredis.sync_client()
    assert client is not None
    raw = client.get(gwredis.key("appserver", WORKSPACE))
    assert raw is not None, "no app-server lease"
    return int(json.loads(str(raw))["pid"])


# --- the quick start --------------------------------------------------------------------------


@pytest.fixture
def executor_home_dir() -> Iterator[Path]:
    """The executor's HOME, outside /tmp like a real one."""
    home = Path(tempfile.mkdtemp(prefix="cxg-quickstart-executor-", dir="/var/tmp"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_quick_start(
    quickstart: QuickStart, codex_bin: Path, exec_servers: ExecServers, tmp_path: Path, executor_home_dir: Path
):
    gateway, model = quickstart.gateway, quickstart.model

    # 3. Register an executor in the admin and run the command it shows, on "another machine":
    #    a HOME of its own, holding a file nothing else knows of.
    exe_id, launch = register_executor_in_the_admin(quickstart)
    #    Not under /tmp: codex sandboxes the model's commands there with its codex-linux-sandbox
    #    helper, which it does not set up for a CODEX_HOME under /tmp.
    executor_home = executor_home_dir
    marker = f"only-on-the-executor-{secrets.token_hex(8)}"
    (executor_home / MARKER_FILE).write_text(marker)
    executor = start_executor(quickstart, launch, codex_bin, executor_home, exec_servers)
    assert wait_for(lambda: presence_store().get(exe_id) is not None, 30), (
        f"the executor did not come online\n{executor.output()}\n{gateway.log()}"
    )

    # 4. The TUI: codex --remote ws://127.0.0.1:PORT --remote-auth-token-env CODEXGW_TOKEN
    model.script(exec_command_call(f"uname -a; cat ~/{MARKER_FILE}"), Reply("The executor answered."))
    tui = open_tui(quickstart, codex_bin, tmp_path)
    try:
        tui.wait_ready(60)
        # No startup warning: codex's "could not find bubblewrap on PATH" is false here and held
        # back (appgateway.rpc_filter.false_sandbox_warning).
        time.sleep(1)  # the warning would come with the app-server's first answers
        assert "warning" not in tui.screen().lower(), tui.screen()
        tui.type("what machine are you on?")
        assert wait_for(lambda: "The executor answered." in tui.screen(), 90), f"{tui.screen()}\n{gateway.log()}"
        screen = tui.screen()
    finally:
        tui.kill()
    tui_requests = model.responses_requests()
    assert len(tui_requests) == 2, [r.body.get("input") for r in tui_requests]
    assert "what machine are you on?" in tui_requests[0].user_texts()
    (output,) = tool_outputs(tui_requests)
    assert marker in output, output
    assert "Linux" in output, output
    assert marker in screen, screen
    # The CODEX_HOMEs are not under /tmp, where codex will not create its helper binaries.
    assert "Refusing to create helper binaries" not in gateway.log(), gateway.log()
    # The model calls went through the gateway's model proxy, which put the key on them: the
    # app-server itself never had it, only its workspace's proxy credential.
    assert {r.headers["authorization"] for r in tui_requests} == {f"Bearer {quickstart.model_key}"}
    environ = Path(f"/proc/{app_server_pid()}/environ").read_bytes().split(b"\0")
    assert [entry.split(b".")[0] for entry in environ if entry.startswith(b"CODEX_API_KEY=")] == [b"CODEX_API_KEY=cxgm"]
    assert not [entry for entry in environ if quickstart.model_key.encode() in entry]

    # 5. The same turn over the REST API: curl -H "Authorization: Bearer $CODEXGW_TOKEN" …
    model.script(exec_command_call(f"cat ~/{MARKER_FILE}"), Reply("The executor answered again."))
    before = len(model.responses_requests())
    status, answer = post_turn(gateway, quickstart.token, "and now?")
    assert status == 200, answer
    assert "transport" not in answer, f"{answer}\n{gateway.log()}"
    turn = answer["turn"]
    assert turn["status"] == "completed", turn
    (command,) = [item for item in turn["items"] if item["type"] == "commandExecution"]
    assert (command["status"], command["exitCode"]) == ("completed", 0), command
    assert command["aggregatedOutput"] == marker, command
    assert [item["text"] for item in turn["items"] if item["type"] == "agentMessage"] == [
        "The executor answered again."
    ]
    (output,) = tool_outputs(model.responses_requests()[before:])
    assert marker in output, output

    # 6. The connectors API with the same token.
    connectors = gateway.base_url + "/api/connectors"
    bearer = {"Authorization": f"Bearer {quickstart.token}"}
    status, listed = http_json("POST", connectors + "/envs/list", headers=bearer)
    assert status == 200, listed
    [env] = listed["envs"]
    assert (env["name"], env["type"], env["is_default"]) == (ENVIRONMENT, "executor", True), env
    status, result = http_json(
        "POST",
        f"{connectors}/envs/{ENVIRONMENT}/tool/call",
        {"tool": "shell", "arguments": {"command": ["sh", "-c", f"cat {MARKER_FILE}; echo; echo $HOME"]}},
        headers=bearer,
        timeout=60,
    )
    assert status == 200, result
    assert result["isError"] is False, result
    assert result["structuredContent"]["stdout"] == f"{marker}\n{executor_home}\n", result


# --- what a wrong token gets ------------------------------------------------------------------


def post_turn(
    gateway: GatewayProcess, token: str, text: str, workspace: str = WORKSPACE, timeout: float = 180
) -> tuple[int, Any]:
    """``curl -H "Authorization: Bearer $CODEXGW_TOKEN" …/api/turns`` as the README has it."""
    body = {"workspaceId": workspace, "params": {"input": [{"type": "text", "text": text}]}}
    return http_json(
        "POST", gateway.base_url + "/api/turns", body, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
    )


def upgrade_status(gateway: GatewayProcess, token: str) -> tuple[int, Any]:
    """The TUI's WebSocket upgrade with ``token``: the refusal's status and JSON body."""
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(gateway.ws_base_url + "/", additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=15)
    return refused.value.response.status_code, json.loads(refused.value.response.body or b"null")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_wrong_tokens_are_refused_with_401_or_403(quickstart: QuickStart, codex_bin: Path, tmp_path: Path):
    gateway = quickstart.gateway
    unknown = f"cxgt_{'A' * 8}_{'b' * 43}"
    sdk_only = quickstart.createtoken(WORKSPACE, "--scope", "sdk")
    tui_only = quickstart.createtoken(WORKSPACE, "--scope", "tui")
    admin = get_user_model().objects.get(username="admin")
    other = Workspace.objects.create(id="other", name="Another workspace")
    Membership.objects.create(workspace=other, user=admin, role=Role.OWNER)
    other_token = quickstart.createtoken("other")

    # The TUI's upgrade: a bad token is 401 (not 503: there is no agentserver to be down), a
    # token without the tui scope 403. The real TUI exits with the status (not the reason).
    assert upgrade_status(gateway, unknown) == (401, {"error": "unknown token"})
    assert upgrade_status(gateway, "not-a-token")[0] == 401
    assert upgrade_status(gateway, sdk_only) == (403, {"error": "missing scope: tui"})
    for token, refusal in ((unknown, "401 Unauthorized"), (sdk_only, "403 Forbidden")):
        tui = open_tui(replace(quickstart, token=token), codex_bin, tmp_path)
        try:
            assert wait_for(lambda: tui.exit_status() is not None, 30), tui.screen()  # noqa: B023 - used within this iteration
            exit_status, screen = tui.exit_status(), tui.screen()
        finally:
            tui.kill()
        assert exit_status == 1, screen
        assert f"failed to connect to remote app server at `{gateway.ws_base_url}/`" in screen, screen
        assert f"HTTP error: {refusal}" in screen, screen
    # Revoked in the admin: refused at once.
    revoked = quickstart.createtoken(WORKSPACE)
    record = AccessToken.objects.get(prefix=revoked[: len("cxgt_") + 8])
    browser = logged_in_admin(quickstart)
    status, _, page = browser.open(
        "/admin/workspaces/accesstoken/", {"action": "revoke", "_selected_action": str(record.pk), "index": "0"}
    )
    assert status == 200, page
    record.refresh_from_db()
    assert record.revoked_at is not None, page
    assert upgrade_status(gateway, revoked) == (401, {"error": "token revoked"})

    # POST /api/turns
    status, body = post_turn(gateway, other_token, "hi", timeout=30)
    assert (status, body) == (403, {"error": f"token not authorized for workspace {WORKSPACE}"})
    assert post_turn(gateway, unknown, "hi", timeout=30) == (401, {"error": "unknown token"})
    assert post_turn(gateway, sdk_only, "hi", timeout=30) == (403, {"error": "missing scope: turns:submit"})

    # /api/connectors/*
    connectors = gateway.base_url + "/api/connectors/envs/list"
    status, body = http_json("POST", connectors, headers={"Authorization": f"Bearer {unknown}"})
    assert (status, body["error"]["code"]) == (401, "invalid_token"), body
    status, body = http_json("POST", connectors, headers={"Authorization": f"Bearer {tui_only}"})
    assert (status, body["error"]["code"]) == (403, "forbidden"), body
    status, body = http_json("POST", connectors, headers={"Authorization": f"Bearer {other_token}"})
    assert (status, body) == (200, {"envs": []}), body  # the other workspace has no executor

    # No app-server was started for any of them, and no model call made.
    assert "app-server started" not in gateway.log(), gateway.log()
    assert quickstart.model.requests == []


def closing_frame(connection: Any, seconds: float) -> Any:
    """The close frame the server sends within ``seconds`` (notifications before it are skipped)."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            connection.recv(timeout=max(0.1, deadline - time.monotonic()))
    except ConnectionClosed as closed:
        return closed.rcvd  # None when the connection ended without a close frame
    raise AssertionError(f"still open after {seconds}s")


def test_revoking_a_token_closes_the_tuis_open_with_it(quickstart: QuickStart):
    """A revoked token stops at once on every surface, a TUI already attached included."""
    gateway = quickstart.gateway
    token = quickstart.createtoken(WORKSPACE)
    other = quickstart.createtoken(WORKSPACE)
    headers = {"Authorization": f"Bearer {token}"}
    hello = {"id": 1, "method": "initialize", "params": {"clientInfo": {"name": "t", "version": "1"}}}
    with (
        ws_connect(gateway.ws_base_url + "/", additional_headers=headers, open_timeout=15) as tui,
        ws_connect(
            gateway.ws_base_url + "/", additional_headers={"Authorization": f"Bearer {other}"}, open_timeout=15
        ) as bystander,
    ):
        for connection in (tui, bystander):
            connection.send(json.dumps(hello))
            assert json.loads(connection.recv(timeout=60))["id"] == 1
        record = AccessToken.objects.get(prefix=token[: len("cxgt_") + 8])
        browser = logged_in_admin(quickstart)
        status, _, page = browser.open(
            "/admin/workspaces/accesstoken/", {"action": "revoke", "_selected_action": str(record.pk), "index": "0"}
        )
        assert status == 200, page
        close = closing_frame(tui, 10)
        assert close is not None
        assert (close.code, close.reason) == (1008, "token revoked"), close
        # The other token's TUI is left alone: it is answered.
        bystander.send(json.dumps({"id": 2, "method": "thread/list", "params": {}}))
        while (answer := json.loads(bystander.recv(timeout=30))).get("id") != 2:
            assert "method" in answer, answer  # notifications meanwhile
        assert "result" in answer, answer


# --- no model key -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_without_a_model_key_the_user_is_told_which_variable_to_set(
    start_quickstart: Callable[[str], QuickStart], codex_bin: Path, tmp_path: Path
):
    """The first thing a new user may miss: the gateway starts, the TUI attaches, and the turn
    fails with the model proxy's message naming the variable (codex retries a 401 a few times)."""
    start = start_quickstart("")
    gateway = start.gateway
    assert MISSING_KEY in gateway.log()  # said at start-up too

    tui = open_tui(start, codex_bin, tmp_path)
    try:
        tui.wait_ready(60)
        tui.type("hello?")
        # The error as the TUI shows it, wrapped: compared with its whitespace collapsed.
        assert wait_for(lambda: MISSING_KEY in " ".join(tui.screen().split()), 90), f"{tui.screen()}\n{gateway.log()}"
    finally:
        tui.kill()

    status, answer = post_turn(gateway, start.token, "hello?")
    assert status == 200, answer
    assert answer["turn"]["status"] == "failed", answer
    assert MISSING_KEY in answer["turn"]["error"]["message"], answer
    assert start.model.requests == []  # nothing reached the provider


# --- the first step with every secret given -----------------------------------------------------


def test_localadmin_runs_when_every_local_secret_comes_from_the_environment(transactional_db: None, tmp_path: Path):
    """``scripts/run`` runs ``manage.py localadmin`` before serving. With local secrets on and all
    of them set in the environment there is nothing to generate, so no local-secrets.json is
    written, and localadmin must still create the admin and the workspace (not stop scripts/run
    with a traceback)."""
    env = quickstart_env(tmp_path / "data", "http://127.0.0.1:9/v1", "sk-unused")
    env["CXG_METRICS_TOKEN"] = "metrics-token"
    assert all(gateway_env(env).get(name) for name in LOCAL_SECRET_NAMES)
    created = manage(env, "localadmin")
    assert created.returncode == 0, created.stderr
    assert f"workspace '{WORKSPACE}' (owner admin)" in created.stdout, created.stdout
    assert Membership.objects.filter(workspace_id=WORKSPACE, user__username="admin", role=Role.OWNER).exists()
