"""One ``codex app-server`` per workspace, across the whole gateway cluster: the registry.

``Supervisor`` (one per process, ``get_supervisor()``) decides which workspaces this process
serves. It takes the workspace's lease (``appgateway.leases``) before anything else, so callers
that land on a process that does not own a workspace get ``OwnedElsewhere`` with the lease and
relay to ``lease.channel_name``; it runs the child (``appgateway.app_server_process``) on a
CODEX_HOME restored from the workspace's archive and persists that archive again on every stop.

Spawning holds a per-workspace asyncio lock across restore, config rendering, spawn and
readiness, with the lease already taken: two concurrent ``ensure_app_server`` calls spawn once,
and no loser ever deletes the winner's CODEX_HOME (app-gateway §10.14).

Activity (``appgateway.activity``) keeps a workspace from the idle reaper wherever its users
connected; checkpoints and stops asked for elsewhere arrive as messages (``appgateway.process_messages``).

Just past the 400 lines we aim for: what is left after the split by role (leases, the child,
activity, messages) is the registry's own life cycle, spawn to stop, which reads as one piece.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings

from appgateway import codexhome, leases, persistence, process_messages
from appgateway.activity import ActivityClock
from appgateway.app_server_process import START_TIMEOUT, AppServerHandle, AppServerProcess, SpawnError, child_env
from appgateway.codexhome import McpServer
from appgateway.leases import HeldLeases, LeaseInfo, LiveSession
from bridge import process_rpc
from codexgw.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

AFTER_START_TIMEOUT = 15.0  # SpawnConfig.after_start
REAPER_MAX_TICK = 5.0  # cheap (no I/O unless a child is idle); bounds how late a reap can be
TASK_CLEANUP = 10.0  # shutdown_all: what a cancelled task's clean-up may take before it is cancelled again


class OwnedElsewhere(RuntimeError):
    """Another gateway process owns the workspace's app-server; relay to ``lease.channel_name``."""

    def __init__(self, workspace_id: str, lease: LeaseInfo) -> None:
        super().__init__(f"workspace {workspace_id} is served by gateway process {lease.process_id}")
        self.workspace_id = workspace_id
        self.lease = lease


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
StopHook = Callable[[str], Awaitable[None]]


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


async def _remove(home: Path) -> None:
    try:
        await asyncio.to_thread(codexhome.remove_home, home)
    except Exception:
        logger.exception("could not remove CODEX_HOME", extra={"codex_home": str(home)})


async def _after_start(hook: Callable[[AppServerHandle], Awaitable[None]], handle: AppServerHandle) -> None:
    try:
        async with asyncio.timeout(AFTER_START_TIMEOUT):
            await hook(handle)
    except Exception:
        logger.warning("app-server after-start step failed", extra={"workspace_id": handle.workspace_id}, exc_info=True)


class _LoopState:
    """What the supervisor holds on the event loop that serves its children (tests run one loop
    per test): the children, the leases it holds, the per-workspace locks and its tasks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, leases: HeldLeases) -> None:
        self.loop = loop
        self.leases = leases
        self.children: dict[str, AppServerProcess] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.tasks: set[asyncio.Task[Any]] = set()

    def lock(self, workspace_id: str) -> asyncio.Lock:
        return self.locks.setdefault(workspace_id, asyncio.Lock())

    def spawn_task(self, coroutine: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class Supervisor:
    """This gateway process's workspace app-servers: ensure, touch, stop, restart, checkpoint,
    with the lease refresh and the idle reaper running in the background."""

    def __init__(self) -> None:
        # This gateway process, as named in leases (host, pid and a random part: pids are reused).
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._builder: SpawnBuilder | None = None
        self._stop_hooks: list[StopHook] = []
        self._activity = ActivityClock()  # loop-independent: touch() may be called from any thread
        self._state: _LoopState | None = None

    def set_spawn_builder(self, builder: SpawnBuilder | None) -> None:
        """Install the per-spawn builder (env additions such as a workspace model token, MCP servers).
        Its errors propagate from ``ensure_app_server`` and nothing is spawned."""
        self._builder = builder

    def add_stop_hook(self, hook: StopHook) -> None:
        """Call ``hook(workspace_id)`` whenever this process's app-server for a workspace is gone
        (stopped, crashed, or given up to another owner) — e.g. to revoke its spawn's tokens."""
        self._stop_hooks.append(hook)

    def in_background(self, coroutine: Awaitable[Any], name: str) -> None:
        """Run ``coroutine`` as one of the supervisor's tasks on the running loop (``shutdown_all`` ends them)."""
        self._running().spawn_task(coroutine, name)

    def touch(self, workspace_id: str) -> None:
        """Record activity on the workspace (any thread). Resets its idle clock cluster-wide."""
        self._activity.touch(workspace_id)

    def last_activity(self, workspace_id: str) -> float:
        """The latest activity this process knows of: its own touches and, for workspaces it owns,
        the touches other processes merged into the lease (as of the last refresh)."""
        state = self._state
        merged = state.leases.merged_activity(workspace_id) if state is not None else 0.0
        child = state.children.get(workspace_id) if state is not None else None
        started = child.handle.started_at if child is not None else 0.0
        return max(self._activity.touched_at(workspace_id), merged, started)

    async def ensure_app_server(self, workspace_id: str) -> AppServerHandle:
        """The workspace's running app-server in this process, spawning it if needed.

        Raises ``OwnedElsewhere`` when another gateway process owns the workspace, ``SpawnError``
        when codex cannot be started, and whatever the spawn builder or the restore raise."""
        codexhome.validate_workspace_id(workspace_id)
        state = self._running()
        child = state.children.get(workspace_id)
        if child is not None and child.alive():
            self.touch(workspace_id)
            return child.handle
        channel = await process_rpc.process_channel()
        async with state.lock(workspace_id):
            child = state.children.get(workspace_id)
            if child is not None and child.alive():
                self.touch(workspace_id)
                return child.handle
            if child is not None:
                del state.children[workspace_id]
                await self._bury(workspace_id, child)
            return await self._spawn_locked(state, workspace_id, channel)

    async def shutdown(self, workspace_id: str, reason: str) -> None:
        """Stop the workspace's app-server, persist its CODEX_HOME, remove the directory and release
        the lease. In a process that does not own it, asks the owner to (and returns at once)."""
        state = self._running()
        if workspace_id in state.leases or workspace_id in state.children:
            async with state.lock(workspace_id):
                await self._shutdown_locked(state, workspace_id, reason)
            return
        holder = await state.leases.store.get(workspace_id)
        if holder is not None and holder.process_id != self.process_id:
            await process_messages.ask_owner_to_shut_down(holder, workspace_id, reason)

    async def restart(self, workspace_id: str) -> AppServerHandle:
        """Stop the workspace's app-server wherever it runs, then start it (here, if it was elsewhere)."""
        await self.shutdown(workspace_id, "restart")
        state = self._running()
        deadline = time.monotonic() + settings.CXG_APP_SERVER_STOP_GRACE + START_TIMEOUT
        while time.monotonic() < deadline:
            holder = await state.leases.store.get(workspace_id)
            if holder is None or holder.process_id == self.process_id:
                break
            await asyncio.sleep(0.1)
        return await self.ensure_app_server(workspace_id)

    async def checkpoint(self, workspace_id: str) -> bool:
        """Persist a live workspace's CODEX_HOME without stopping it; False when there was nothing to do."""
        state = self._running()
        lock = state.lock(workspace_id)
        if lock.locked():
            return False  # a spawn, shutdown or checkpoint is under way
        async with lock:
            child = state.children.get(workspace_id)
            if child is None or not child.alive() or not await state.leases.still_ours(workspace_id):
                return False
            await asyncio.to_thread(persistence.persist, workspace_id, child.handle.codex_home)
            return True

    async def with_running(self, workspace_id: str, action: Callable[[AppServerHandle], Awaitable[None]]) -> bool:
        """Run ``action`` on the workspace's live app-server in this process, under the workspace's
        lock (so never beside its spawn's ``after_start`` or its stop); False when it does not run here."""
        state = self._running()
        async with state.lock(workspace_id):
            child = state.children.get(workspace_id)
            if child is None or not child.alive():
                return False
            await action(child.handle)
            return True

    async def checkpoint_all(self) -> int:
        """Checkpoint every live workspace of this process; returns how many were persisted."""
        done = 0
        for workspace_id in list(self._running().children):
            try:
                done += await self.checkpoint(workspace_id)
            except Exception:
                logger.exception("checkpoint failed", extra={"workspace_id": workspace_id})
        return done

    def request_checkpoints(self) -> int:
        """Ask every gateway process that owns app-servers to checkpoint them (blocking; the Celery
        task). Returns how many processes were asked."""
        owners = {lease.channel_name: lease for lease in leases.all_leases().values()}
        message = {"type": process_messages.CHECKPOINT}
        return sum(process_messages.tell_owner(owner, message, self._serving_loop()) for owner in owners.values())

    async def shutdown_all(self, reason: str) -> None:
        """Stop every app-server of this process (persisting each) and the supervisor's tasks: for
        the gateway's exit and for tests."""
        state = self._state
        if state is None or state.loop is not asyncio.get_running_loop():
            return
        for workspace_id in list(state.children):
            try:
                async with state.lock(workspace_id):
                    await self._shutdown_locked(state, workspace_id, reason)
            except Exception:
                logger.exception("shutdown failed", extra={"workspace_id": workspace_id})
        # A task stopped in a shutdown of its own still removes the home and releases the lease.
        await cancel_and_wait(state.tasks, patience=TASK_CLEANUP)
        await state.leases.store.close()
        self._state = None

    def tell_owner(self, workspace_id: str, message: dict[str, Any]) -> bool:
        """Send ``message`` to the channel of the process whose app-server serves the workspace
        (blocking; from sync code such as a signal handler). False when none runs."""
        return process_messages.tell_owner(leases.lease_of(workspace_id), message, self._serving_loop())

    def _serving_loop(self) -> asyncio.AbstractEventLoop | None:
        """The running loop this supervisor serves its children on, if any (for sync callers)."""
        state = self._state
        return state.loop if state is not None and state.loop.is_running() else None

    async def lease_owner(self, workspace_id: str) -> LeaseInfo | None:
        return await self._running().leases.store.get(workspace_id)

    def local_child_count(self) -> int:
        """Running app-server children of this process (for metrics; any thread may ask)."""
        state = self._state
        return 0 if state is None else sum(1 for child in list(state.children.values()) if child.alive())

    def live_sessions(self) -> list[LiveSession]:
        """Every workspace app-server in the cluster (blocking: reads Redis with the sync client)."""
        return leases.live_sessions()

    def _running(self) -> _LoopState:
        """The state on the running event loop, made (with its background tasks) on first use."""
        loop = asyncio.get_running_loop()
        state = self._state
        if state is None or state.loop is not loop:
            held = HeldLeases(leases.open_store(), self.process_id)
            state = self._state = _LoopState(loop, held)
            state.spawn_task(self._refresh_loop(state), "appserver lease refresh")
            state.spawn_task(self._reaper_loop(state), "appserver idle reaper")
        return state

    async def _spawn_locked(self, state: _LoopState, workspace_id: str, channel: str) -> AppServerHandle:
        now = time.time()
        lease = LeaseInfo(self.process_id, channel, pid=0, ws_url="", started_at=now, last_activity=now)
        holder = await state.leases.take(workspace_id, lease)
        if holder is not None:
            raise OwnedElsewhere(workspace_id, holder)
        try:
            config = await self._builder(workspace_id) if self._builder is not None else SpawnConfig()
            home = await asyncio.to_thread(_prepare_home, workspace_id, config)
            try:
                child = await AppServerProcess.start(workspace_id, home, child_env(home, config.env))
            except BaseException:
                await _remove(home)
                raise
        except BaseException:
            await state.leases.release(workspace_id)
            raise
        lease = replace(lease, pid=child.handle.pid, ws_url=child.handle.ws_url, started_at=child.handle.started_at)
        if not await state.leases.rewrite(workspace_id, lease):
            await child.stop(0)
            # The directory stays: on this machine it may already be the new owner's.
            raise SpawnError(f"lost the lease of workspace {workspace_id} while spawning")
        if config.after_start is not None:
            await _after_start(config.after_start, child.handle)
        state.children[workspace_id] = child
        self.touch(workspace_id)
        logger.info("app-server started", extra={"workspace_id": workspace_id, "pid": child.handle.pid})
        return child.handle

    async def _stopped(self, workspace_id: str) -> None:
        for hook in self._stop_hooks:
            try:
                await hook(workspace_id)
            except Exception:
                logger.exception("app-server stop hook failed", extra={"workspace_id": workspace_id})

    async def _bury(self, workspace_id: str, child: AppServerProcess) -> None:
        """A child that died on its own: save what it left (best effort), then clear its directory."""
        await child.stop(0)  # already dead: this only reads its pipes to their end
        await self._stopped(workspace_id)
        logger.warning(
            "app-server exited unexpectedly",
            extra={"workspace_id": workspace_id, "pid": child.handle.pid, "returncode": child.process.returncode},
        )
        try:
            await asyncio.to_thread(persistence.persist, workspace_id, child.handle.codex_home)
        except Exception:
            logger.exception(
                "could not persist a crashed app-server's CODEX_HOME", extra={"workspace_id": workspace_id}
            )
        await _remove(child.handle.codex_home)

    async def _abandon(self, state: _LoopState, workspace_id: str) -> None:
        """Our lease went to another process: stop our child without persisting over the new owner's state."""
        async with state.lock(workspace_id):
            state.leases.forget(workspace_id)
            child = state.children.pop(workspace_id, None)
            if child is not None:
                await child.stop(settings.CXG_APP_SERVER_STOP_GRACE)
                await self._stopped(workspace_id)

    async def _shutdown_locked(self, state: _LoopState, workspace_id: str, reason: str) -> None:
        child = state.children.pop(workspace_id, None)
        if child is None:
            return
        logger.info(
            "stopping app-server", extra={"workspace_id": workspace_id, "reason": reason, "pid": child.handle.pid}
        )
        await child.stop(settings.CXG_APP_SERVER_STOP_GRACE)
        await self._stopped(workspace_id)
        self._activity.forget(workspace_id)
        try:
            if await state.leases.still_ours(workspace_id):
                await asyncio.to_thread(persistence.persist, workspace_id, child.handle.codex_home)
            else:
                logger.error("lease lost before shutdown: not persisting", extra={"workspace_id": workspace_id})
        finally:
            await _remove(child.handle.codex_home)
            await state.leases.release(workspace_id)

    async def _refresh_loop(self, state: _LoopState) -> None:
        """Every third of the lease TTL: keep our leases (with our touches), give up the lost ones,
        and merge the touches of workspaces owned elsewhere into their owners' leases."""

        def lost(workspace_id: str) -> None:
            state.spawn_task(self._abandon(state, workspace_id), f"abandon {workspace_id}")

        while True:
            await asyncio.sleep(settings.CXG_APP_SERVER_LEASE_TTL / 3)
            try:
                await state.leases.refresh_all(self._activity.touched_at, lost)
                await self._activity.share(state.leases)
            except Exception:
                logger.exception("app-server lease refresh failed")

    async def _reaper_loop(self, state: _LoopState) -> None:
        while True:
            await asyncio.sleep(min(REAPER_MAX_TICK, settings.CXG_IDLE_SHUTDOWN / 4))
            for workspace_id in list(state.children):
                if time.time() - self.last_activity(workspace_id) >= settings.CXG_IDLE_SHUTDOWN:
                    try:
                        await self.shutdown(workspace_id, "idle")
                    except Exception:
                        logger.exception("idle shutdown failed", extra={"workspace_id": workspace_id})


@cache
def get_supervisor() -> Supervisor:
    """This process's supervisor, made on first use; ``AppGatewayConfig.ready()`` wires it up."""
    return Supervisor()
