"""The session multiplexer: one exec-server session shared by many virtual sessions.

A direct-transport executor connection carries exactly one exec-server session. Every
``/bridge`` connection gets a *virtual* session that behaves like a direct connection to
``codex exec-server``: the gateway answers its ``initialize`` itself, rewrites request ids,
namespaces the handles the client chooses (``processId``, ``handleId``, ``watchId``,
``requestId``) so two clients may use the same names, and routes notifications back to their
owner with the handles restored.

This module is pure logic: every input returns a list of actions for the caller (the session
driver in ``bridge/session.py``) to carry out, so it can be tested without sockets or clocks.
It is not thread-safe; one driver task owns it.

Process events reach a client in one of two ways: live (pushed by the executor and forwarded)
or recovered (re-read with ``process/read`` after the executor reconnected, or after the client
resumed its session). The rule that keeps output from being lost between the two: **nothing is
delivered past a seq the client is still owed**. From the moment a process needs recovery (the
executor dropped, or the owner was away) until a recovery read succeeds, live events are held
(``ProcessState.held``, bounded); a live event that overtook a lower seq waits for it (then, if
it does not come, the gap is read); a recovery read starts after the lowest seq still owed (not
after the highest delivered); a recovery read that fails or is abandoned delivers nothing and
leaves the gap owed for the next read. Only what the executor can no longer give back (it fell
out of its ~1 MiB retention, or the process cannot be read any more) is given up on, and then
the client is told the exact range (``gateway/outputLost``) and the drop is counted.

Longer than the 400 lines we aim for, on purpose: it is one state machine, and its handlers
(executor, bridges, recovery, timers) read and change the same tables; split across files, each
rule above would be spread over several of them.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from bridge.protocol import (
    CLOSE_EXECUTOR_LOST,
    CLOSE_EXECUTOR_REPLACED,
    EXEC_SESSION_RETENTION,
    EXECUTOR_UNAVAILABLE,
    HANDLE_KEYS,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSON,
    METHOD_NOT_FOUND,
    PROCESS_EVENTS,
    SESSION_ATTACHED,
)

GATEWAY_CLIENT_NAME = "codexgw"
# process/read page size while recovering missed output (exec-server retains ~1 MiB per process,
# trimming the oldest chunks only as far as it must: what it retains stays close to that).
RECOVERY_READ_BYTES = 4 * 1024 * 1024
EXEC_RETENTION_BYTES = 1024 * 1024
# An executor that does not answer initialize within this time is hung up on (it reconnects).
HANDSHAKE_TIMEOUT = 30.0
# Live events held per process while it waits for recovery. Past the bound the newest are let go
# and recovery reads on until it has them (exec-server itself retains only ~1 MiB of output).
HELD_EVENTS_MAX = 512
# A recovery read that fails is retried after RECOVERY_RETRY_DELAY, doubling, RECOVERY_ATTEMPTS
# times in all; then what the client is owed is given up on (and the client told).
RECOVERY_ATTEMPTS = 5
RECOVERY_RETRY_DELAY = 0.5
# A live event that overtook a lower seq (exec-server pushes output, exit and close from different
# tasks) waits this long for it to be pushed too; then the gap is read.
REORDER_WAIT = 1.0
# The notification that tells a client which seqs of a process it will never get (docs/protocol.md).
OUTPUT_LOST = "gateway/outputLost"


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToExecutor:
    message: JSON


@dataclass(frozen=True)
class ToBridge:
    conn_id: str
    message: JSON


@dataclass(frozen=True)
class CloseBridge:
    conn_id: str
    code: int
    reason: str


@dataclass(frozen=True)
class CloseExecutor:
    code: int
    reason: str


@dataclass(frozen=True)
class SaveSession:
    """The executor's exec-server session changed: persist it so any process can resume it."""

    session_id: str
    environment_info: JSON


@dataclass(frozen=True)
class Dropped:
    """A message the gateway could not deliver or refused to forward; counted and logged."""

    reason: str
    detail: str = ""


Action = ToExecutor | ToBridge | CloseBridge | CloseExecutor | SaveSession | Dropped


@dataclass(frozen=True)
class TableChanges:
    """Virtual-session table changes since the last ``take_changes``, for the shared store.

    ``urgent`` changes (a new session, process or handle) must be stored before the actions
    that follow them are carried out: a client must never hold a session id, or an executor
    run a process, that another gateway process could not take over. Sequence progress is
    stored lazily: after a crash, a recovery read may repeat the last moments of output, which
    the client recognises by ``seq``, but never skips any."""

    upserts: dict[str, JSON]
    deletes: list[str]
    next_handle: int
    urgent: bool


# --- state ----------------------------------------------------------------------------------


class ExecutorState(Enum):
    DISCONNECTED = "disconnected"
    HANDSHAKING = "handshaking"
    READY = "ready"


class LinkState(Enum):
    AWAITING_INITIALIZE = "awaiting_initialize"
    AWAITING_INITIALIZED = "awaiting_initialized"
    READY = "ready"


# What a bridge that sends a request before its handshake is done is told, by how far it got.
NOT_READY = {
    LinkState.AWAITING_INITIALIZE: "client must call initialize before using exec methods",
    LinkState.AWAITING_INITIALIZED: "client must send initialized before using exec methods",
}


@dataclass
class ProcessState:
    """What the gateway knows of one process of a virtual session.

    Every seq up to ``last_seq`` has been delivered to the owner (or the owner was told it is
    lost), except those in ``missing``: the lowest seq still owed is ``min(missing)``, or
    ``last_seq + 1``. While ``needs_recovery`` or ``recovering`` is set, live events are held;
    otherwise a live event is held only while a lower seq is still owed (it overtook it)."""

    last_seq: int = 0  # highest event seq delivered to the owner
    observed_seq: int = 0  # highest event seq seen from the executor
    exited: bool = False
    closed: bool = False
    needs_recovery: bool = False  # the owner may have missed events: read them before delivering more
    recovering: bool = False  # a recovery read is in flight, or its retry is due at retry_at
    held: list[JSON] = field(default_factory=list)  # live events waiting for a recovery read or a lower seq
    held_overflow: bool = False  # events past HELD_EVENTS_MAX were let go: recovery must read them
    # Seqs below last_seq still owed to the owner (at the end of a recovery read, also those above
    # it the executor has but did not return as output: its exit and close, or lost output).
    missing: set[int] = field(default_factory=set)
    retry_at: float | None = None  # when a failed recovery read is tried again
    reorder_at: float | None = None  # when a live gap that did not fill is read
    failures: int = 0  # failed recovery reads in a row
    starting: bool = False  # process/start forwarded, no answer yet

    @property
    def owed_after(self) -> int:
        """Where a recovery read starts: after the last seq up to which nothing is owed."""
        return min(self.last_seq, min(self.missing, default=self.last_seq + 1) - 1)

    @property
    def readable(self) -> bool:
        """The executor may still have events for the owner: the process has not closed, or an
        event overtaken by ``process/closed`` (codex-wire.md §C.10) is still owed."""
        return not self.closed or bool(self.missing)

    def snapshot(self) -> JSON:
        return {
            "last_seq": self.last_seq,
            "observed_seq": self.observed_seq,
            "exited": self.exited,
            "closed": self.closed,
            "missing": sorted(self.missing),
        }

    @classmethod
    def restore(cls, data: JSON) -> ProcessState:
        process = cls(
            last_seq=int(data.get("last_seq") or 0),
            observed_seq=int(data.get("observed_seq") or 0),
            exited=bool(data.get("exited")),
            closed=bool(data.get("closed")),
            missing={int(seq) for seq in data.get("missing") or []},
        )
        process.needs_recovery = process.readable
        return process


@dataclass
class VirtualSession:
    vsid: str
    prefix: str
    conn_id: str | None
    detached_at: float | None = None
    delivered_via: str | None = None  # the connection it was last attached to (kept after a detach)
    processes: dict[str, ProcessState] = field(default_factory=dict)
    int_handles: dict[tuple[str, int], int] = field(default_factory=dict)  # (key, client int) -> gateway int

    def snapshot(self) -> JSON:
        """What another gateway process needs to take this virtual session over (attachment and
        in-flight requests die with the connection, so they are not part of it)."""
        return {
            "prefix": self.prefix,
            "processes": {pid: p.snapshot() for pid, p in self.processes.items()},
            "int_handles": [[key, client, mapped] for (key, client), mapped in self.int_handles.items()],
        }


def progress_as_of(snapshot: JSON, earlier: JSON | None) -> JSON:
    """``snapshot`` (a ``VirtualSession.snapshot``) with each process's delivery progress taken
    from ``earlier``, a snapshot of the same session from when everything it counts as delivered
    had reached its client; a process ``earlier`` does not know starts from nothing. The
    structure (processes, handles) is ``snapshot``'s: it must be stored before it is used."""
    known = (earlier or {}).get("processes") or {}
    fresh = ProcessState().snapshot()
    return {**snapshot, "processes": {pid: known.get(pid, fresh) for pid in snapshot["processes"]}}


@dataclass
class BridgeLink:
    conn_id: str
    state: LinkState = LinkState.AWAITING_INITIALIZE
    vsession: VirtualSession | None = None


@dataclass
class Pending:
    kind: str  # "client" | "handshake" | "recover" | "internal"
    conn_id: str | None = None
    client_id: Any = None
    vsession: VirtualSession | None = None
    process: str | None = None
    method: str = ""
    after_seq: int = 0  # a recovery read's afterSeq
    continued: bool = False  # a recovery read for the next page


@dataclass
class HeldRead:
    """A client's long-poll ``process/read``: the gateway waits instead of the executor."""

    conn_id: str
    client_id: Any
    vsession: VirtualSession
    process: str
    params: JSON
    deadline: float


def _chunk_bytes(chunks: list[JSON]) -> int:
    """Roughly how many bytes of output ``process/read`` chunks carry (base64)."""
    return sum(len(c["chunk"]) * 3 // 4 for c in chunks if isinstance(c.get("chunk"), str))


def _after_seq(params: JSON) -> int:
    after = params.get("afterSeq")
    return after if isinstance(after, int) else 0


def rpc_error(request_id: Any, code: int, message: str, data: Any = None) -> JSON:
    error: JSON = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"error": error, "id": request_id}


def _unavailable(request_id: Any, message: str) -> JSON:
    return rpc_error(request_id, EXECUTOR_UNAVAILABLE, message, {"retryable": True})


def _refuse(conn_id: str, request_id: Any, code: int, message: str) -> list[Action]:
    """The gateway answers a bridge's request itself, with an error."""
    return [ToBridge(conn_id, rpc_error(request_id, code, message))]


def _valid_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


class Multiplexer:
    def __init__(
        self,
        exe_id: str,
        *,
        session_id: str | None = None,
        environment_info: JSON | None = None,
        retention: float = EXEC_SESSION_RETENTION,
        resume_window: float = EXEC_SESSION_RETENTION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.exe_id = exe_id
        self.session_id = session_id
        self.environment_info = environment_info
        self.retention = retention  # how long exec-server keeps a detached session (fixed: 80 s)
        self.resume_window = resume_window  # how long a left bridge may resume its virtual session
        self.clock = clock
        self.state = ExecutorState.DISCONNECTED
        self.disconnected_at: float | None = clock()
        self.finished = False
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._links: dict[str, BridgeLink] = {}
        self._vsessions: dict[str, VirtualSession] = {}
        self._by_prefix: dict[str, VirtualSession] = {}
        self._int_owners: dict[tuple[str, int], tuple[VirtualSession, int]] = {}
        self._held_reads: list[HeldRead] = []
        # (when, order, vsid, process id or None): detach expiries and process timers, so that
        # finding the next deadline does not walk every session. Entries are checked when they
        # surface (a timer cleared or moved meanwhile leaves a stale one behind).
        self._timeline: list[tuple[float, int, str, str | None]] = []
        self._timeline_order = itertools.count()
        self._backlog: list[tuple[str, Any]] = []  # bridge messages waiting for the handshake
        self._resuming = False
        self._handshake_deadline = 0.0
        self._next_handle = 1
        self._dirty: set[str] = set()
        self._removed: set[str] = set()
        self._urgent = False

    # --- the shared virtual-session table -------------------------------------------------------

    def restore(self, snapshots: dict[str, JSON], next_handle: int) -> None:
        """Take over virtual sessions another gateway process stored (its bridges are gone:
        every session starts detached, with its resume window from now)."""
        now = self.clock()
        highest = next_handle - 1
        for vsid, data in snapshots.items():
            prefix = data.get("prefix")
            if not isinstance(prefix, str) or prefix in self._by_prefix:
                continue
            vsession = VirtualSession(vsid=vsid, prefix=prefix, conn_id=None, detached_at=now)
            self._schedule(now + self.resume_window, vsid)
            for process_id, state in (data.get("processes") or {}).items():
                vsession.processes[process_id] = ProcessState.restore(state)
            for key, client, mapped in data.get("int_handles") or []:
                vsession.int_handles[(key, client)] = mapped
                self._int_owners[(key, mapped)] = (vsession, client)
                highest = max(highest, mapped)
            self._vsessions[vsid] = vsession
            self._by_prefix[prefix] = vsession
        self._next_handle = highest + 1

    def _touch(self, vsession: VirtualSession, *, urgent: bool = False) -> None:
        self._dirty.add(vsession.vsid)
        self._urgent = self._urgent or urgent

    @property
    def has_changes(self) -> bool:
        return bool(self._dirty or self._removed)

    @property
    def has_urgent_changes(self) -> bool:
        return self._urgent

    def requeue(self, changes: TableChanges) -> None:
        """A write of ``changes`` failed: they go out with the next one."""
        self._dirty.update(vsid for vsid in changes.upserts if vsid in self._vsessions)
        self._removed.update(changes.deletes)
        self._urgent = self._urgent or changes.urgent

    def write_again(self, vsids: Iterable[str]) -> None:
        """These sessions go out with the next ``take_changes`` even if nothing changes."""
        self._dirty.update(vsid for vsid in vsids if vsid in self._vsessions)

    def take_changes(self) -> TableChanges:
        upserts = {vsid: self._vsessions[vsid].snapshot() for vsid in self._dirty if vsid in self._vsessions}
        changes = TableChanges(upserts, sorted(self._removed), self._next_handle, self._urgent)
        self._dirty.clear()
        self._removed.clear()
        self._urgent = False
        return changes

    # --- introspection (metrics, the table's write) ---------------------------------------------

    @property
    def pending_count(self) -> int:
        return len(self._pending) + len(self._held_reads)

    def delivery_conn(self, vsid: str) -> str | None:
        """The connection the virtual session's events last went to, attached or not."""
        vsession = self._vsessions.get(vsid)
        return vsession.delivered_via if vsession is not None else None

    # --- executor side ----------------------------------------------------------------------

    def executor_connected(self) -> list[Action]:
        """The executor's WebSocket is open: the gateway speaks first and resumes the session."""
        self.state = ExecutorState.HANDSHAKING
        self._handshake_deadline = self.clock() + HANDSHAKE_TIMEOUT
        self._resuming = self.session_id is not None
        return [self._initialize_executor(self.session_id)]

    def _initialize_executor(self, resume: str | None) -> ToExecutor:
        params: JSON = {"clientName": GATEWAY_CLIENT_NAME, "resumeSessionId": resume}
        return self._request(Pending(kind="handshake"), {"method": "initialize", "params": params})

    def _request(self, pending: Pending, message: JSON) -> ToExecutor:
        """A request to the executor (``message`` less its id): its answer goes where ``pending`` says."""
        request_id = next(self._ids)
        self._pending[request_id] = pending
        return ToExecutor({"id": request_id, **message})

    def executor_disconnected(self) -> list[Action]:
        if self.state is ExecutorState.DISCONNECTED:
            return []
        self.state = ExecutorState.DISCONNECTED
        self.disconnected_at = self.clock()
        actions: list[Action] = []
        in_flight = "executor connection lost before the response; the request may or may not have run"
        for pending in self._pending.values():
            if pending.kind == "client" and pending.conn_id in self._links:
                actions.append(ToBridge(pending.conn_id, _unavailable(pending.client_id, in_flight)))
        self._pending.clear()
        for held in self._held_reads:
            if held.conn_id in self._links:
                actions.append(ToBridge(held.conn_id, _unavailable(held.client_id, "executor connection lost")))
        self._held_reads.clear()
        actions.extend(self._fail_backlog("executor connection lost"))
        # Every process that may owe its owner events must be re-read after the session resumes;
        # an abandoned recovery read (or a pending retry) delivered nothing, so its gap is still
        # owed too. Held events stay held: until that read, nothing goes out past the gap.
        for vsession in self._vsessions.values():
            for process in vsession.processes.values():
                process.recovering = False
                process.retry_at = process.reorder_at = None
                process.failures = 0
                if process.readable:
                    process.needs_recovery = True
        return actions

    def executor_message(self, message: Any) -> list[Action]:
        if not isinstance(message, dict):
            return [Dropped("executor_invalid_message", repr(message)[:200])]
        if "method" in message:
            if "id" in message:
                # exec-server -> client requests have no owner here; answer so it does not wait.
                method = str(message.get("method"))
                return [
                    ToExecutor(rpc_error(message["id"], METHOD_NOT_FOUND, f"codexgw does not serve {method}")),
                    Dropped("executor_request", method),
                ]
            return self._executor_notification(message)
        request_id = message.get("id")
        pending = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if pending is None:
            return [Dropped("stray_executor_response", repr(request_id))]
        if pending.kind == "handshake":
            return self._handshake_response(message)
        if pending.kind == "recover":
            return self._recovery_response(pending, message)
        if pending.kind == "internal":
            return []
        return self._client_response(pending, message)

    def _handshake_response(self, message: JSON) -> list[Action]:
        result = message.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("sessionId"), str):
            if self._resuming:
                # The executor no longer has our session (expired or a different exec-server).
                self._resuming = False
                return [self._initialize_executor(None)]
            return [
                CloseExecutor(1011, "executor refused initialize"),
                Dropped("executor_handshake_failed", str(message)),
            ]
        resumed = self._resuming and result["sessionId"] == self.session_id
        self.session_id = result["sessionId"]
        info = result.get("environmentInfo")
        self.environment_info = info if isinstance(info, dict) else {}
        self.state = ExecutorState.READY
        self.disconnected_at = None
        actions: list[Action] = [
            ToExecutor({"method": "initialized", "params": {}}),
            SaveSession(self.session_id, self.environment_info),
        ]
        if not resumed:
            actions.extend(self._lose_all_vsessions("the executor's session was lost; start a new session"))
        else:
            for vsession in self._vsessions.values():
                if self._attached_ready(vsession):
                    actions.extend(self._start_recovery(vsession))
        backlog, self._backlog = self._backlog, []
        for conn_id, queued in backlog:
            actions.extend(self.bridge_message(conn_id, queued))
        return actions

    def _lose_all_vsessions(self, reason: str) -> list[Action]:
        actions: list[Action] = []
        for vsession in list(self._vsessions.values()):
            conn_id = vsession.conn_id
            if conn_id is not None:
                # Requests queued during the handshake are answered before the close: codex waits
                # out its 45 s session recovery for a request that dies with its connection.
                actions.extend(self._fail_backlog(reason, conn_id))
                actions.append(CloseBridge(conn_id, CLOSE_EXECUTOR_LOST, reason))
                self._links.pop(conn_id, None)
            self._drop_vsession(vsession)
        return actions

    def _client_response(self, pending: Pending, message: JSON) -> list[Action]:
        vsession = pending.vsession
        assert vsession is not None
        if pending.method == "process/start" and pending.process is not None:
            # Kept even if the bridge left meanwhile: the process must be recovered when the
            # session resumes, or terminated when it expires. A refused start leaves no process.
            process = vsession.processes.get(pending.process)
            if process is not None and process.starting:
                process.starting = False
                if "error" in message and not process.observed_seq:
                    del vsession.processes[pending.process]
                    self._touch(vsession)
        if pending.conn_id not in self._links or vsession.conn_id != pending.conn_id:
            return [Dropped("response_for_departed_bridge", pending.method)]
        if "error" in message:
            return [ToBridge(pending.conn_id, {"id": pending.client_id, "error": message["error"]})]
        result = message.get("result")
        if isinstance(result, dict):
            result = self._restore_handles(vsession, result)
        return [ToBridge(pending.conn_id, {"id": pending.client_id, "result": result})]

    def _executor_notification(self, message: JSON) -> list[Action]:
        method = str(message.get("method"))
        params = message.get("params")
        owner = self._owner_of(params) if isinstance(params, dict) else None
        if owner is None:
            return [Dropped("unrouted_notification", method)]
        vsession, restored = owner
        if method in PROCESS_EVENTS and "processId" in restored:
            return self._process_event(vsession, method, restored)
        if not self._attached_ready(vsession):
            return [Dropped("owner_detached", method)]
        assert vsession.conn_id is not None
        return [ToBridge(vsession.conn_id, {"method": method, "params": restored})]

    def _process_event(self, vsession: VirtualSession, method: str, params: JSON) -> list[Action]:
        process_id = params["processId"]
        process = vsession.processes.setdefault(process_id, ProcessState())
        self._touch(vsession)
        seq = params.get("seq")
        if isinstance(seq, int):
            process.observed_seq = max(process.observed_seq, seq)
        event = {"method": method, "params": params}
        actions = self._wake_reads(vsession, process_id)
        if not self._attached_ready(vsession):
            return actions + self._deliver_event(vsession, process, event)  # not delivered: re-read on resume
        if process.needs_recovery or process.recovering:
            # The owner may be owed events before this one (the executor was away, or so was the
            # owner): delivering it now could put it past a gap. Even a push that comes before the
            # executor answers the resume initialize waits for the recovery read.
            self._hold(process, event)
            if not process.recovering and self.state is ExecutorState.READY:
                # Recovery starts as soon as it can (handshake, initialized); never wait for it.
                actions += self._start_recovery(vsession)
            return actions
        if isinstance(seq, int) and seq > process.owed_after + 1:
            # It overtook a lower seq (codex-wire.md §C.10: process/closed before process/exited,
            # process/exited before the last process/output): wait for that one.
            self._hold(process, event)
            if process.held_overflow and self.state is ExecutorState.READY:
                return [*actions, self._recover(vsession, process_id, process)]
            if process.reorder_at is None:
                process.reorder_at = self._schedule(self.clock() + REORDER_WAIT, vsession.vsid, process_id)
            return actions
        actions += self._deliver_event(vsession, process, event)
        if process.held:
            actions += self._drain_held(vsession, process_id, process)
        return actions

    def _hold(self, process: ProcessState, event: JSON) -> None:
        if len(process.held) < HELD_EVENTS_MAX:
            process.held.append(event)
        else:
            # Not lost: the executor retains it, and recovery reads on until it has it.
            process.held_overflow = True

    def _deliver_event(self, vsession: VirtualSession, process: ProcessState, event: JSON) -> list[Action]:
        params = event["params"]
        seq = params.get("seq")
        if isinstance(seq, int) and seq <= process.last_seq and seq not in process.missing:
            return []  # already delivered (a recovery read and the live push overlap)
        if not self._attached_ready(vsession):
            # Not delivered: the owner re-reads from what it is owed when it resumes its session.
            process.needs_recovery = True
            return [Dropped("owner_detached", event["method"])]
        if isinstance(seq, int):
            # Seqs skipped here are still owed (a recovery read delivers past a gap it cannot
            # place yet: the exit, or output lost; its end settles them): remember them.
            process.missing.update(range(process.last_seq + 1, seq))
            process.last_seq = max(process.last_seq, seq)
            process.missing.discard(seq)
        if event["method"] == "process/exited":
            process.exited = True
        elif event["method"] == "process/closed":
            process.closed = True
        assert vsession.conn_id is not None
        return [ToBridge(vsession.conn_id, event)]

    # --- recovery of missed output ----------------------------------------------------------

    def _start_recovery(self, vsession: VirtualSession) -> list[Action]:
        actions: list[Action] = []
        for process_id, process in vsession.processes.items():
            process.needs_recovery = False
            if process.recovering:
                continue  # the read in flight (or its retry) reads on from where it is
            if not process.readable:
                if process.held:
                    actions.extend(self._drain_held(vsession, process_id, process))  # nothing is owed: let them go out
                continue
            actions.append(self._recover(vsession, process_id, process))
        return actions

    def _recover(self, vsession: VirtualSession, process_id: str, process: ProcessState) -> ToExecutor:
        """Start reading what the owner is owed; events pushed meanwhile are held."""
        process.needs_recovery = False
        process.recovering = True
        process.reorder_at = None
        return self._recovery_read(vsession, process_id, process.owed_after)

    def _recovery_read(
        self, vsession: VirtualSession, process_id: str, after_seq: int, *, continued: bool = False
    ) -> ToExecutor:
        pending = Pending(
            kind="recover", vsession=vsession, process=process_id, after_seq=after_seq, continued=continued
        )
        params = {
            "processId": f"{vsession.prefix}.{process_id}",
            "afterSeq": after_seq,
            "maxBytes": RECOVERY_READ_BYTES,
            "waitMs": 0,
        }
        return self._request(pending, {"method": "process/read", "params": params})

    def _recovery_response(self, pending: Pending, message: JSON) -> list[Action]:
        vsession, process_id = pending.vsession, pending.process
        assert vsession is not None
        assert process_id is not None
        process = vsession.processes.get(process_id)
        if process is None or self._vsessions.get(vsession.vsid) is not vsession:
            return []
        self._touch(vsession)
        if not self._attached_ready(vsession):
            # The owner left (or resumed and is not initialized yet): nothing can be delivered,
            # so stop paging; recovery restarts from what is owed once the session is ready again.
            return [Dropped("owner_detached", "process/read"), *self._stop_recovery(process)]
        result = message.get("result")
        if not isinstance(result, dict):
            return self._recovery_failed(vsession, process_id, process, message.get("error"))
        process.failures = 0
        if isinstance(result.get("nextSeq"), int):
            # What recovery learned exists counts as seen, as pushed events do (long-polls).
            process.observed_seq = max(process.observed_seq, result["nextSeq"] - 1)
        after = pending.after_seq
        chunks = sorted(
            (c for c in result.get("chunks") or [] if isinstance(c, dict) and isinstance(c.get("seq"), int)),
            key=lambda c: c["seq"],
        )
        chunks = [c for c in chunks if c["seq"] > after]
        actions: list[Action] = []
        exit_pending = bool(result.get("exited")) and not process.exited
        if chunks and chunks[0]["seq"] > after + 1 and not exit_pending:
            # The answer starts later than asked, and the gap cannot hold the exit (closed would
            # come after every chunk): that output fell out of exec-server's retention.
            actions += self._give_up(vsession, process_id, process, range(after + 1, chunks[0]["seq"]))
        # Could the answer's start have been trimmed by retention? Not if it continues a page, or
        # holds far less than exec-server retains (it trims only as far as it must).
        trimmed = not pending.continued and _chunk_bytes(chunks) >= EXEC_RETENTION_BYTES // 2
        previous = after
        for chunk in chunks:
            if exit_pending and chunk["seq"] == previous + 2 and not (previous == after and trimmed):
                # One seq missing between retained output: the exit, which came before the last
                # output (codex-wire.md §C.10). Placed now, so everything goes out in seq order;
                # what is still owed below it is then known to be lost output, told first.
                below = [seq for seq in process.missing if seq <= previous]
                actions += self._give_up(vsession, process_id, process, below)
                actions += self._deliver_event(vsession, process, self._exited_event(process_id, previous + 1, result))
                exit_pending = False
            previous = chunk["seq"]
            event_params = {
                "processId": process_id,
                "seq": chunk["seq"],
                "stream": chunk.get("stream"),
                "chunk": chunk.get("chunk"),
            }
            actions.extend(self._deliver_event(vsession, process, {"method": "process/output", "params": event_params}))
        if chunks:
            # A page came back: read on until the executor has nothing more.
            actions.append(self._recovery_read(vsession, process_id, chunks[-1]["seq"], continued=True))
            return actions
        if process.held_overflow or process.needs_recovery:
            # Caught up as of this answer, but pushes were let go meanwhile (held past the bound,
            # or dropped while the owner was away): read them too.
            process.held_overflow = process.needs_recovery = False
            actions.append(self._recovery_read(vsession, process_id, after, continued=True))
            return actions
        next_seq = result.get("nextSeq")
        if isinstance(next_seq, int):
            # Seqs the executor has but did not return as output: its exit and close, or lost.
            process.missing.update(range(max(after, process.last_seq) + 1, next_seq))
        actions.extend(self._finish_recovery(vsession, process_id, process, result))
        return actions

    def _recovery_failed(
        self, vsession: VirtualSession, process_id: str, process: ProcessState, error: Any
    ) -> list[Action]:
        """A recovery read failed: nothing is delivered past the gap. It is read again later,
        unless the executor says the process is gone or it kept failing: then what the owner is
        owed is given up on (the owner is told) and what was held is delivered."""
        actions: list[Action] = [Dropped("recovery_failed", f"{process_id}: {error}")]
        process.failures += 1
        message = error.get("message") if isinstance(error, dict) else None
        gone = isinstance(message, str) and message.startswith("unknown process id")
        if not gone and process.failures < RECOVERY_ATTEMPTS:
            delay = RECOVERY_RETRY_DELAY * 2 ** (process.failures - 1)
            process.retry_at = self._schedule(self.clock() + delay, vsession.vsid, process_id)
            return actions
        process.failures = 0
        held = {e["params"]["seq"] for e in process.held if isinstance(e["params"].get("seq"), int)}
        held = {seq for seq in held if seq > process.last_seq}
        # Owed: every seq not delivered up to the first one held, or, if pushes were let go, up
        # to the highest seen.
        owed_to = process.observed_seq if process.held_overflow or not held else min(held) - 1
        owed = (process.missing | set(range(process.last_seq + 1, owed_to + 1))) - held
        actions += self._give_up(vsession, process_id, process, owed, reason="output_lost_unreadable")
        process.recovering = process.needs_recovery = False
        return actions + self._drain_held(vsession, process_id, process)

    def _read_again(self, vsession: VirtualSession, process_id: str, process: ProcessState) -> list[Action]:
        """A failed recovery read's retry is due, or a live gap did not fill in time: read what
        the owner is owed."""
        process.retry_at = None
        if not self._attached_ready(vsession):
            return self._stop_recovery(process)
        return [self._recover(vsession, process_id, process)]

    def _stop_recovery(self, process: ProcessState) -> list[Action]:
        """The owner cannot take events now: what was held is let go (the owner re-reads what it
        is owed when it is back)."""
        process.recovering = False
        process.needs_recovery = True
        process.retry_at = process.reorder_at = None
        process.failures = 0
        process.held_overflow = False
        held, process.held = process.held, []
        return [Dropped("owner_detached", event["method"]) for event in held]

    def _give_up(
        self,
        vsession: VirtualSession,
        process_id: str,
        process: ProcessState,
        seqs: Iterable[int],
        reason: str = "output_lost_beyond_retention",
    ) -> list[Action]:
        """The executor cannot give back ``seqs``: tell the owner which ones it will never get
        (one ``gateway/outputLost`` per contiguous range) and count the loss. Seqs already
        delivered are left out; the rest are no longer owed. A seq whose live push is held
        here is delivered instead, where that keeps seq order (it was pushed, then fell out of
        the executor's retention before the recovery read it)."""
        held = {e["params"]["seq"]: e for e in process.held if isinstance(e["params"].get("seq"), int)}
        actions: list[Action] = []
        run: list[int] = []
        for seq in sorted(set(seqs)):
            event = held.get(seq)
            if event is None or seq <= process.last_seq:
                run.append(seq)
                continue
            actions += self._tell_lost(vsession, process_id, process, run, reason)
            run = []
            actions += self._deliver_event(vsession, process, event)
        return actions + self._tell_lost(vsession, process_id, process, run, reason)

    def _tell_lost(
        self, vsession: VirtualSession, process_id: str, process: ProcessState, seqs: list[int], reason: str
    ) -> list[Action]:
        lost = sorted({s for s in seqs if s > process.last_seq or s in process.missing})
        if not lost:
            return []
        # Seqs below the lost ones that are not lost stay owed.
        process.missing.update(s for s in range(process.last_seq + 1, lost[-1]) if s not in lost)
        process.missing.difference_update(lost)
        process.last_seq = max(process.last_seq, lost[-1])
        assert vsession.conn_id is not None
        actions: list[Action] = []
        ranges: list[list[int]] = []
        for seq in lost:
            if ranges and seq == ranges[-1][1] + 1:
                ranges[-1][1] = seq
            else:
                ranges.append([seq, seq])
        for first, last in ranges:
            params = {"processId": process_id, "fromSeq": first, "toSeq": last}
            actions.append(ToBridge(vsession.conn_id, {"method": OUTPUT_LOST, "params": params}))
            actions.append(Dropped(reason, f"{process_id}: {last - first + 1} event(s), seq {first}-{last}"))
        return actions

    def _finish_recovery(
        self, vsession: VirtualSession, process_id: str, process: ProcessState, result: JSON
    ) -> list[Action]:
        """Deliver the exited/closed events that happened while the executor was away; what
        else is still owed fell out of exec-server's retention: the owner is told, before its
        exit and close."""
        gaps = sorted(process.missing)
        closed_seq = gaps.pop() if result.get("closed") and not process.closed and gaps else None
        exited_seq = gaps.pop() if result.get("exited") and not process.exited and gaps else None
        actions = self._give_up(vsession, process_id, process, gaps)
        if exited_seq is not None:
            actions.extend(self._deliver_event(vsession, process, self._exited_event(process_id, exited_seq, result)))
        if closed_seq is not None:
            closed = {"processId": process_id, "seq": closed_seq}
            actions.extend(self._deliver_event(vsession, process, {"method": "process/closed", "params": closed}))
        process.recovering = False
        return actions + self._drain_held(vsession, process_id, process)

    @staticmethod
    def _exited_event(process_id: str, seq: int, result: JSON) -> JSON:
        params = {
            "processId": process_id,
            "seq": seq,
            "exitCode": result.get("exitCode"),
            "sandboxDenied": bool(result.get("sandboxDenied")),
        }
        return {"method": "process/exited", "params": params}

    def _drain_held(self, vsession: VirtualSession, process_id: str, process: ProcessState) -> list[Action]:
        """Deliver the held events that owe nothing before them, in seq order (the end of a
        recovery, or a live gap filled), and release the long-polls that now have something to
        read. Events still behind a gap stay held, for at most REORDER_WAIT before it is read."""
        held = sorted(process.held, key=lambda e: e["params"].get("seq") or 0)
        process.held_overflow = False
        actions: list[Action] = []
        while held:
            seq = held[0]["params"].get("seq")
            if isinstance(seq, int) and seq > process.owed_after + 1:
                break
            actions.extend(self._deliver_event(vsession, process, held.pop(0)))
        if held and (actions or process.reorder_at is None):
            process.reorder_at = self._schedule(self.clock() + REORDER_WAIT, vsession.vsid, process_id)
        elif not held:
            process.reorder_at = None
        process.held = held
        ready = [
            h
            for h in self._held_reads
            if h.vsession is vsession
            and vsession.processes.get(h.process) is process
            and (process.exited or process.closed or _after_seq(h.params) < process.observed_seq)
        ]
        return actions + self._release_reads(ready)

    # --- bridge side ------------------------------------------------------------------------

    def bridge_attached(self, conn_id: str) -> list[Action]:
        self._links[conn_id] = BridgeLink(conn_id)
        return []

    def bridge_detached(self, conn_id: str) -> list[Action]:
        link = self._links.pop(conn_id, None)
        if link is None:
            return []
        self._held_reads = [h for h in self._held_reads if h.conn_id != conn_id]
        self._backlog = [(c, m) for c, m in self._backlog if c != conn_id]
        if link.vsession is not None and link.vsession.conn_id == conn_id:
            link.vsession.conn_id = None
            link.vsession.detached_at = self.clock()
            self._schedule(link.vsession.detached_at + self.resume_window, link.vsession.vsid)
        return []

    def not_delivered(self, conn_id: str, messages: Iterable[Any]) -> int:
        """Messages handed out for ``conn_id`` never reached it (its link to another process
        discarded them, or its socket closed under the send): the process events among them are
        owed again, so the session's next resume reads them (or reports them lost). Returns
        how many events are owed again."""
        vsession = next((v for v in self._vsessions.values() if v.delivered_via == conn_id), None)
        if vsession is None:
            return 0
        owed = 0
        for message in messages:
            params = message.get("params") if isinstance(message, dict) else None
            if not isinstance(params, dict) or not isinstance(params.get("processId"), str):
                continue
            method = message["method"]
            process = vsession.processes.get(params["processId"])
            if process is None:
                continue
            first, last = params.get("fromSeq"), params.get("toSeq")
            if method == OUTPUT_LOST and isinstance(first, int) and isinstance(last, int):
                seqs = range(first, last + 1)  # told again after the resume
            elif method in PROCESS_EVENTS and isinstance(params.get("seq"), int):
                seqs = range(params["seq"], params["seq"] + 1)
            else:
                continue
            for seq in seqs:
                if 0 < seq <= process.last_seq:
                    process.missing.add(seq)
                    owed += 1
            if method == "process/exited":
                process.exited = False
            elif method == "process/closed":
                process.closed = False
        if owed:
            self._touch(vsession)
        return owed

    def bridge_message(self, conn_id: str, message: Any) -> list[Action]:
        link = self._links.get(conn_id)
        if link is None:
            return [Dropped("message_from_unknown_bridge", conn_id)]
        if not isinstance(message, dict):
            return _refuse(conn_id, -1, INVALID_REQUEST, "failed to parse JSON-RPC message: expected a JSON-RPC object")
        method = message.get("method")
        if method is None:
            # A response: the gateway never sends bridges requests, so it has no owner.
            return [Dropped("stray_client_response", repr(message.get("id")))]
        if "id" not in message:
            return self._client_notification(link, str(method))
        request_id = message["id"]
        if not _valid_id(request_id) or not isinstance(method, str):
            return _refuse(conn_id, -1, INVALID_REQUEST, "failed to parse JSON-RPC message: invalid id or method")
        if method == "initialize":
            if link.state is not LinkState.AWAITING_INITIALIZE:
                return _refuse(conn_id, request_id, INVALID_REQUEST, "initialize may only be sent once per connection")
            return self._initialize_bridge(link, request_id, message.get("params"))
        if link.state is not LinkState.READY:
            return _refuse(conn_id, request_id, INVALID_REQUEST, NOT_READY[link.state])
        if self.state is ExecutorState.HANDSHAKING:
            self._backlog.append((conn_id, message))
            return []
        if self.state is ExecutorState.DISCONNECTED:
            return [ToBridge(conn_id, _unavailable(request_id, "executor is not connected; retry when it reconnects"))]
        assert link.vsession is not None
        return self._forward_request(
            link, link.vsession, request_id, method, message.get("params"), "params" in message
        )

    def _client_notification(self, link: BridgeLink, method: str) -> list[Action]:
        if method != "initialized":
            # exec-server drops the whole connection on an unknown notification; never forward one.
            return [Dropped("unknown_client_notification", method)]
        if link.state is LinkState.AWAITING_INITIALIZE:
            return [Dropped("initialized_before_initialize", link.conn_id)]
        if link.state is LinkState.AWAITING_INITIALIZED:
            link.state = LinkState.READY
            assert link.vsession is not None
            if self.state is ExecutorState.READY and any(p.needs_recovery for p in link.vsession.processes.values()):
                return self._start_recovery(link.vsession)
        return []

    def _initialize_bridge(self, link: BridgeLink, request_id: Any, params: Any) -> list[Action]:
        conn_id = link.conn_id
        if not isinstance(params, dict):
            return _refuse(conn_id, request_id, INVALID_PARAMS, "invalid type: null, expected struct InitializeParams")
        if not isinstance(params.get("clientName"), str):
            return _refuse(conn_id, request_id, INVALID_PARAMS, "missing field `clientName`")
        if self.environment_info is None:
            # Only possible before the executor's first handshake: answer once it is known.
            self._backlog.append((conn_id, {"id": request_id, "method": "initialize", "params": params}))
            return []
        resume = params.get("resumeSessionId")
        if isinstance(resume, str):
            vsession = self._vsessions.get(resume)
            if vsession is None:
                return _refuse(conn_id, request_id, INVALID_REQUEST, f"unknown session id {resume}")
            if vsession.conn_id is not None and vsession.conn_id in self._links:
                attached = f"session {resume} is already attached to another connection"
                return _refuse(conn_id, request_id, SESSION_ATTACHED, attached)
            vsession.conn_id = conn_id
            vsession.delivered_via = conn_id
            vsession.detached_at = None
            for process in vsession.processes.values():
                if process.readable:
                    process.needs_recovery = True
        else:
            vsid = str(uuid.uuid4())
            prefix = f"v{secrets.token_hex(4)}"
            while prefix in self._by_prefix:
                prefix = f"v{secrets.token_hex(4)}"
            vsession = VirtualSession(vsid=vsid, prefix=prefix, conn_id=conn_id, delivered_via=conn_id)
            self._vsessions[vsid] = vsession
            self._by_prefix[prefix] = vsession
            self._touch(vsession, urgent=True)
        link.vsession = vsession
        link.state = LinkState.AWAITING_INITIALIZED
        result = {"sessionId": vsession.vsid, "environmentInfo": self.environment_info}
        return [ToBridge(conn_id, {"id": request_id, "result": result})]

    def _forward_request(
        self, link: BridgeLink, vsession: VirtualSession, client_id: Any, method: str, params: Any, has_params: bool
    ) -> list[Action]:
        process_id: str | None = None
        if isinstance(params, dict):
            if isinstance(params.get("processId"), str):
                process_id = params["processId"]
                previous = vsession.processes.get(process_id)
                if method == "process/start" and (previous is None or previous.closed):
                    # Recorded before it runs (a reused id starts a new seq series), so a process
                    # that takes the session over knows of it.
                    vsession.processes[process_id] = ProcessState(starting=True)
                    self._touch(vsession, urgent=True)
            if method == "process/read" and process_id is not None and self._should_hold(vsession, process_id, params):
                # min() before any float(): a JSON integer can be beyond a float's range (_should_hold
                # made sure waitMs is a number above 0).
                deadline = self.clock() + min(params["waitMs"], 300_000) / 1000.0
                self._held_reads.append(HeldRead(link.conn_id, client_id, vsession, process_id, params, deadline))
                return []
            params = self._namespace_handles(vsession, params)
            if method == "process/read":
                # Never long-poll on the shared connection: exec-server serves requests one at a
                # time by default, so one client's wait would stall every other client.
                params["waitMs"] = 0
        forwarded: JSON = {"method": method}
        if has_params:
            forwarded["params"] = params
        pending = Pending("client", link.conn_id, client_id, vsession, process_id, method)
        return [self._request(pending, forwarded)]

    def _should_hold(self, vsession: VirtualSession, process_id: str, params: JSON) -> bool:
        wait = params.get("waitMs")
        # "not > 0" rather than "<= 0": a NaN (Python's JSON reads it) must not be held, or the
        # deadlines would turn NaN and the session driver would spin.
        if not isinstance(wait, int | float) or not wait > 0:
            return False
        process = vsession.processes.get(process_id)
        # While the process is being recovered the gateway does not yet know what the client
        # missed: hold the read too (answering it empty at once would end a long-poll early);
        # recovery releases it when it learns of new output.
        if process is None or process.exited or process.closed:
            return False
        return _after_seq(params) >= process.observed_seq

    def _wake_reads(self, vsession: VirtualSession, process_id: str) -> list[Action]:
        due = [h for h in self._held_reads if h.vsession is vsession and h.process == process_id]
        return self._release_reads(due)

    def _release_reads(self, due: Iterable[HeldRead]) -> list[Action]:
        actions: list[Action] = []
        for held in list(due):
            self._held_reads.remove(held)
            link = self._links.get(held.conn_id)
            if link is None or link.vsession is not held.vsession:
                continue
            params = {**self._namespace_handles(held.vsession, held.params), "waitMs": 0}
            pending = Pending("client", held.conn_id, held.client_id, held.vsession, held.process, "process/read")
            actions.append(self._request(pending, {"method": "process/read", "params": params}))
        return actions

    # --- handles ----------------------------------------------------------------------------

    def _namespace_handles(self, vsession: VirtualSession, params: JSON) -> JSON:
        rewritten = dict(params)
        for key in HANDLE_KEYS:
            if key in rewritten:
                rewritten[key] = self._to_gateway_handle(vsession, key, rewritten[key])
        return rewritten

    def _to_gateway_handle(self, vsession: VirtualSession, key: str, value: Any) -> Any:
        """String handles get the virtual session's prefix; integer handles (fs/watchMissing
        wants a u64 ``watchId``) are mapped to gateway-unique integers."""
        if isinstance(value, str):
            return f"{vsession.prefix}.{value}"
        if isinstance(value, int) and not isinstance(value, bool):
            mapped = vsession.int_handles.get((key, value))
            if mapped is None:
                mapped = self._next_handle
                self._next_handle += 1
                vsession.int_handles[(key, value)] = mapped
                self._int_owners[(key, mapped)] = (vsession, value)
                self._touch(vsession, urgent=True)
            return mapped
        return value  # exec-server rejects it with its own error

    def _restore_handles(self, vsession: VirtualSession, payload: JSON) -> JSON:
        restored = dict(payload)
        for key in HANDLE_KEYS:
            value = restored.get(key)
            if isinstance(value, str) and value.startswith(vsession.prefix + "."):
                restored[key] = value[len(vsession.prefix) + 1 :]
            elif isinstance(value, int) and (key, value) in self._int_owners:
                owner, original = self._int_owners[(key, value)]
                if owner is vsession:
                    restored[key] = original
        return restored

    def _owner_of(self, params: JSON) -> tuple[VirtualSession, JSON] | None:
        for key in HANDLE_KEYS:
            value = params.get(key)
            owner: VirtualSession | None = None
            if isinstance(value, str) and "." in value:
                owner = self._by_prefix.get(value.split(".", 1)[0])
            elif isinstance(value, int) and (key, value) in self._int_owners:
                owner = self._int_owners[(key, value)][0]
            if owner is not None:
                return owner, self._restore_handles(owner, params)
        return None

    # --- time -------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        # Only deadlines tick() can act on now: a past one it must postpone would make the driver
        # spin. Expiry needs a ready executor; the executor's window runs only while it is away.
        if self.state is ExecutorState.READY and not self._timeline and not self._held_reads:
            return None  # the common case, asked after every event
        deadlines = [h.deadline for h in self._held_reads]
        if self.state is ExecutorState.READY:
            while self._timeline and not self._due(*self._timeline[0]):
                heapq.heappop(self._timeline)
            if self._timeline:
                deadlines.append(self._timeline[0][0])
        if self.state is ExecutorState.DISCONNECTED and self.disconnected_at is not None:
            deadlines.append(self.disconnected_at + self.retention)
        if self.state is ExecutorState.HANDSHAKING:
            deadlines.append(self._handshake_deadline)
        return min(deadlines) if deadlines else None

    def tick(self) -> list[Action]:
        now = self.clock()
        actions = self._release_reads([h for h in self._held_reads if h.deadline <= now])
        if self.state is ExecutorState.HANDSHAKING and now >= self._handshake_deadline:
            # The driver's disconnect of this connection then fails what waits for the handshake.
            self._handshake_deadline = now + HANDSHAKE_TIMEOUT
            actions += [
                CloseExecutor(1011, "executor did not answer initialize"),
                Dropped("executor_handshake_timeout"),
            ]
        if self.state is ExecutorState.DISCONNECTED and self.disconnected_at is not None:
            if now >= self.disconnected_at + self.retention:
                # exec-server has killed the session's processes by now.
                actions.extend(self._lose_all_vsessions("the executor did not come back within the session window"))
                actions.extend(self._fail_backlog("executor did not come back"))
                actions.extend(self._finish(CLOSE_EXECUTOR_LOST, "executor did not come back"))
            return actions
        # The timeline fires only while the executor is ready: a read and a process/terminate
        # both need it. A disconnect cancels the process timers; expiries wait for it to be back.
        while self.state is ExecutorState.READY and self._timeline and self._timeline[0][0] <= now:
            at, order, vsid, process_id = heapq.heappop(self._timeline)
            if not self._due(at, order, vsid, process_id):
                continue  # the timer was cleared or moved, or the session resumed or is gone
            vsession = self._vsessions[vsid]
            if process_id is not None:
                actions.extend(self._read_again(vsession, process_id, vsession.processes[process_id]))
            else:
                actions.extend(self._expire_vsession(vsession))
        return actions

    def _schedule(self, at: float, vsid: str, process_id: str | None = None) -> float:
        """Put a session's detach expiry (no ``process_id``: a client may name a process "") or a
        process timer on the timeline; entries of the same time go in order, never compared further."""
        heapq.heappush(self._timeline, (at, next(self._timeline_order), vsid, process_id))
        return at

    def _due(self, at: float, _order: int, vsid: str, process_id: str | None) -> bool:
        """Whether a timeline entry still stands for a timer that is set."""
        vsession = self._vsessions.get(vsid)
        if vsession is None:
            return False
        if process_id is None:
            return vsession.detached_at is not None and vsession.detached_at + self.resume_window == at
        process = vsession.processes.get(process_id)
        return process is not None and at in (process.retry_at, process.reorder_at)

    def _expire_vsession(self, vsession: VirtualSession) -> list[Action]:
        """Nobody resumed the virtual session in time: end its processes on the executor (only
        once it is ready: tick() leaves the expiry on the timeline until then)."""
        actions: list[Action] = []
        for process_id, process in vsession.processes.items():
            if process.closed:
                continue
            params = {"processId": f"{vsession.prefix}.{process_id}"}
            actions.append(self._request(Pending(kind="internal"), {"method": "process/terminate", "params": params}))
        self._drop_vsession(vsession)
        return actions

    def _drop_vsession(self, vsession: VirtualSession) -> None:
        self._vsessions.pop(vsession.vsid, None)
        self._dirty.discard(vsession.vsid)
        self._removed.add(vsession.vsid)
        self._urgent = True
        self._by_prefix.pop(vsession.prefix, None)
        for key in [k for k, (owner, _) in self._int_owners.items() if owner is vsession]:
            del self._int_owners[key]
        self._held_reads = [h for h in self._held_reads if h.vsession is not vsession]

    def _attached_ready(self, vsession: VirtualSession) -> bool:
        if vsession.conn_id is None:
            return False
        link = self._links.get(vsession.conn_id)
        return link is not None and link.state is LinkState.READY and link.vsession is vsession

    def _fail_backlog(self, reason: str, conn_id: str | None = None) -> list[Action]:
        """Answer the requests queued during the handshake (every bridge's, or ``conn_id``'s):
        retryable, ``reason``."""
        failed = [(c, m) for c, m in self._backlog if conn_id is None or c == conn_id]
        self._backlog = [(c, m) for c, m in self._backlog if conn_id is not None and c != conn_id]
        return [
            ToBridge(c, _unavailable(m["id"], reason))
            for c, m in failed
            if isinstance(m, dict) and "id" in m and c in self._links
        ]

    def drain(self, code: int, reason: str) -> list[Action]:
        """This gateway process is going away: answer everything that waits (retryable), then
        close every bridge and the executor with ``code`` so both reconnect to another process,
        which takes the virtual sessions over from the shared table."""
        return [*self.executor_disconnected(), *self._finish(code, reason), CloseExecutor(code, reason)]

    def evicted(self, reason: str) -> list[Action]:
        """Another gateway process now holds the executor: every bridge must reconnect there."""
        return [CloseExecutor(CLOSE_EXECUTOR_REPLACED, reason), *self._finish(CLOSE_EXECUTOR_LOST, reason)]

    def _finish(self, code: int, reason: str) -> list[Action]:
        """This multiplexer is done: every bridge is closed with ``code``."""
        closes: list[Action] = [CloseBridge(conn_id, code, reason) for conn_id in self._links]
        self._links.clear()
        self.finished = True
        return closes
