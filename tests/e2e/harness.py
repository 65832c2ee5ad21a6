"""Reusable pieces for end-to-end tests: real gateway processes, the real ``codex exec-server``,
a TCP proxy that can cut connections, and a JSON-RPC WebSocket client.

Nothing here depends on particular gateway routes. Every wait is bounded by a deadline, and every
process or socket is released by ``stop()``/``terminate()``/``close()`` (the fixtures in
``tests/e2e/conftest.py`` and ``tests/conftest.py`` call them at teardown).

* ``GatewayProcess`` / ``GatewayCluster``: ``manage.py serve`` subprocesses on pytest-django's test
  database, sharing the test process's Redis and ``CODEXGW_REDIS_PREFIX`` (so presence, the
  channel layer and the revoked set are shared with the test and with each other).
* ``ExecServer``: the real executor, ``--remote … --remote-transport direct --aws-sigv4`` (or
  ``--listen ws://127.0.0.1:0`` for tests that talk to it directly), with an allow-listed
  environment.
* ``TcpCutProxy``: forwards 127.0.0.1:<ephemeral> to a target; ``cut()`` drops every live
  connection while new ones are still accepted.
* ``RpcClient``: exec-server JSON-RPC framing (codex-wire §A: one JSON object per text frame, no
  ``"jsonrpc"`` field, integer ids).
"""

# The async API takes per-call ``timeout`` arguments (bounded waits with a message naming what was
# awaited) rather than leaving every caller to wrap it in asyncio.timeout.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connections
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.relay_client import RelayClient, RelayTicket
from executors.executor_command import executor_launch

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
GATEWAY_START_TIMEOUT = 30.0
_GATEWAY_READY = re.compile(r"codexgw listening on (http://\S+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --- small helpers ---------------------------------------------------------------------------


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it is truthy or ``timeout`` seconds pass; the last check decides."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


async def async_wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """``wait_for`` for coroutines (the condition itself is a plain, non-blocking callable)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(interval)
    return bool(condition())


def _all_threads_stopped(pid: int) -> bool:
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            # The state follows the command's closing parenthesis (the name may hold spaces).
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in ("T", "t") for state in states)


def stop_process(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP ``pid`` and return once every thread of it is stopped. kill() only queues the
    stop: one thread is woken to start the group stop, and until it runs (on a busy machine, a
    while) the process's other threads go on and may still answer what reaches them."""
    os.kill(pid, signal.SIGSTOP)
    assert wait_for(lambda: _all_threads_stopped(pid), timeout, interval=0.001), f"process {pid} did not stop"


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def http_request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One real HTTP request; returns (status, body) for any status, including 4xx/5xx."""
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def http_json(
    method: str,
    url: str,
    payload: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """A JSON request/response; the decoded body is None when the response has none."""
    all_headers = dict(headers or {})
    body = None
    if payload is not None:
        body = json.dumps(payload).encode()
        all_headers.setdefault("Content-Type", "application/json")
    status, raw = http_request(method, url, body=body, headers=all_headers, timeout=timeout)
    return status, (json.loads(raw) if raw else None)


def internal_secret_headers() -> dict[str, str]:
    """The agentserver-facing ``/api/codex-exec/*`` credential (``X-Internal-Secret``)."""
    return {"X-Internal-Secret": settings.CXG_AGENTSERVER_INTERNAL_SECRET}


def shared_secret_headers() -> dict[str, str]:
    """The cluster-internal ``/api/exec-gateway/*`` credential (shared-secret Bearer)."""
    return {"Authorization": f"Bearer {settings.CXG_INTERNAL_SHARED_SECRET}"}


def reap(process: subprocess.Popen[Any], sig: int, timeout: float) -> int:
    """Send ``sig`` (unless the process is gone) and wait; SIGKILL if it outlives ``timeout``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(10)


def _close_pipes(process: subprocess.Popen[str]) -> None:
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError, ValueError):
                pipe.close()


def _pump(stream: Iterable[str], lines: list[str], on_line: Callable[[str], None] | None = None) -> threading.Thread:
    def run() -> None:
        for line in stream:
            lines.append(line)
            if on_line is not None:
                on_line(line)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for_pattern(
    text: Callable[[], str], pattern: str | re.Pattern[str], timeout: float, what: str
) -> re.Match[str]:
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    found: list[re.Match[str]] = []

    def seen() -> bool:
        match = regex.search(text())
        if match:
            found.append(match)
        return match is not None

    if not wait_for(seen, timeout):
        raise AssertionError(f"{regex.pattern!r} not in {what} within {timeout}s:\n{text()}")
    return found[-1]


# --- gateway processes -------------------------------------------------------------------------


def gateway_database_url() -> str:
    """pytest-django's test database, as a ``DATABASE_URL`` for a gateway subprocess."""
    db = connections["default"].settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def gateway_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment (minus pytest's) on the test database, Redis and prefix."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": gateway_database_url(),
            "CODEXGW_REDIS_PREFIX": settings.CODEXGW_REDIS_PREFIX,
            "PYTHONUNBUFFERED": "1",
            # SIGTERM drains (codexgw/drain.py): no balancer to wait for, and a short bound.
            "CODEXGW_DRAIN_READINESS_DELAY": "0",
            "CODEXGW_DRAIN_TIMEOUT": "5s",
        }
    )
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    env.update(extra or {})
    return env


@dataclass
class GatewayProcess:
    """A real gateway (``manage.py serve``) in a subprocess, on the test database.

    ``output`` is stdout and stderr interleaved, line by line, filled by a background thread.
    """

    process: subprocess.Popen[str]
    base_url: str = ""
    output: list[str] = field(default_factory=list)
    name: str = "gateway"
    _reader: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls,
        *,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "gateway",
        timeout: float = GATEWAY_START_TIMEOUT,
    ) -> GatewayProcess:
        """Start one process and wait until it announces its address (or fail, reaping it)."""
        gateway = cls.spawn(env=env, host=host, port=port, name=name)
        gateway.wait_ready(timeout)
        return gateway

    @classmethod
    def spawn(
        cls, *, env: Mapping[str, str] | None = None, host: str = "127.0.0.1", port: int = 0, name: str = "gateway"
    ) -> GatewayProcess:
        """Start one process without waiting for it (``wait_ready`` does)."""
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--host", host, "--port", str(port)],
            cwd=REPO,
            env=gateway_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        gateway = cls(process=process, name=name)
        assert process.stdout is not None

        def on_line(line: str) -> None:
            match = _GATEWAY_READY.search(line)
            if match and not gateway.base_url:
                gateway.base_url = match.group(1)

        gateway._reader = _pump(process.stdout, gateway.output, on_line)
        return gateway

    def wait_ready(self, timeout: float = GATEWAY_START_TIMEOUT) -> None:
        if not wait_for(lambda: self.base_url or self.process.poll() is not None, timeout) or not self.base_url:
            self.kill()
            raise AssertionError(f"{self.name} did not start (exit {self.process.poll()}):\n{self.log()}")

    @property
    def host_port(self) -> str:
        return self.base_url.removeprefix("http://")

    @property
    def ws_base_url(self) -> str:
        return "ws://" + self.host_port

    @property
    def port(self) -> int:
        return int(self.host_port.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return "".join(self.output)

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
        """The first match of ``pattern`` in the output, waiting up to ``timeout`` (AssertionError)."""
        return _wait_for_pattern(self.log, pattern, timeout, f"{self.name}'s log")

    def kill(self) -> int:
        """SIGKILL, as in a crash: no goodbye to Redis or to connected peers."""
        return self._stop(signal.SIGKILL, 10.0)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM (the drain, then a graceful stop), SIGKILL if it takes longer than ``timeout``."""
        return self._stop(signal.SIGTERM, timeout)

    def _stop(self, sig: int, timeout: float) -> int:
        code = reap(self.process, sig, timeout)
        if self._reader is not None:
            self._reader.join(5)
        _close_pipes(self.process)
        return code


class GatewayCluster:
    """N gateway processes on the same test database, Redis and prefix."""

    def __init__(self, processes: list[GatewayProcess]) -> None:
        self.processes = processes

    @classmethod
    def start(
        cls, count: int = 2, *, env: Mapping[str, str] | None = None, timeout: float = GATEWAY_START_TIMEOUT
    ) -> GatewayCluster:
        """Start ``count`` processes in parallel; if any fails to start, all are reaped."""
        if count < 1:
            raise ValueError("a cluster has at least one process")
        cluster = cls([])
        try:
            for index in range(count):
                cluster.processes.append(GatewayProcess.spawn(env=env, name=f"gateway[{index}]"))
            for gateway in cluster.processes:
                gateway.wait_ready(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def __getitem__(self, index: int) -> GatewayProcess:
        return self.processes[index]

    def __len__(self) -> int:
        return len(self.processes)

    def __iter__(self) -> Iterator[GatewayProcess]:
        return iter(self.processes)

    def alive(self) -> list[GatewayProcess]:
        return [gateway for gateway in self.processes if gateway.alive()]

    def log(self) -> str:
        """Every process's output, each under a header (for assertion messages)."""
        return "\n".join(f"===== {gateway.name} ({gateway.base_url}) =====\n{gateway.log()}" for gateway in self)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM all at once, then reap each (SIGKILL after ``timeout``)."""
        for gateway in self.processes:
            if gateway.alive():
                with contextlib.suppress(ProcessLookupError):
                    gateway.process.terminate()
        for gateway in self.processes:
            gateway.terminate(timeout)


# --- the real codex exec-server ----------------------------------------------------------------


@dataclass(frozen=True)
class ExecutorCredentials:
    """An executor row in the test database and its registration token (the SigV4 secret)."""

    exe_id: str
    token: str


def exec_server_env(codex_home: Path, *, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed environment the executor runs with (nothing else leaks from the test's)."""
    codex_home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(codex_home)),
        "CODEX_HOME": str(codex_home),
        "RUST_LOG": "info",
        "NO_COLOR": "1",
    }
    env.update(extra or {})
    return env


@dataclass
class ExecServer:
    """A real ``codex exec-server`` subprocess; stderr (its log) and stdout captured line by line."""

    process: subprocess.Popen[str]
    args: list[str]
    stderr_lines: list[str] = field(default_factory=list)
    stdout_lines: list[str] = field(default_factory=list)
    _readers: list[threading.Thread] = field(default_factory=list, repr=False)

    @classmethod
    def spawn(cls, args: list[str], env: Mapping[str, str], cwd: Path | None = None) -> ExecServer:
        process = subprocess.Popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        server = cls(process=process, args=args)
        assert process.stdout is not None
        assert process.stderr is not None
        server._readers = [_pump(process.stderr, server.stderr_lines), _pump(process.stdout, server.stdout_lines)]
        return server

    @classmethod
    def remote(
        cls,
        codex_bin: Path,
        base_url: str,
        credentials: ExecutorCredentials,
        codex_home: Path,
        *,
        extra_args: Iterable[str] = (),
        extra_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ExecServer:
        """Exactly the command and credentials the admin shows an operator
        (``executors.executor_command``), with this binary and an allow-listed environment, run
        in ``cwd`` (default: the test's)."""
        launch = executor_launch(credentials.exe_id, credentials.token, base_url)
        args = [str(codex_bin), *launch.argv[1:], *extra_args]
        env = exec_server_env(codex_home, extra={**launch.env, **(extra_env or {})})
        return cls.spawn(args, env, cwd)

    @classmethod
    def listen(
        cls,
        codex_bin: Path,
        codex_home: Path,
        *,
        listen: str = "ws://127.0.0.1:0",
        concurrent_requests: int = 16,
        extra_args: Iterable[str] = (),
        timeout: float = 20.0,
    ) -> ExecServer:
        """``exec-server --listen ws://127.0.0.1:0``; returns once it printed its bound URL."""
        args = [
            str(codex_bin),
            "exec-server",
            "--listen",
            listen,
            "--concurrent-requests",
            str(concurrent_requests),
            *extra_args,
        ]
        server = cls.spawn(args, exec_server_env(codex_home))
        try:
            server.wait_for_stdout(r"^ws://\S+", timeout)
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def listen_url(self) -> str:
        """The URL a ``listen`` server bound (from its stdout)."""
        match = re.search(r"^(ws://\S+)", self.stdout(), re.MULTILINE)
        if match is None:
            raise AssertionError(f"exec-server printed no URL:\n{self.stdout()}\n{self.log()}")
        return match.group(1)

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """stderr (codex logs there), without ANSI colours."""
        return strip_ansi("".join(self.stderr_lines))

    def stdout(self) -> str:
        return "".join(self.stdout_lines)

    def output(self) -> str:
        return f"--- stdout ---\n{self.stdout()}--- stderr ---\n{self.log()}"

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 20.0) -> re.Match[str]:
        """The first match of ``pattern`` in stderr, waiting up to ``timeout`` (AssertionError)."""
        return _wait_for_pattern(self.log, pattern, timeout, "exec-server's log")

    def wait_for_stdout(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        return _wait_for_pattern(self.stdout, re.compile(pattern, re.MULTILINE), timeout, "exec-server's stdout")

    def wait_exit(self, timeout: float) -> int:
        """The exit code, waiting up to ``timeout`` (AssertionError if it is still running)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"exec-server still running after {timeout}s:\n{self.output()}") from None

    def kill(self) -> int:
        return self._stop(signal.SIGKILL, 10.0)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, SIGKILL after ``timeout``; idempotent. Returns the exit code."""
        return self._stop(signal.SIGTERM, timeout)

    def _stop(self, sig: int, timeout: float) -> int:
        code = reap(self.process, sig, timeout)
        for reader in self._readers:
            reader.join(5)
        _close_pipes(self.process)
        return code


# --- TCP proxy that can cut connections --------------------------------------------------------


class TcpCutProxy:
    """A TCP proxy on 127.0.0.1 (ephemeral port) to ``target``, on its own thread and event loop.

    Usable from sync and async tests alike. ``cut()`` aborts every connection proxied so far (both
    the client's and the upstream socket; with ``reset=True`` an RST, as a dead peer or middlebox
    would produce, otherwise a FIN) while the listener keeps accepting new ones.
    ``retarget()`` changes where new connections go; while ``refusing`` is set, new connections
    are aborted at once (a peer that is down); ``freeze()``/``thaw()`` stop and resume forwarding
    without closing (a silent middlebox). Counters: ``bytes_up`` (client → target),
    ``bytes_down`` (target → client), ``connections_total``, ``active_connections``,
    ``failed_upstream``, ``cuts``.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target: tuple[str, int] = (target_host, target_port)
        self.host = host
        self.port = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections_total = 0
        self.failed_upstream = 0
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="TcpCutProxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._stopped = False
        self._rotation: list[tuple[str, int]] = []
        self.refusing = False  # new connections are aborted at once (the target looks down)
        self._flowing = threading.Event()  # cleared by freeze(): nothing is forwarded either way
        self._flowing.set()

    @classmethod
    def to_url(cls, url: str) -> TcpCutProxy:
        """A started proxy to the host:port of ``url`` (http://, ws://)."""
        host_port = url.split("://", 1)[-1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        return cls(host, int(port)).start()

    def start(self) -> TcpCutProxy:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._handle, self.host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __enter__(self) -> TcpCutProxy:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, scheme: str = "http", path: str = "") -> str:
        return f"{scheme}://{self.address}{path}"

    @property
    def active_connections(self) -> int:
        return len(self._pairs)

    def retarget(self, host: str, port: int) -> None:
        """New connections go to host:port; live ones keep their upstream until cut."""
        self.target = (host, port)
        self._rotation = []

    def round_robin(self, targets: list[tuple[str, int]]) -> None:
        """New connections go to each of ``targets`` in turn, like a load balancer."""
        self._rotation = list(targets)

    def freeze(self) -> None:
        """Stop forwarding in both directions without closing anything (a middlebox that went
        silent): bytes read meanwhile are held, and TCP flow control stops both peers."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again, held bytes and closes included."""
        self._flowing.set()

    def cut(self, *, reset: bool = True, timeout: float = 5.0) -> int:
        """Abort every live proxied connection (both sides); returns how many were cut."""
        return int(self._run(self._cut(reset), timeout))

    def wait_for_connections(self, count: int, timeout: float = 10.0) -> bool:
        """Until at least ``count`` connections are live."""
        return wait_for(lambda: self.active_connections >= count, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, abort all connections, stop the loop thread. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._run(self._shutdown(), timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    # internals (run on the proxy's loop)

    def _run(self, coroutine: Any, timeout: float = 5.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_writer.transport.abort()
            return
        self.connections_total += 1
        if self._rotation:
            self.target = self._rotation[self.connections_total % len(self._rotation)]
        host, port = self.target
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except (OSError, TimeoutError):
            self.failed_upstream += 1
            client_writer.transport.abort()
            return
        pair = (client_writer, upstream_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._copy(client_reader, upstream_writer, up=True),
                self._copy(upstream_reader, client_writer, up=False),
            )
        except asyncio.CancelledError:
            pass  # shutdown: asyncio's stream callback would log a cancelled handler as an error
        finally:
            self._pairs.discard(pair)
            for writer in pair:
                writer.transport.abort()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        try:
            while data := await reader.read(65536):
                await self._unfrozen()
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
            await self._unfrozen()
            # Half-close: pass the peer's FIN on, keep the other direction going.
            if writer.can_write_eof() and not writer.transport.is_closing():
                writer.write_eof()
        except (ConnectionError, OSError):
            await self._unfrozen()  # a reset is passed on only once forwarding resumes
            writer.transport.abort()

    async def _unfrozen(self) -> None:
        # Set from the test's thread, so polled rather than awaited.
        while not self._flowing.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _cut(self, reset: bool) -> int:
        pairs = list(self._pairs)
        self._pairs.clear()
        for pair in pairs:
            for writer in pair:
                sock = writer.get_extra_info("socket")
                if reset and sock is not None:
                    with contextlib.suppress(OSError):
                        # linger on, 0 s: close() sends RST
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        self.cuts += 1
        await asyncio.sleep(0)
        return len(pairs)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut(reset=False)
        # Let the connection handlers finish (their sockets are aborted), so none is left pending.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others, timeout=2)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)


# --- JSON-RPC client -------------------------------------------------------------------------


class RpcConnectionClosed(ConnectionError):
    """The WebSocket closed while a call or a wait was pending."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"connection closed (code={code}, reason={reason!r})")
        self.code = code
        self.reason = reason


class RpcClient:
    """An async exec-server JSON-RPC client over a real WebSocket (``websockets`` library).

    Frames: one JSON object per text frame, no ``"jsonrpc"`` field, integer request ids.
    Incoming frames are sorted by a reader task: responses resolve their ``call``; frames with a
    ``method`` (notifications, and requests from the peer) queue for ``next_notification``;
    responses to no pending call and non-JSON/non-object frames queue for ``next_unmatched``.
    ``frames`` keeps every decoded incoming frame in order, for assertions and debugging.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Any] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._notifications: list[dict[str, Any]] = []
        self._unmatched: list[Any] = []
        self._changed = asyncio.Condition()
        self._closed = False
        self._reader = asyncio.create_task(self._read(), name="RpcClient reader")

    @classmethod
    async def connect(
        cls,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        open_timeout: float = 10.0,
        ping_interval: float | None = None,
        **kwargs: Any,
    ) -> RpcClient:
        """Open the WebSocket (no compression, 64 MiB messages). A refused upgrade raises
        ``websockets.exceptions.InvalidStatus`` (``.response.status_code``, ``.response.body``)."""
        ws = await ws_connect(
            url,
            additional_headers=dict(headers or {}),
            compression=None,
            max_size=64 * MiB,
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            **kwargs,
        )
        return cls(ws)

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # sending

    async def call(self, method: str, params: Any = None, timeout: float = 10.0) -> dict[str, Any]:
        """Send a request and return the whole response object (``result`` or ``error``)."""
        request_id = next(self._ids)
        message: dict[str, Any] = {"id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            if self._closed:
                raise RpcConnectionClosed(self.close_code, self.close_reason)
            await self.send_raw(json.dumps(message))
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                raise TimeoutError(f"no response to {method} (id {request_id}) within {timeout}s") from None
        finally:
            self._pending.pop(request_id, None)

    async def call_result(self, method: str, params: Any = None, timeout: float = 10.0) -> Any:
        """``call`` that expects success: returns ``result``, AssertionError on an ``error``."""
        response = await self.call(method, params, timeout)
        if "error" in response:
            raise AssertionError(f"{method} failed: {response['error']}")
        return response["result"]

    async def notify(self, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"method": method}
        if params is not None:
            message["params"] = params
        await self.send_raw(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        """One text frame, verbatim."""
        try:
            await self.ws.send(text)
        except ConnectionClosed:
            raise RpcConnectionClosed(self.close_code, self.close_reason) from None

    async def initialize(self, client_name: str = "e2e", resume_session_id: str | None = None) -> dict[str, Any]:
        """exec-server handshake: ``initialize`` then ``initialized``; returns the initialize result."""
        params: dict[str, Any] = {"clientName": client_name}
        if resume_session_id is not None:
            params["resumeSessionId"] = resume_session_id
        result: dict[str, Any] = await self.call_result("initialize", params)
        await self.notify("initialized", {})
        return result

    # receiving

    async def next_notification(self, method: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The oldest queued frame with a ``method`` (equal to ``method`` if given), waiting up to
        ``timeout``. Frames that do not match stay queued for later calls."""
        try:
            async with asyncio.timeout(timeout):
                found: dict[str, Any] = await self._take(
                    self._notifications, lambda n: method is None or n.get("method") == method
                )
                return found
        except TimeoutError:
            raise TimeoutError(f"no {method or 'any'} notification within {timeout}s") from None

    async def next_unmatched(self, timeout: float = 10.0) -> Any:
        """The oldest response to no pending call (e.g. ``id: -1`` parse errors) or undecodable frame."""
        try:
            async with asyncio.timeout(timeout):
                return await self._take(self._unmatched, lambda _: True)
        except TimeoutError:
            raise TimeoutError(f"no unmatched frame within {timeout}s") from None

    def drain_notifications(self) -> list[dict[str, Any]]:
        """Every queued notification, now, without waiting."""
        taken = list(self._notifications)
        self._notifications.clear()
        return taken

    async def _take(self, queue: list[Any], matches: Callable[[Any], bool]) -> Any:
        async with self._changed:
            while True:
                for index, item in enumerate(queue):
                    if matches(item):
                        return queue.pop(index)
                if self._closed:
                    raise RpcConnectionClosed(self.close_code, self.close_reason)
                await self._changed.wait()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                await self._dispatch(raw)
        except ConnectionClosed:
            pass
        finally:
            self._closed = True
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(RpcConnectionClosed(self.close_code, self.close_reason))
            async with self._changed:
                self._changed.notify_all()

    async def _dispatch(self, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = raw
        self.frames.append(message)
        async with self._changed:
            if not isinstance(message, dict):
                self._unmatched.append(message)
            elif "method" in message:
                self._notifications.append(message)
            elif isinstance(message.get("id"), int) and message["id"] in self._pending:
                future = self._pending[message["id"]]
                if not future.done():
                    future.set_result(message)
            else:
                self._unmatched.append(message)
            self._changed.notify_all()

    # closing

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_code(self) -> int | None:
        """The close code (1006 for a connection dropped without a close frame), None while open."""
        return self.ws.close_code

    @property
    def close_reason(self) -> str | None:
        return self.ws.close_reason

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        """Until the peer or the network closes the connection; returns the close code."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._reader)
        except TimeoutError:
            raise TimeoutError(f"connection still open after {timeout}s") from None
        return self.close_code

    async def close(self, code: int = 1000, reason: str = "", timeout: float = 5.0) -> None:
        """Close (idempotent) and stop the reader task."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self.ws.close(code, reason)
        if not self._reader.done():
            self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


def signed_upgrade_headers(credentials: ExecutorCredentials, host_port: str) -> dict[str, str]:
    """The SigV4 headers codex puts on its executor WebSocket upgrade, for clients that play an executor."""
    from tests.executors.test_sigv4 import sign

    signed = sign(
        method="GET",
        path=f"/codex-exec/{credentials.exe_id}",
        headers={"host": host_port},
        access_key_id=credentials.exe_id,
        secret=credentials.token,
        at=datetime.now(UTC),
    )
    return {"Authorization": signed["authorization"], "x-amz-date": signed["x-amz-date"]}


def app_gateway_env(
    tmp_path: Path, codex_bin: Path, model_name: str, model_url: str, agentserver_url: str
) -> dict[str, str]:
    """Environment of gateway processes serving the app role against a fake model and agentserver."""
    (tmp_path / "work").mkdir(exist_ok=True)
    return {
        "CODEXGW_ROLES": "exec,app",
        "CODEXGW_DATA_DIR": str(tmp_path / "data"),
        "CXG_CODEX_BIN": str(codex_bin),
        "CXG_TMP_ROOT": str(tmp_path / "homes"),
        "CXG_MODEL_PROVIDER": "fake",
        "CXG_MODEL_PROVIDER_NAME": "Fake",
        "CXG_MODEL": model_name,
        "CXG_MODEL_PROVIDER_BASE_URL": model_url,
        "CXG_MODEL_PROVIDER_ENV_KEY": "CXG_TEST_MODEL_KEY",
        "CXG_CODEX_API_KEY": "sk-fake",
        "CXG_PROJECT_TRUSTED_PATHS": str(tmp_path / "work"),
        "CXG_AGENTSERVER_INTERNAL_URL": agentserver_url,
        "CODEXGW_LOG_FORMAT": "text",
    }


# --- a real load balancer ---------------------------------------------------------------------

_HAPROXY_CONFIG = """\
global
    log stdout format raw local0 info
    stats socket {socket} mode 600 level admin
    maxconn 2000

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # An upgraded WebSocket is a tunnel: executors stay connected for hours.
    timeout tunnel 1h
    timeout client-fin 5s
    timeout http-request 10s

frontend gateway
    bind 127.0.0.1:{port}
    default_backend gateways

backend gateways
    balance roundrobin
    # Readiness decides: a draining gateway answers 503 and gets no new connections. Established
    # ones are left alone (no on-marked-down shutdown-sessions): closing them is the gateway's job.
    option httpchk GET /readyz
    http-check expect status 200
    default-server check inter 500ms fall 1 rise 2
{servers}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Balancer:
    """Debian's haproxy in the foreground (``-db``), round-robin over gateway processes with
    ``/readyz`` health checks every 500 ms (one failure marks a server down, two successes up).
    Servers are named ``g0``, ``g1``, … in the order given; ``states()`` reads haproxy's view."""

    process: subprocess.Popen[str]
    port: int
    socket_path: Path
    output: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def start(cls, targets: Iterable[str], work_dir: Path, timeout: float = 10.0) -> Balancer:
        """``targets``: gateway base URLs (``http://host:port``)."""
        work_dir.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(
            f"    server g{index} {url.removeprefix('http://').rstrip('/')}" for index, url in enumerate(targets)
        )
        port = _free_port()
        socket_path = work_dir / "haproxy.sock"
        config = work_dir / "haproxy.cfg"
        config.write_text(_HAPROXY_CONFIG.format(port=port, socket=socket_path, servers=servers))
        process = subprocess.Popen(
            ["haproxy", "-f", str(config), "-db"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        balancer = cls(process=process, port=port, socket_path=socket_path)
        balancer._reader = _pump(process.stdout, balancer.output)
        if not wait_for(lambda: balancer._accepts() or process.poll() is not None, timeout) or not balancer._accepts():
            balancer.stop()
            raise AssertionError(f"haproxy did not start (exit {process.poll()}):\n{balancer.log()}")
        return balancer

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self.socket_path.exists()
        except OSError:
            return False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        return "".join(self.output)

    def states(self) -> dict[str, str]:
        """Each server's status as haproxy sees it (``UP``, ``DOWN``, ``UP 1/2``, …)."""
        with socket.socket(socket.AF_UNIX) as admin:
            admin.settimeout(5)
            admin.connect(str(self.socket_path))
            admin.sendall(b"show stat\n")
            raw = b""
            while chunk := admin.recv(65536):
                raw += chunk
        lines = raw.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        servers = [row for row in rows if row["pxname"] == "gateways" and row["svname"] not in ("FRONTEND", "BACKEND")]
        return {row["svname"]: row["status"] for row in servers}

    def wait_for_states(self, expected: Mapping[str, str], timeout: float = 10.0) -> None:
        """Until every named server has the expected status (AssertionError otherwise)."""
        if not wait_for(lambda: all(self.states().get(name) == state for name, state in expected.items()), timeout):
            raise AssertionError(f"haproxy states {self.states()} != {dict(expected)} after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 5.0) -> int:
        code = reap(self.process, signal.SIGTERM, timeout)
        if self._reader is not None:
            self._reader.join(5)
        _close_pipes(self.process)
        return code


def mint_relay_ticket(gateway_base_url: str, workspace: str, user_id: str) -> RelayTicket:
    """A relay ticket minted over HTTP by the gateway at ``gateway_base_url``, for two new
    executors bound to ``workspace`` (source and destination)."""
    from executors import services  # the ORM: only once Django is set up (the bench imports this module first)

    exe_ids = []
    for name in ("src", "dst"):
        exe_id = services.register_executor(user_id).executor.exe_id
        services.bind_executor(workspace, exe_id, f"relay-{name}-{exe_id}", "", False)
        exe_ids.append(exe_id)
    client = RelayClient(gateway_base_url, settings.CXG_INTERNAL_SHARED_SECRET)
    return async_to_sync(client.create)(workspace, exe_ids[0], exe_ids[1], 600)


async def resume_session(
    url: str,
    headers: Mapping[str, str],
    session_id: str,
    *,
    name: str = "resume",
    timeout: float = 40.0,
    retry_any_error: bool = False,
) -> RpcClient:
    """Reconnect to ``url`` and resume ``session_id`` (``initialize {resumeSessionId}``, then
    ``initialized``), retrying while the executor is between processes: the upgrade refused (503),
    the connection cut, or the retryable error. Another error fails at once unless
    ``retry_any_error`` (the soak records failures instead of stopping)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            client = await RpcClient.connect(url, headers, open_timeout=5)
        except (InvalidStatus, OSError, TimeoutError) as error:
            last = error
            await asyncio.sleep(0.3)
            continue
        try:
            reply = await client.call("initialize", {"clientName": name, "resumeSessionId": session_id}, 10)
        except (RpcConnectionClosed, TimeoutError) as error:
            last = error
            await client.close()
            await asyncio.sleep(0.3)
            continue
        if "error" in reply:
            await client.close()
            if not retry_any_error:
                assert reply["error"].get("data") == {"retryable": True}, f"resume refused: {reply['error']}"
            last = reply["error"]
            await asyncio.sleep(0.3)
            continue
        assert reply["result"]["sessionId"] == session_id
        await client.notify("initialized", {})
        return client
    raise AssertionError(f"could not resume {session_id} within {timeout}s: {last!r}")
