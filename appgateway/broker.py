"""The turn broker behind ``POST /api/turns``: JSON-RPC connections of the gateway's own to
workspaces' app-servers, pooled one per workspace (app-gateway §6.2, §6.3).

A ``Conn`` is a client of the app-server, initialized as ``agentserver-codex-broker``. It runs
turns to completion: ``thread/resume`` where the thread is not attached on this connection yet
(never right after our own ``thread/start``: codex answers "no rollout found"), ``turn/start``,
then the turn's ``turn/completed``, which may arrive before the ``turn/start`` answer is read and
is buffered. Its ``turn.items`` is a summary, so the items returned are the turn's
``item/completed`` items, in arrival order. Several turns share one connection, told apart by
turn id.

Server→client requests must be answered or codex wedges the connection (§10.6): approvals
are answered by the leg in ``accept`` mode (``relay.AppServerLeg``); in ``forward`` mode they
reach us, and a broker has nobody to forward them to, so it declines them. Anything else gets
-32601.

The connection's link (``relay.attach``) is a ``relay.AppServerLeg`` when this process owns the
workspace's app-server (the leg touches the supervisor's activity clock on every frame), or a
``relay.RelayClient`` through the owner's process otherwise (whose leg touches it there).
Request ids, awaited answers and the server's requests are ``codexgw.jsonrpc.Peer``'s.

A turn that outlives its timeout is interrupted (best effort) and its connection closed: the
app-server may still be busy with it, and later turns on that connection would wait behind it.
The next turn for the workspace dials afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from django.conf import settings

from appgateway import environments, relay, rpc_filter
from appgateway.rpc_filter import METHOD_DISABLED, Frame
from appgateway.thread_environments import has_no_environments
from codexgw.jsonrpc import Peer, RPCError

logger = logging.getLogger(__name__)

CLIENT_INFO: Final = {"name": "agentserver-codex-broker", "version": "0.1.0"}
HANDSHAKE_TIMEOUT = 30.0  # initialize; a relayed dial includes the owner spawning the app-server
INTERRUPT_TIMEOUT = 2.0
# How long a turn/completed nobody waits for is kept: our own arrive before the turn/start answer
# is read; others (turns the TUI runs on a thread we attached) are never claimed.
UNCLAIMED_TTL = 120.0
REAP_TICK_MAX = 30.0

# Answers to approval-type requests in forward mode (the keys of rpc_filter.APPROVAL_ANSWERS).
DECLINES: Final[dict[str, dict[str, Any]]] = {
    "item/commandExecution/requestApproval": {"decision": "decline"},
    "item/fileChange/requestApproval": {"decision": "decline"},
    "item/permissions/requestApproval": {"permissions": {}},
    "item/tool/requestUserInput": {"answers": {}},
    "mcpServer/elicitation/request": {"action": "decline", "content": None, "_meta": None},
}


# --- transport errors: the response's ``transport.code`` ----------------------------------------


class TransportError(Exception):
    code = "wsDisconnect"


class BrokerTimeout(TransportError):
    code = "brokerTimeout"


class CodexRPCError(TransportError):
    """An error answer from the app-server (``rpc_error`` of ``codexgw.jsonrpc.Peer``)."""

    code = "codexRPCError"

    def __init__(self, method: str, rpc_code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (code {rpc_code})")


class SubprocessCrash(TransportError):
    code = "subprocessCrash"


class WsDisconnect(TransportError):
    code = "wsDisconnect"


# --- one connection --------------------------------------------------------------------------


@dataclass
class _Completed:
    turn: dict[str, Any]
    at: float


# codex 0.169.0 starts a new thread's MCP servers (env-mcp: listing and copying between executors) after thread/start
# and does not hold a turn for them: a turn started earlier may run without the tools. Before the
# first turn of a thread this connection started, wait for its servers to leave "starting" (at
# most MCP_SETTLE seconds); a thread that reports no server within MCP_QUIET seconds has none.
MCP_SETTLE = 20.0
MCP_QUIET = 1.0


class Conn:
    """A broker connection to one workspace's app-server."""

    def __init__(self, workspace_id: str) -> None:
        self.workspace_id = workspace_id
        self.link: relay.AppServerClient | None = None
        self.last_active = time.monotonic()
        self.closed_reason: str | None = None
        self.peer = Peer(
            self._send,
            on_notification=self._notified,
            on_request=self._server_request,
            rpc_error=CodexRPCError,
            timeout_error=lambda method, seconds: BrokerTimeout(f"no answer to {method} within {seconds} s"),
        )
        self._turns: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._unclaimed: dict[str, _Completed] = {}
        self._items: dict[str, list[Any]] = {}
        self._attached: set[str] = set()
        self._attaching: dict[str, asyncio.Lock] = {}
        self._without_environments: set[str] = set()  # resumed with none (thread_environments)
        self._mcp: dict[str, dict[str, str]] = {}  # thread -> MCP server -> startup status
        self._mcp_changed = asyncio.Event()
        self._mcp_unsettled: set[str] = set()  # threads started here whose MCP servers may be starting

    @classmethod
    async def dial(cls, workspace_id: str) -> Conn:
        """Open and initialize a connection (raises ``TransportError``)."""
        conn = cls(workspace_id)
        try:
            conn.link = await relay.attach(workspace_id, uuid.uuid4().hex, tui=conn)
        except relay.AppServerUnavailable as exc:
            raise SubprocessCrash(str(exc)) from exc
        try:
            # experimentalApi: codex accepts thread/start.environments only then.
            await conn.peer.request(
                "initialize", {"clientInfo": CLIENT_INFO, "capabilities": {"experimentalApi": True}}, HANDSHAKE_TIMEOUT
            )
            await conn.peer.notify("initialized", {})
        except TransportError as exc:
            await conn.close()
            raise SubprocessCrash(f"app-server dial failed: {exc}") from exc
        except BaseException:
            await conn.close()
            raise
        return conn

    @property
    def alive(self) -> bool:
        return self.closed_reason is None

    @property
    def busy(self) -> bool:
        return bool(self.peer.awaiting or self._turns or self._mcp_unsettled)

    # sending

    async def _send(self, text: str) -> None:
        if self.link is None or not self.alive:
            raise WsDisconnect(f"connection closed: {self.closed_reason}")
        self.last_active = time.monotonic()
        await self.link.send(text)

    # the turn

    async def start_thread(self, deadline: float) -> str:
        try:
            async with asyncio.timeout_at(deadline):
                # The workspace's default executor first, in its own working directory, then the
                # others (never codex's local environment, the gateway host).
                selected = await environments.default_selection(self.workspace_id)
                result = await self.peer.request("thread/start", {"environments": selected})
        except TimeoutError as exc:
            await self.close("thread/start timed out")
            raise BrokerTimeout("thread/start timed out") from exc
        thread_id = result.get("thread", {}).get("id") if isinstance(result, dict) else None
        if not isinstance(thread_id, str) or not thread_id:
            raise WsDisconnect(f"thread/start answered without a thread id: {result!r}")
        self._attached.add(thread_id)  # resuming it here would fail: "no rollout found"
        self._mcp_unsettled.add(thread_id)
        return thread_id

    async def _attach(self, thread_id: str) -> None:
        """``thread/resume`` once per thread and connection: it subscribes this connection to the
        thread's events (and loads it after an app-server restart)."""
        async with self._attaching.setdefault(thread_id, asyncio.Lock()):
            if thread_id not in self._attached:
                result = await self.peer.request("thread/resume", {"threadId": thread_id})
                if has_no_environments(result) == thread_id:
                    self._without_environments.add(thread_id)
                self._attached.add(thread_id)

    async def turn(self, thread_id: str, params: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Run a turn to its end; the Turn with its items. Past ``deadline`` (loop time): interrupt,
        close this connection, ``BrokerTimeout``."""
        turn_id: str | None = None
        try:
            async with asyncio.timeout_at(deadline):
                await self._attach(thread_id)
                await self._mcp_servers_started(thread_id)
                if thread_id in self._without_environments and params.get("environments") is None:
                    # The turn gives the thread its environments (thread_environments).
                    params = {**params, "environments": await environments.default_selection(self.workspace_id)}
                self._without_environments.discard(thread_id)
                result = await self.peer.request("turn/start", {**params, "threadId": thread_id})
                turn_id = result.get("turn", {}).get("id") if isinstance(result, dict) else None
                if not isinstance(turn_id, str) or not turn_id:
                    raise WsDisconnect(f"turn/start answered without a turn id: {result!r}")
                turn = await self._completion(turn_id)
        except TimeoutError as exc:
            await self._interrupt(thread_id, turn_id)
            await self.close(f"turn {turn_id} timed out")
            raise BrokerTimeout(f"turn {turn_id or '(not started)'} of thread {thread_id} timed out") from exc
        return {**turn, "items": self._items.pop(turn_id, [])}

    async def _mcp_servers_started(self, thread_id: str) -> None:
        if thread_id not in self._mcp_unsettled:
            return
        loop = asyncio.get_running_loop()
        quiet_until, settle_until = loop.time() + MCP_QUIET, loop.time() + MCP_SETTLE
        while True:
            statuses = self._mcp.get(thread_id, {})
            if statuses and "starting" not in statuses.values():
                break
            if (not statuses and loop.time() >= quiet_until) or loop.time() >= settle_until:
                if statuses:
                    logger.warning(
                        "MCP servers still starting; turn starts without them",
                        extra={"workspace_id": self.workspace_id},
                    )
                break
            self._mcp_changed.clear()
            until = settle_until if statuses else quiet_until
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._mcp_changed.wait(), max(0.01, until - loop.time()))
        self._mcp_unsettled.discard(thread_id)

    async def _completion(self, turn_id: str) -> dict[str, Any]:
        buffered = self._unclaimed.pop(turn_id, None)
        if buffered is not None:
            return buffered.turn
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._turns[turn_id] = waiter
        try:
            return await waiter
        finally:
            self._turns.pop(turn_id, None)

    async def _interrupt(self, thread_id: str, turn_id: str | None) -> None:
        if turn_id is None or not self.alive:
            return
        try:
            await self.peer.request("turn/interrupt", {"threadId": thread_id, "turnId": turn_id}, INTERRUPT_TIMEOUT)
        except TransportError as exc:
            logger.info("turn/interrupt failed", extra={"workspace_id": self.workspace_id, "error": str(exc)})

    # receiving

    # relay.TuiSink

    async def deliver(self, frame: Frame) -> None:
        self.last_active = time.monotonic()
        await self.peer.receive(await relay.off_loop_if_large(rpc_filter.decode, frame))

    async def close_tui(self, code: int, reason: str) -> None:
        self.lost(f"app-server connection closed ({code} {reason})")

    def _notified(self, method: str, params: dict[str, Any]) -> None:
        if method == "item/completed":
            self._items.setdefault(str(params.get("turnId")), []).append(params.get("item"))
        elif method == "turn/completed":
            self._turn_completed(params.get("turn"))
        elif method == "mcpServer/startupStatus/updated":
            self._mcp.setdefault(str(params.get("threadId")), {})[str(params.get("name"))] = str(params.get("status"))
            self._mcp_changed.set()

    def _turn_completed(self, turn: Any) -> None:
        if not isinstance(turn, dict):
            return
        turn_id = str(turn.get("id"))
        waiter = self._turns.get(turn_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(turn)
            return
        now = time.monotonic()
        for stale in [key for key, kept in self._unclaimed.items() if now - kept.at > UNCLAIMED_TTL]:
            del self._unclaimed[stale]
            self._items.pop(stale, None)
        self._unclaimed[turn_id] = _Completed(turn, now)

    async def _server_request(self, method: str, params: dict[str, Any]) -> Any:
        decline = DECLINES.get(method)
        if decline is None:
            raise RPCError(method, METHOD_DISABLED, f"method not implemented by agentserver broker: {method}")
        # Only in forward mode: in accept mode the leg has answered it already.
        logger.info("broker declined %s: nobody to forward it to", method, extra={"workspace_id": self.workspace_id})
        return decline

    # ending

    def lost(self, reason: str) -> None:
        """The link ended: fail every waiter."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self.peer.close(WsDisconnect(f"connection closed: {reason}"))
        for future in self._turns.values():
            if not future.done():
                future.set_exception(WsDisconnect(f"connection closed: {reason}"))

    async def close(self, reason: str = "closed by the broker") -> None:
        self.lost(reason)
        if self.link is not None:
            await self.link.stop()


# --- the pool --------------------------------------------------------------------------------


class Pool:
    """One connection per workspace, dialled single-flight, closed after
    ``CXG_BROKER_POOL_IDLE_TTL`` seconds without a frame and without a turn in flight."""

    def __init__(self) -> None:
        self._conns: dict[str, Conn] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def get(self, workspace_id: str) -> Conn:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="broker pool reaper")
        async with self._locks.setdefault(workspace_id, asyncio.Lock()):
            conn = self._conns.get(workspace_id)
            if conn is not None:
                if conn.alive:
                    return conn
                await conn.close()  # stops what is left of its link
            conn = await Conn.dial(workspace_id)
            self._conns[workspace_id] = conn
            return conn

    async def _reap(self) -> None:
        while True:
            ttl = float(settings.CXG_BROKER_POOL_IDLE_TTL)
            await asyncio.sleep(min(max(ttl / 4, 0.05), REAP_TICK_MAX))
            now = time.monotonic()
            for workspace_id, conn in list(self._conns.items()):
                if self._conns.get(workspace_id) is not conn:
                    continue  # replaced while an earlier close was awaited
                if not conn.alive or (not conn.busy and now - conn.last_active > ttl):
                    del self._conns[workspace_id]
                    await conn.close("idle")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await conn.close("pool closed")

    async def run_turn(
        self, workspace_id: str, thread_id: str | None, params: dict[str, Any], seconds: float
    ) -> dict[str, Any]:
        """The ``/api/turns`` answer within ``seconds``: ``{threadId, turn}`` or ``{threadId, transport}``."""
        deadline = asyncio.get_running_loop().time() + seconds
        answer: dict[str, Any] = {"threadId": thread_id or ""}
        try:
            conn = await self.get(workspace_id)
            if not thread_id:
                thread_id = await conn.start_thread(deadline)
                answer["threadId"] = thread_id
            answer["turn"] = await conn.turn(thread_id, params, deadline)
        except TransportError as exc:
            logger.info("broker turn failed", extra={"workspace_id": workspace_id, "code": exc.code, "error": str(exc)})
            answer["transport"] = {"code": exc.code, "message": str(exc)}
        return answer


pool = Pool()
