"""One ``codex app-server`` per workspace, across the whole gateway cluster.

Ownership: a lease ``<prefix>appserver:<workspace_id>`` (Redis; process memory on the embedded
default) names the owning gateway process, its relay channel, the child's pid and loopback URL.
It is taken atomically (a process never takes a lease another live process holds), refreshed
by its owner every third of ``CXG_APP_SERVER_LEASE_TTL`` and expires when the owner dies, so
another process can take over. Callers that land on a process that does not own a workspace
get ``OwnedElsewhere`` with the lease and relay to ``lease.channel_name``.

Spawning holds a per-workspace asyncio lock across restore, config rendering, spawn and
readiness, with the lease already taken: two concurrent ``ensure_app_server`` calls spawn once,
and no loser ever deletes the winner's CODEX_HOME (app-gateway §10.14).

Activity: ``touch`` bumps one clock per workspace (the TUI proxy, the broker and env-mcp all
call it). Touches in a process that does not own the workspace are merged into the owner's
lease, so the owner's idle reaper sees every user of the workspace, wherever they connected.

Checkpoints: the children and their files live in the gateway processes, not in Celery
workers, so the periodic Celery task (``appgateway.tasks``) only publishes an
``appserver.checkpoint`` message to each owner's process channel; each owner then persists
its live workspaces itself, without stopping them. Beat keeps the single schedule for the
cluster, and a process that is busy or gone simply misses one round.

The process channel also carries ``appserver.shutdown`` (shutdown/restart requested from
another process); other message types go to handlers registered with ``on_process_message``
(the TUI proxy's relays).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import redis.asyncio
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from appgateway import codexhome, persistence
from appgateway.codexhome import McpServer
from bridge import process_rpc
from codexgw import redis as gwredis

logger = logging.getLogger(__name__)
child_logger = logging.getLogger("appgateway.codex")

# This gateway process, as named in leases (host, pid and a random part: pids are reused).
PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

START_TIMEOUT = 30.0  # until the child prints its URL (first start unpacks codex's bundled skills)
READY_TIMEOUT = 5.0  # then until /readyz answers 200
AFTER_START_TIMEOUT = 15.0  # SpawnConfig.after_start
READY_POLL = 0.05
MAX_LOG_LINE = 4000
REAPER_MAX_TICK = 5.0  # cheap (no I/O unless a child is idle); bounds how late a reap can be
CHECKPOINT = "appserver.checkpoint"
SHUTDOWN = "appserver.shutdown"
# The child's working directory, which becomes a thread's cwd when the client names none (the TUI
# does not): the model's tools run on executors, so no directory of the gateway (CODEX_HOME least
# of all) may pass for where it works. "/" holds nothing of the gateway's and exists everywhere.
CHILD_CWD = "/"
_WS_URL = re.compile(r"ws://[^\s\x1b]+")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class OwnedElsewhere(RuntimeError):
    """Another gateway process owns the workspace's app-server; relay to ``lease.channel_name``."""

    def __init__(self, workspace_id: str, lease: LeaseInfo) -> None:
        super().__init__(f"workspace {workspace_id} is served by gateway process {lease.process_id}")
        self.workspace_id = workspace_id
        self.lease = lease


class SpawnError(RuntimeError):
    pass


@dataclass(frozen=True)
class AppServerHandle:
    workspace_id: str
    ws_url: str
    http_url: str
    pid: int
    codex_home: Path
    started_at: float


@dataclass(frozen=True)
class LeaseInfo:
    process_id: str
    channel_name: str
    pid: int  # the child's; 0 while it is starting
    ws_url: str  # "" while starting
    started_at: float
    last_activity: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> LeaseInfo:
        data = json.loads(raw)
        return cls(
            process_id=str(data["process_id"]),
            channel_name=str(data["channel_name"]),
            pid=int(data["pid"]),
            ws_url=str(data["ws_url"]),
            started_at=float(data["started_at"]),
            last_activity=float(data["last_activity"]),
        )


@dataclass(frozen=True)
class LiveSession:
    """One workspace's app-server, as the admin lists it (cluster-wide, from the leases)."""

    workspace_id: str
    process_id: str
    pid: int
    ws_url: str
    started_at: float
    last_activity: float

    @property
    def uptime(self) -> float:
        return max(0.0, time.time() - self.started_at)


@dataclass(frozen=True)
class SpawnConfig:
    """Per-spawn additions from the builder: environment (e.g. a workspace model token) and MCP servers."""

    env: Mapping[str, str] = field(default_factory=dict)
    mcp_servers: Sequence[McpServer] = ()
    # The model provider's base_url for this spawn (e.g. the gateway's credential-refreshing proxy);
    # None keeps CXG_MODEL_PROVIDER_BASE_URL.
    provider_base_url: str | None = None
    # Run once the app-server answers, before anyone else may use it (e.g. registering the
    # workspace's executors as environments). At most AFTER_START_TIMEOUT; failures are logged and
    # the app-server is kept.
    after_start: Callable[[AppServerHandle], Awaitable[None]] | None = None


SpawnBuilder = Callable[[str], Awaitable[SpawnConfig]]
MessageHandler = process_rpc.MessageHandler

# Process-wide, loop-independent state: touch() may be called from any thread.
_activity: dict[str, float] = {}
_dirty: set[str] = set()
_builder: SpawnBuilder | None = None
StopHook = Callable[[str], Awaitable[None]]
_stop_hooks: list[StopHook] = []


# --- leases -----------------------------------------------------------------------------------


class LeaseStore(Protocol):
    async def acquire(self, workspace_id: str, lease: LeaseInfo) -> LeaseInfo | None:
        """Take the lease (or re-take our own); returns the other holder if it is taken."""

    async def refresh(self, workspace_id: str, lease: LeaseInfo) -> LeaseInfo | None:
        """Rewrite and extend our lease (keeping the later last_activity); None if another process holds it."""

    async def release(self, workspace_id: str, process_id: str) -> None: ...

    async def get(self, workspace_id: str) -> LeaseInfo | None: ...

    async def bump_activity(self, workspace_id: str, at: float) -> None:
        """Raise the lease's last_activity to ``at`` (a touch seen by a non-owner)."""

    async def close(self) -> None: ...


class MemoryLeaseStore:
    """The embedded default: one process, so leases live in its memory (any thread, any loop)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[LeaseInfo, float]] = {}
        self._lock = threading.Lock()  # the admin reads leases from other threads

    def _live(self, workspace_id: str) -> LeaseInfo | None:
        entry = self._entries.get(workspace_id)
        if entry is None or entry[1] <= time.monotonic():
            self._entries.pop(workspace_id, None)
            return None
        return entry[0]

    def _put(self, workspace_id: str, lease: LeaseInfo) -> None:
        self._entries[workspace_id] = (lease, time.monotonic() + settings.CXG_APP_SERVER_LEASE_TTL)

    async def acquire(self, workspace_id: str, lease: LeaseInfo) -> LeaseInfo | None:
        with self._lock:
            current = self._live(workspace_id)
            if current is not None and current.process_id != lease.process_id:
                return current
            self._put(workspace_id, lease)
            return None

    async def refresh(self, workspace_id: str, lease: LeaseInfo) -> LeaseInfo | None:
        with self._lock:
            current = self._live(workspace_id)
            if current is not None and current.process_id != lease.process_id:
                return None
            if current is not None and current.last_activity > lease.last_activity:
                lease = replace(lease, last_activity=current.last_activity)
            self._put(workspace_id, lease)
            return lease

    async def release(self, workspace_id: str, process_id: str) -> None:
        with self._lock:
            current = self._live(workspace_id)
            if current is not None and current.process_id == process_id:
                del self._entries[workspace_id]

    async def get(self, workspace_id: str) -> LeaseInfo | None:
        with self._lock:
            return self._live(workspace_id)

    async def bump_activity(self, workspace_id: str, at: float) -> None:
        with self._lock:
            current = self._live(workspace_id)
            if current is not None and at > current.last_activity:
                self._entries[workspace_id] = (replace(current, last_activity=at), self._entries[workspace_id][1])

    def all(self) -> dict[str, LeaseInfo]:
        with self._lock:
            return {ws: lease for ws in list(self._entries) if (lease := self._live(ws)) is not None}

    async def close(self) -> None:
        return None


# Take the lease unless another process holds it; returns the holder's JSON, or nil when taken.
_ACQUIRE = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['process_id'] ~= ARGV[2] then return raw end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return false
"""
# Rewrite our lease (re-taking it if it expired), keeping the later last_activity; nil if lost.
_REFRESH = """
local new = cjson.decode(ARGV[1])
local raw = redis.call('GET', KEYS[1])
if raw then
  local current = cjson.decode(raw)
  if current['process_id'] ~= new['process_id'] then return false end
  if current['last_activity'] > new['last_activity'] then new['last_activity'] = current['last_activity'] end
end
local encoded = cjson.encode(new)
redis.call('SET', KEYS[1], encoded, 'PX', ARGV[2])
return encoded
"""
_RELEASE = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['process_id'] == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
_BUMP = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local current = cjson.decode(raw)
if tonumber(ARGV[1]) <= current['last_activity'] then return 0 end
current['last_activity'] = tonumber(ARGV[1])
redis.call('SET', KEYS[1], cjson.encode(current), 'KEEPTTL')
return 1
"""


def _lease_key(workspace_id: str) -> str:
    return gwredis.key("appserver", workspace_id)


class RedisLeaseStore:
    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(_RELEASE)
        self._bump = client.register_script(_BUMP)

    @staticmethod
    def _ttl_ms() -> int:
        return int(settings.CXG_APP_SERVER_LEASE_TTL * 1000)

    async def acquire(self, workspace_id: str, lease: LeaseInfo) -> LeaseInfo | None:
        holder = await self._acquire(
            keys=[_lease_key(workspace_id)], args=[lease.to_json(), lease.process_id, self._ttl_ms()]
        )
        return LeaseInfo.from_json(holder) if isinstance(holder, str) and holder else None

    async def refresh(self, workspace_id: str, lease: LeaseInfo) -> LeaseInfo | None:
        stored = await self._refresh(keys=[_lease_key(workspace_id)], args=[lease.to_json(), self._ttl_ms()])
        return LeaseInfo.from_json(stored) if isinstance(stored, str) and stored else None

    async def release(self, workspace_id: str, process_id: str) -> None:
        await self._release(keys=[_lease_key(workspace_id)], args=[process_id])

    async def get(self, workspace_id: str) -> LeaseInfo | None:
        raw = await self._client.get(_lease_key(workspace_id))
        return LeaseInfo.from_json(raw) if isinstance(raw, str) and raw else None

    async def bump_activity(self, workspace_id: str, at: float) -> None:
        await self._bump(keys=[_lease_key(workspace_id)], args=[repr(at)])

    async def close(self) -> None:
        await self._client.aclose()


@cache
def _memory_store() -> MemoryLeaseStore:
    return MemoryLeaseStore()


def _all_leases() -> dict[str, LeaseInfo]:
    """Every live lease in the cluster (blocking; for sync callers)."""
    client = gwredis.sync_client()
    if client is None:
        return _memory_store().all()
    prefix = _lease_key("")
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    leases: dict[str, LeaseInfo] = {}
    for key, raw in zip(keys, client.mget(keys) if keys else [], strict=True):
        if isinstance(raw, str) and raw:
            leases[key[len(prefix) :]] = LeaseInfo.from_json(raw)
    return leases


# --- the child process ------------------------------------------------------------------------


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child when the gateway dies, so a crashed
    gateway leaves no orphaned app-server behind while its lease passes to another process."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child only calls it
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the gateway died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def _child_env(home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """An allow-list, built explicitly: the gateway's own secrets never reach codex or its MCP children."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", str(home)),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "NO_COLOR": "1",
    }
    if os.environ.get("RUST_LOG"):
        env["RUST_LOG"] = os.environ["RUST_LOG"]
    key_name = settings.CXG_MODEL_PROVIDER_ENV_KEY
    model_key = settings.CXG_CODEX_API_KEY or os.environ.get(key_name, "")
    if model_key:
        env[key_name] = model_key
    env.update(extra)
    env["CODEX_HOME"] = str(home)
    return env


@dataclass
class _Child:
    handle: AppServerHandle
    process: asyncio.subprocess.Process
    drains: list[asyncio.Task[None]]

    def alive(self) -> bool:
        return self.process.returncode is None


async def _drain(stream: asyncio.StreamReader, workspace_id: str, url: asyncio.Future[str]) -> None:
    """Read one pipe of the child to its end: the first ws:// URL resolves ``url``; every line
    goes to the gateway's log, truncated. Never stops reading, so the child never blocks on a full pipe."""
    while True:
        try:
            line = await stream.readline()
        except ValueError:
            continue  # a line over the reader's limit: asyncio discarded it
        if not line:
            return
        text = _ANSI.sub("", line.decode("utf-8", "replace")).rstrip()
        if not url.done() and (match := _WS_URL.search(text)):
            url.set_result(match.group(0))
        if text:
            child_logger.info("[codex-app-server %s] %s", workspace_id, text[:MAX_LOG_LINE])


async def _http_ok(host: str, port: int, path: str) -> bool:
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = status.split()
    return len(parts) >= 2 and parts[1] == b"200"


def _signal_group(pid: int, sig: int) -> None:
    # The child leads its own process group (start_new_session): its MCP servers go with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _stop_process(process: asyncio.subprocess.Process, grace: float) -> None:
    if process.returncode is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            logger.warning("app-server ignored SIGTERM, killing it", extra={"pid": process.pid})
        _signal_group(process.pid, signal.SIGKILL)  # also whatever it left in its group
    await process.wait()


async def _wait_for_url(process: asyncio.subprocess.Process, url: asyncio.Future[str]) -> str:
    exited: asyncio.Future[Any] = asyncio.ensure_future(process.wait())
    waiting: set[asyncio.Future[Any]] = {url, exited}
    try:
        await asyncio.wait(waiting, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
    if url.done():
        return url.result()
    if process.returncode is not None:
        raise SpawnError(f"codex app-server exited with {process.returncode} before listening")
    raise SpawnError(f"codex app-server printed no ws:// URL within {START_TIMEOUT}s")


async def _spawn_child(workspace_id: str, home: Path, env: Mapping[str, str]) -> _Child:
    try:
        process = await asyncio.create_subprocess_exec(
            settings.CXG_CODEX_BIN,
            "app-server",
            "--listen",
            "ws://127.0.0.1:0",
            cwd=CHILD_CWD,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent_hook(),
        )
    except OSError as exc:
        raise SpawnError(f"cannot run {settings.CXG_CODEX_BIN!r}: {exc}") from exc
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    assert process.stdout is not None
    assert process.stderr is not None
    drains = [
        asyncio.create_task(_drain(process.stdout, workspace_id, url), name=f"codex stdout {workspace_id}"),
        asyncio.create_task(_drain(process.stderr, workspace_id, url), name=f"codex stderr {workspace_id}"),
    ]
    try:
        ws_url = await _wait_for_url(process, url)
        parsed = urlsplit(ws_url)
        if parsed.hostname != "127.0.0.1" or parsed.port is None:
            raise SpawnError(f"codex app-server listens on {ws_url!r}, not on 127.0.0.1")
        deadline = time.monotonic() + READY_TIMEOUT
        while not await _http_ok("127.0.0.1", parsed.port, "/readyz"):
            if process.returncode is not None:
                raise SpawnError(f"codex app-server exited with {process.returncode} before it was ready")
            if time.monotonic() >= deadline:
                raise SpawnError(f"codex app-server /readyz never returned 200 within {READY_TIMEOUT}s")
            await asyncio.sleep(READY_POLL)
    except BaseException:
        await _stop_process(process, 0)
        await asyncio.gather(*drains, return_exceptions=True)
        raise
    handle = AppServerHandle(
        workspace_id=workspace_id,
        ws_url=f"ws://127.0.0.1:{parsed.port}",
        http_url=f"http://127.0.0.1:{parsed.port}",
        pid=process.pid,
        codex_home=home,
        started_at=time.time(),
    )
    return _Child(handle=handle, process=process, drains=drains)


def _prepare_home(workspace_id: str, config: SpawnConfig) -> Path:
    """Fresh directory, the persisted archive, then a freshly rendered config.toml (blocking)."""
    text = codexhome.render_config_toml(codexhome.config_from_settings(config.mcp_servers, config.provider_base_url))
    path = codexhome.home_path(workspace_id)
    # Only the lease holder gets here: whatever is left on disk is a dead child's; the archive is the truth.
    codexhome.remove_home(path)
    home = codexhome.create_home(workspace_id)
    try:
        persistence.restore(workspace_id, home)
        codexhome.write_config(home, text)
        codexhome.write_config(home, codexhome.ENVIRONMENTS_TOML, codexhome.ENVIRONMENTS_FILE)
    except BaseException:
        codexhome.remove_home(home)
        raise
    return home


# --- per event loop state ---------------------------------------------------------------------


class _State:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        client = gwredis.async_client()
        self.store: LeaseStore = RedisLeaseStore(client) if client is not None else _memory_store()
        self.children: dict[str, _Child] = {}
        self.leases: dict[str, LeaseInfo] = {}  # leases this process holds, including while spawning
        self.lease_activity: dict[str, float] = {}  # last_activity as merged in our lease
        self.locks: dict[str, asyncio.Lock] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.background_started = False

    def lock(self, workspace_id: str) -> asyncio.Lock:
        return self.locks.setdefault(workspace_id, asyncio.Lock())

    def spawn_task(self, coroutine: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def start_background(self) -> None:
        if not self.background_started:
            self.background_started = True
            self.spawn_task(_refresh_loop(self), "appserver lease refresh")
            self.spawn_task(_reaper_loop(self), "appserver idle reaper")


_STATE: _State | None = None


def _state() -> _State:
    global _STATE
    loop = asyncio.get_running_loop()
    if _STATE is None or _STATE.loop is not loop:
        _STATE = _State(loop)
    _STATE.start_background()
    return _STATE


# --- background loops -------------------------------------------------------------------------


async def _refresh_loop(state: _State) -> None:
    while True:
        await asyncio.sleep(settings.CXG_APP_SERVER_LEASE_TTL / 3)
        try:
            await _refresh_once(state)
        except Exception:
            logger.exception("app-server lease refresh failed")


async def _refresh_once(state: _State) -> None:
    for workspace_id, lease in list(state.leases.items()):
        current = replace(lease, last_activity=max(lease.last_activity, _activity.get(workspace_id, 0.0)))
        stored = await state.store.refresh(workspace_id, current)
        if stored is None:
            logger.error("lost the app-server lease to another process", extra={"workspace_id": workspace_id})
            state.spawn_task(_abandon(state, workspace_id), f"abandon {workspace_id}")
            continue
        state.lease_activity[workspace_id] = stored.last_activity
    for workspace_id in list(_dirty):
        _dirty.discard(workspace_id)
        if workspace_id not in state.leases and workspace_id in _activity:
            await state.store.bump_activity(workspace_id, _activity[workspace_id])
    stale = time.time() - settings.CXG_IDLE_SHUTDOWN
    for workspace_id, at in list(_activity.items()):
        if at < stale and workspace_id not in state.leases:
            _activity.pop(workspace_id, None)  # touched here once, owned elsewhere: nothing left to merge


async def _reaper_loop(state: _State) -> None:
    while True:
        await asyncio.sleep(min(REAPER_MAX_TICK, settings.CXG_IDLE_SHUTDOWN / 4))
        for workspace_id in list(state.children):
            if time.time() - last_activity(workspace_id) >= settings.CXG_IDLE_SHUTDOWN:
                try:
                    await shutdown(workspace_id, "idle")
                except Exception:
                    logger.exception("idle shutdown failed", extra={"workspace_id": workspace_id})


async def _on_checkpoint(message: dict[str, Any]) -> None:
    _state().spawn_task(checkpoint_all(), "appserver checkpoint")


async def _on_shutdown(message: dict[str, Any]) -> None:
    workspace_id = str(message["workspace_id"])
    _state().spawn_task(shutdown(workspace_id, str(message.get("reason", "requested"))), f"shutdown {workspace_id}")


def install() -> None:
    """Handle the supervisor's own messages on this process's channel (``AppGatewayConfig.ready()``)."""
    process_rpc.on_message(CHECKPOINT, _on_checkpoint)
    process_rpc.on_message(SHUTDOWN, _on_shutdown)


# --- lifecycle internals (callers hold the workspace lock) ------------------------------------


async def _persist(workspace_id: str, home: Path) -> None:
    await asyncio.to_thread(persistence.persist, workspace_id, home)


async def _remove(home: Path) -> None:
    try:
        await asyncio.to_thread(codexhome.remove_home, home)
    except Exception:
        logger.exception("could not remove CODEX_HOME", extra={"codex_home": str(home)})


async def _still_ours(state: _State, workspace_id: str) -> bool:
    lease = state.leases.get(workspace_id)
    return lease is not None and await state.store.refresh(workspace_id, lease) is not None


async def _release(state: _State, workspace_id: str) -> None:
    state.leases.pop(workspace_id, None)
    state.lease_activity.pop(workspace_id, None)
    try:
        await state.store.release(workspace_id, PROCESS_ID)
    except Exception:
        logger.exception("could not release the app-server lease", extra={"workspace_id": workspace_id})


def add_stop_hook(hook: StopHook) -> None:
    """Call ``hook(workspace_id)`` whenever this process's app-server for a workspace is gone
    (stopped, crashed, or given up to another owner) — e.g. to revoke its spawn's tokens."""
    _stop_hooks.append(hook)


async def _stopped(workspace_id: str) -> None:
    for hook in _stop_hooks:
        try:
            await hook(workspace_id)
        except Exception:
            logger.exception("app-server stop hook failed", extra={"workspace_id": workspace_id})


async def _bury(workspace_id: str, child: _Child) -> None:
    """A child that died on its own: save what it left (best effort), then clear its directory."""
    await asyncio.gather(*child.drains, return_exceptions=True)
    await _stopped(workspace_id)
    logger.warning(
        "app-server exited unexpectedly",
        extra={"workspace_id": workspace_id, "pid": child.handle.pid, "returncode": child.process.returncode},
    )
    try:
        await _persist(workspace_id, child.handle.codex_home)
    except Exception:
        logger.exception("could not persist a crashed app-server's CODEX_HOME", extra={"workspace_id": workspace_id})
    await _remove(child.handle.codex_home)


async def _abandon(state: _State, workspace_id: str) -> None:
    """Our lease went to another process: stop our child without persisting over the new owner's state."""
    async with state.lock(workspace_id):
        state.leases.pop(workspace_id, None)
        child = state.children.pop(workspace_id, None)
        if child is not None:
            await _stop_process(child.process, settings.CXG_APP_SERVER_STOP_GRACE)
            await asyncio.gather(*child.drains, return_exceptions=True)
            await _stopped(workspace_id)


async def _shutdown_locked(state: _State, workspace_id: str, reason: str) -> None:
    child = state.children.pop(workspace_id, None)
    if child is None:
        return
    logger.info("stopping app-server", extra={"workspace_id": workspace_id, "reason": reason, "pid": child.handle.pid})
    await _stop_process(child.process, settings.CXG_APP_SERVER_STOP_GRACE)
    await asyncio.gather(*child.drains, return_exceptions=True)
    await _stopped(workspace_id)
    _activity.pop(workspace_id, None)
    try:
        if await _still_ours(state, workspace_id):
            await _persist(workspace_id, child.handle.codex_home)
        else:
            logger.error("lease lost before shutdown: not persisting", extra={"workspace_id": workspace_id})
    finally:
        await _remove(child.handle.codex_home)
        await _release(state, workspace_id)


# --- public API -------------------------------------------------------------------------------


def set_spawn_builder(builder: SpawnBuilder | None) -> None:
    """Install the per-spawn builder (env additions such as a workspace model token, MCP servers).
    Its errors propagate from ``ensure_app_server`` and nothing is spawned."""
    global _builder
    _builder = builder


def on_process_message(message_type: str, handler: MessageHandler) -> None:
    """Handle ``message_type`` arriving on this process's channel (``process_channel()``).
    Handlers run in arrival order on the channel's reader task, so they must return quickly."""
    if message_type in (CHECKPOINT, SHUTDOWN):
        raise ValueError(f"{message_type} is the supervisor's own message type")
    process_rpc.on_message(message_type, handler)


process_channel = process_rpc.process_channel


def touch(workspace_id: str) -> None:
    """Record activity on the workspace (any thread). Resets its idle clock cluster-wide."""
    _activity[workspace_id] = time.time()
    _dirty.add(workspace_id)


def last_activity(workspace_id: str) -> float:
    """The latest activity this process knows of: its own touches and, for workspaces it owns,
    the touches other processes merged into the lease (as of the last refresh)."""
    state = _STATE
    merged = state.lease_activity.get(workspace_id, 0.0) if state is not None else 0.0
    child = state.children.get(workspace_id) if state is not None else None
    started = child.handle.started_at if child is not None else 0.0
    return max(_activity.get(workspace_id, 0.0), merged, started)


async def ensure_app_server(workspace_id: str) -> AppServerHandle:
    """The workspace's running app-server in this process, spawning it if needed.

    Raises ``OwnedElsewhere`` when another gateway process owns the workspace, ``SpawnError``
    when codex cannot be started, and whatever the spawn builder or the restore raise."""
    codexhome.validate_workspace_id(workspace_id)
    state = _state()
    child = state.children.get(workspace_id)
    if child is not None and child.alive():
        touch(workspace_id)
        return child.handle
    channel = await process_channel()
    async with state.lock(workspace_id):
        child = state.children.get(workspace_id)
        if child is not None and child.alive():
            touch(workspace_id)
            return child.handle
        if child is not None:
            del state.children[workspace_id]
            await _bury(workspace_id, child)
        now = time.time()
        lease = LeaseInfo(PROCESS_ID, channel, pid=0, ws_url="", started_at=now, last_activity=now)
        holder = await state.store.acquire(workspace_id, lease)
        if holder is not None:
            raise OwnedElsewhere(workspace_id, holder)
        state.leases[workspace_id] = lease
        try:
            config = await _builder(workspace_id) if _builder is not None else SpawnConfig()
            home = await asyncio.to_thread(_prepare_home, workspace_id, config)
            try:
                child = await _spawn_child(workspace_id, home, _child_env(home, config.env))
            except BaseException:
                await _remove(home)
                raise
        except BaseException:
            await _release(state, workspace_id)
            raise
        lease = replace(lease, pid=child.handle.pid, ws_url=child.handle.ws_url, started_at=child.handle.started_at)
        if await state.store.refresh(workspace_id, lease) is None:
            state.leases.pop(workspace_id, None)
            await _stop_process(child.process, 0)
            await asyncio.gather(*child.drains, return_exceptions=True)
            # The directory stays: on this machine it may already be the new owner's.
            raise SpawnError(f"lost the lease of workspace {workspace_id} while spawning")
        state.leases[workspace_id] = lease
        if config.after_start is not None:
            await _after_start(config.after_start, child.handle)
        state.children[workspace_id] = child
        touch(workspace_id)
        logger.info("app-server started", extra={"workspace_id": workspace_id, "pid": child.handle.pid})
        return child.handle


async def _after_start(hook: Callable[[AppServerHandle], Awaitable[None]], handle: AppServerHandle) -> None:
    try:
        async with asyncio.timeout(AFTER_START_TIMEOUT):
            await hook(handle)
    except Exception:
        logger.warning("app-server after-start step failed", extra={"workspace_id": handle.workspace_id}, exc_info=True)


async def shutdown(workspace_id: str, reason: str) -> None:
    """Stop the workspace's app-server, persist its CODEX_HOME, remove the directory and release
    the lease. In a process that does not own it, asks the owner to (and returns at once)."""
    state = _state()
    if workspace_id in state.leases or workspace_id in state.children:
        async with state.lock(workspace_id):
            await _shutdown_locked(state, workspace_id, reason)
        return
    holder = await state.store.get(workspace_id)
    if holder is not None and holder.process_id != PROCESS_ID:
        layer = get_channel_layer()
        assert layer is not None
        await layer.send(holder.channel_name, {"type": SHUTDOWN, "workspace_id": workspace_id, "reason": reason})


async def restart(workspace_id: str) -> AppServerHandle:
    """Stop the workspace's app-server wherever it runs, then start it (here, if it was elsewhere)."""
    await shutdown(workspace_id, "restart")
    state = _state()
    deadline = time.monotonic() + settings.CXG_APP_SERVER_STOP_GRACE + START_TIMEOUT
    while time.monotonic() < deadline:
        holder = await state.store.get(workspace_id)
        if holder is None or holder.process_id == PROCESS_ID:
            break
        await asyncio.sleep(0.1)
    return await ensure_app_server(workspace_id)


async def lease_owner(workspace_id: str) -> LeaseInfo | None:
    return await _state().store.get(workspace_id)


def local_child_count() -> int:
    """Running app-server children of this process (for metrics; any thread may ask)."""
    state = _STATE
    return 0 if state is None else sum(1 for child in list(state.children.values()) if child.alive())


def live_sessions() -> list[LiveSession]:
    """Every workspace app-server in the cluster (blocking: reads Redis with the sync client)."""
    return [
        LiveSession(ws, lease.process_id, lease.pid, lease.ws_url, lease.started_at, lease.last_activity)
        for ws, lease in sorted(_all_leases().items())
    ]


async def checkpoint(workspace_id: str) -> bool:
    """Persist a live workspace's CODEX_HOME without stopping it; False when there was nothing to do."""
    state = _state()
    lock = state.lock(workspace_id)
    if lock.locked():
        return False  # a spawn, shutdown or checkpoint is under way
    async with lock:
        child = state.children.get(workspace_id)
        if child is None or not child.alive() or not await _still_ours(state, workspace_id):
            return False
        await _persist(workspace_id, child.handle.codex_home)
        return True


async def checkpoint_all() -> int:
    """Checkpoint every live workspace of this process; returns how many were persisted."""
    done = 0
    for workspace_id in list(_state().children):
        try:
            done += await checkpoint(workspace_id)
        except Exception:
            logger.exception("checkpoint failed", extra={"workspace_id": workspace_id})
    return done


def request_checkpoints() -> int:
    """Ask every gateway process that owns app-servers to checkpoint them (blocking; the Celery
    task). Returns how many processes were asked."""
    if gwredis.sync_client() is None:
        # Embedded default: one process, and the in-memory channel layer is bound to its loop.
        state = _STATE
        if state is None or not state.loop.is_running():
            return 0
        asyncio.run_coroutine_threadsafe(checkpoint_all(), state.loop)
        return 1
    channels = sorted({lease.channel_name for lease in _all_leases().values() if lease.channel_name})

    async def send_all() -> None:
        layer = get_channel_layer()
        assert layer is not None
        for channel in channels:
            await layer.send(channel, {"type": CHECKPOINT})

    if channels:
        async_to_sync(send_all)()
    return len(channels)


async def shutdown_all(reason: str) -> None:
    """Stop every app-server of this process (persisting each) and the supervisor's tasks: for
    the gateway's exit and for tests."""
    global _STATE
    state = _STATE
    if state is None or state.loop is not asyncio.get_running_loop():
        return
    for workspace_id in list(state.children):
        try:
            async with state.lock(workspace_id):
                await _shutdown_locked(state, workspace_id, reason)
        except Exception:
            logger.exception("shutdown failed", extra={"workspace_id": workspace_id})
    for task in list(state.tasks):
        task.cancel()
    await asyncio.gather(*state.tasks, return_exceptions=True)
    await state.store.close()
    _STATE = None
