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
"""

from __future__ import annotations

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
# process/read page size while recovering missed output (exec-server retains ~1 MiB per process).
RECOVERY_READ_BYTES = 4 * 1024 * 1024
# An executor that does not answer initialize within this time is hung up on (it reconnects).
HANDSHAKE_TIMEOUT = 30.0


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


@dataclass
class ProcessState:
    """What the gateway knows of one process of a virtual session."""

    last_seq: int = 0  # last event seq delivered to the owner
    observed_seq: int = 0  # highest event seq seen from the executor
    exited: bool = False
    closed: bool = False
    needs_recovery: bool = False
    recovering: bool = False
    held: list[JSON] = field(default_factory=list)  # events that arrived during recovery
    missing: set[int] = field(default_factory=set)  # seqs skipped by recovery (exited/closed or lost)
    exit_info: JSON | None = None
    starting: bool = False  # process/start forwarded, no answer yet

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
        closed = bool(data.get("closed"))
        return cls(
            last_seq=int(data.get("last_seq") or 0),
            observed_seq=int(data.get("observed_seq") or 0),
            exited=bool(data.get("exited")),
            closed=closed,
            missing={int(seq) for seq in data.get("missing") or []},
            needs_recovery=not closed,
        )


@dataclass
class VirtualSession:
    vsid: str
    prefix: str
    conn_id: str | None
    detached_at: float | None = None
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


@dataclass
class HeldRead:
    """A client's long-poll ``process/read``: the gateway waits instead of the executor."""

    conn_id: str
    client_id: Any
    vsession: VirtualSession
    process: str
    params: JSON
    deadline: float


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

    def take_changes(self) -> TableChanges:
        upserts = {vsid: self._vsessions[vsid].snapshot() for vsid in self._dirty if vsid in self._vsessions}
        changes = TableChanges(upserts, sorted(self._removed), self._next_handle, self._urgent)
        self._dirty.clear()
        self._removed.clear()
        self._urgent = False
        return changes

    # --- introspection (tests, metrics, admin) ----------------------------------------------

    @property
    def bridge_count(self) -> int:
        return len(self._links)

    @property
    def pending_count(self) -> int:
        return len(self._pending) + len(self._held_reads)

    @property
    def vsession_count(self) -> int:
        return len(self._vsessions)

    # --- executor side ----------------------------------------------------------------------

    def executor_connected(self) -> list[Action]:
        """The executor's WebSocket is open: the gateway speaks first and resumes the session."""
        self.state = ExecutorState.HANDSHAKING
        self._handshake_deadline = self.clock() + HANDSHAKE_TIMEOUT
        self._resuming = self.session_id is not None
        return [self._initialize_executor(self.session_id)]

    def _initialize_executor(self, resume: str | None) -> ToExecutor:
        request_id = next(self._ids)
        self._pending[request_id] = Pending(kind="handshake")
        params: JSON = {"clientName": GATEWAY_CLIENT_NAME, "resumeSessionId": resume}
        return ToExecutor({"id": request_id, "method": "initialize", "params": params})

    def executor_disconnected(self) -> list[Action]:
        if self.state is ExecutorState.DISCONNECTED:
            return []
        self.state = ExecutorState.DISCONNECTED
        self.disconnected_at = self.clock()
        actions: list[Action] = []
        for pending in self._pending.values():
            if pending.kind == "client" and pending.conn_id in self._links:
                actions.append(
                    ToBridge(
                        pending.conn_id,
                        _unavailable(
                            pending.client_id,
                            "executor connection lost before the response; the request may or may not have run",
                        ),
                    )
                )
            elif pending.kind == "recover" and pending.vsession is not None and pending.process is not None:
                process = pending.vsession.processes.get(pending.process)
                if process is not None:
                    process.recovering = False
                    process.needs_recovery = True
        self._pending.clear()
        for held in self._held_reads:
            if held.conn_id in self._links:
                actions.append(ToBridge(held.conn_id, _unavailable(held.client_id, "executor connection lost")))
        self._held_reads.clear()
        actions.extend(self._fail_backlog("executor connection lost"))
        # Every live process must be re-read after the session resumes.
        for vsession in self._vsessions.values():
            for process in vsession.processes.values():
                if not process.closed:
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
            if vsession.conn_id is not None:
                actions.append(CloseBridge(vsession.conn_id, CLOSE_EXECUTOR_LOST, reason))
                self._links.pop(vsession.conn_id, None)
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
        reply: JSON = {"id": pending.client_id}
        result = message.get("result")
        if "error" in message:
            reply["error"] = message["error"]
        else:
            if isinstance(result, dict):
                result = self._restore_handles(vsession, result)
            reply["result"] = result
        return [ToBridge(pending.conn_id, reply)]

    def _executor_notification(self, message: JSON) -> list[Action]:
        method = str(message.get("method"))
        params = message.get("params")
        if not isinstance(params, dict):
            return [Dropped("unrouted_notification", method)]
        owner = self._owner_of(params)
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
        if process.recovering:
            process.held.append(event)
            return actions
        return actions + self._deliver_event(vsession, process, event)

    def _deliver_event(self, vsession: VirtualSession, process: ProcessState, event: JSON) -> list[Action]:
        params = event["params"]
        seq = params.get("seq")
        if isinstance(seq, int) and seq <= process.last_seq and seq not in process.missing:
            return []  # already delivered (a recovery read and the live push overlap)
        if not self._attached_ready(vsession):
            # Not delivered: the owner re-reads from last_seq when it resumes its session.
            process.needs_recovery = True
            return [Dropped("owner_detached", event["method"])]
        if isinstance(seq, int):
            # Seqs skipped here are still owed (events may arrive out of order): remember them.
            process.missing.update(range(process.last_seq + 1, seq))
            process.last_seq = max(process.last_seq, seq)
            process.missing.discard(seq)
        if event["method"] == "process/exited":
            process.exited = True
        elif event["method"] == "process/closed":
            process.closed = True
            process.needs_recovery = False
        assert vsession.conn_id is not None
        return [ToBridge(vsession.conn_id, event)]

    # --- recovery of missed output ----------------------------------------------------------

    def _start_recovery(self, vsession: VirtualSession) -> list[Action]:
        actions: list[Action] = []
        for process_id, process in vsession.processes.items():
            if process.closed or process.recovering:
                continue
            process.needs_recovery = False
            process.recovering = True
            actions.append(self._recovery_read(vsession, process_id, process.last_seq))
        return actions

    def _recovery_read(self, vsession: VirtualSession, process_id: str, after_seq: int) -> ToExecutor:
        request_id = next(self._ids)
        self._pending[request_id] = Pending(kind="recover", vsession=vsession, process=process_id)
        params = {
            "processId": f"{vsession.prefix}.{process_id}",
            "afterSeq": after_seq,
            "maxBytes": RECOVERY_READ_BYTES,
            "waitMs": 0,
        }
        return ToExecutor({"id": request_id, "method": "process/read", "params": params})

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
            # so stop paging; recovery restarts from last_seq once the session is ready again.
            process.recovering = False
            process.needs_recovery = True
            return [Dropped("owner_detached", "process/read"), *self._flush_held(vsession, process)]
        result = message.get("result")
        if not isinstance(result, dict):
            # Typically "unknown process id": the process ended and its output expired.
            process.recovering = False
            actions: list[Action] = [Dropped("recovery_failed", f"{process_id}: {message.get('error')}")]
            return actions + self._flush_held(vsession, process)
        if isinstance(result.get("nextSeq"), int):
            # What recovery learned exists counts as seen, as pushed events do (long-polls).
            process.observed_seq = max(process.observed_seq, result["nextSeq"] - 1)
        chunks = [c for c in result.get("chunks") or [] if isinstance(c, dict) and isinstance(c.get("seq"), int)]
        actions = []
        expected = process.last_seq + 1
        for chunk in sorted(chunks, key=lambda c: c["seq"]):
            if chunk["seq"] <= process.last_seq:
                continue
            process.missing.update(range(expected, chunk["seq"]))
            expected = chunk["seq"] + 1
            event_params = {
                "processId": process_id,
                "seq": chunk["seq"],
                "stream": chunk.get("stream"),
                "chunk": chunk.get("chunk"),
            }
            actions.extend(self._deliver_event(vsession, process, {"method": "process/output", "params": event_params}))
        if chunks:
            # A page came back: read on until the executor has nothing more.
            actions.append(self._recovery_read(vsession, process_id, process.last_seq))
            return actions
        next_seq = result.get("nextSeq")
        if isinstance(next_seq, int):
            process.missing.update(range(expected, next_seq))
        actions.extend(self._finish_recovery(vsession, process_id, process, result))
        return actions

    def _finish_recovery(
        self, vsession: VirtualSession, process_id: str, process: ProcessState, result: JSON
    ) -> list[Action]:
        """Deliver the exited/closed events that happened while the executor was away; what
        else is missing fell out of exec-server's retention and is lost (counted)."""
        gaps = sorted(process.missing)
        actions: list[Action] = []
        closed_seq = gaps.pop() if result.get("closed") and not process.closed and gaps else None
        exited_seq = gaps.pop() if result.get("exited") and not process.exited and gaps else None
        if exited_seq is not None:
            exited = {
                "processId": process_id,
                "seq": exited_seq,
                "exitCode": result.get("exitCode"),
                "sandboxDenied": bool(result.get("sandboxDenied")),
            }
            actions.extend(self._deliver_event(vsession, process, {"method": "process/exited", "params": exited}))
        if closed_seq is not None:
            closed = {"processId": process_id, "seq": closed_seq}
            actions.extend(self._deliver_event(vsession, process, {"method": "process/closed", "params": closed}))
        if gaps:
            actions.append(Dropped("output_lost_beyond_retention", f"{process_id}: {len(gaps)} event(s)"))
            process.missing.difference_update(gaps)
        process.recovering = False
        return actions + self._flush_held(vsession, process)

    def _flush_held(self, vsession: VirtualSession, process: ProcessState) -> list[Action]:
        """End of a recovery: deliver the events held meanwhile, and release the long-polls that
        now have something to read."""
        held, process.held = process.held, []
        actions: list[Action] = []
        for event in sorted(held, key=lambda e: e["params"].get("seq") or 0):
            actions.extend(self._deliver_event(vsession, process, event))
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
        return []

    def bridge_message(self, conn_id: str, message: Any) -> list[Action]:
        link = self._links.get(conn_id)
        if link is None:
            return [Dropped("message_from_unknown_bridge", conn_id)]
        if not isinstance(message, dict):
            return [
                ToBridge(
                    conn_id,
                    rpc_error(-1, INVALID_REQUEST, "failed to parse JSON-RPC message: expected a JSON-RPC object"),
                )
            ]
        method = message.get("method")
        if method is None:
            # A response: the gateway never sends bridges requests, so it has no owner.
            return [Dropped("stray_client_response", repr(message.get("id")))]
        if "id" not in message:
            return self._client_notification(link, str(method))
        request_id = message["id"]
        if not _valid_id(request_id) or not isinstance(method, str):
            return [
                ToBridge(
                    conn_id, rpc_error(-1, INVALID_REQUEST, "failed to parse JSON-RPC message: invalid id or method")
                )
            ]
        if method == "initialize":
            if link.state is not LinkState.AWAITING_INITIALIZE:
                return [
                    ToBridge(
                        conn_id,
                        rpc_error(request_id, INVALID_REQUEST, "initialize may only be sent once per connection"),
                    )
                ]
            return self._initialize_bridge(link, request_id, message.get("params"))
        if link.state is LinkState.AWAITING_INITIALIZE:
            return [
                ToBridge(
                    conn_id,
                    rpc_error(request_id, INVALID_REQUEST, "client must call initialize before using exec methods"),
                )
            ]
        if link.state is LinkState.AWAITING_INITIALIZED:
            return [
                ToBridge(
                    conn_id,
                    rpc_error(request_id, INVALID_REQUEST, "client must send initialized before using exec methods"),
                )
            ]
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
            if self.state is ExecutorState.READY:
                return self._start_recovery_if_needed(link.vsession)
        return []

    def _start_recovery_if_needed(self, vsession: VirtualSession) -> list[Action]:
        if any(p.needs_recovery for p in vsession.processes.values()):
            return self._start_recovery(vsession)
        return []

    def _initialize_bridge(self, link: BridgeLink, request_id: Any, params: Any) -> list[Action]:
        conn_id = link.conn_id
        if not isinstance(params, dict):
            return [
                ToBridge(
                    conn_id,
                    rpc_error(request_id, INVALID_PARAMS, "invalid type: null, expected struct InitializeParams"),
                )
            ]
        if not isinstance(params.get("clientName"), str):
            return [ToBridge(conn_id, rpc_error(request_id, INVALID_PARAMS, "missing field `clientName`"))]
        if self.environment_info is None:
            # Only possible before the executor's first handshake: answer once it is known.
            self._backlog.append((conn_id, {"id": request_id, "method": "initialize", "params": params}))
            return []
        resume = params.get("resumeSessionId")
        actions: list[Action] = []
        if isinstance(resume, str):
            vsession = self._vsessions.get(resume)
            if vsession is None:
                return [ToBridge(conn_id, rpc_error(request_id, INVALID_REQUEST, f"unknown session id {resume}"))]
            if vsession.conn_id is not None and vsession.conn_id in self._links:
                return [
                    ToBridge(
                        conn_id,
                        rpc_error(
                            request_id, SESSION_ATTACHED, f"session {resume} is already attached to another connection"
                        ),
                    )
                ]
            vsession.conn_id = conn_id
            vsession.detached_at = None
            for process in vsession.processes.values():
                if not process.closed:
                    process.needs_recovery = True
        else:
            vsid = str(uuid.uuid4())
            prefix = f"v{secrets.token_hex(4)}"
            while prefix in self._by_prefix:
                prefix = f"v{secrets.token_hex(4)}"
            vsession = VirtualSession(vsid=vsid, prefix=prefix, conn_id=conn_id)
            self._vsessions[vsid] = vsession
            self._by_prefix[prefix] = vsession
            self._touch(vsession, urgent=True)
        link.vsession = vsession
        link.state = LinkState.AWAITING_INITIALIZED
        result = {"sessionId": vsession.vsid, "environmentInfo": self.environment_info}
        actions.append(ToBridge(conn_id, {"id": request_id, "result": result}))
        return actions

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
                wait = params.get("waitMs")
                deadline = (
                    self.clock() + min(float(wait), 300_000.0) / 1000.0
                    if isinstance(wait, int | float)
                    else self.clock()
                )
                self._held_reads.append(HeldRead(link.conn_id, client_id, vsession, process_id, params, deadline))
                return []
            params = self._namespace_handles(vsession, params)
            if method == "process/read":
                # Never long-poll on the shared connection: exec-server serves requests one at a
                # time by default, so one client's wait would stall every other client.
                params["waitMs"] = 0
        request_id = next(self._ids)
        self._pending[request_id] = Pending(
            kind="client",
            conn_id=link.conn_id,
            client_id=client_id,
            vsession=vsession,
            process=process_id,
            method=method,
        )
        forwarded: JSON = {"id": request_id, "method": method}
        if has_params:
            forwarded["params"] = params
        return [ToExecutor(forwarded)]

    def _should_hold(self, vsession: VirtualSession, process_id: str, params: JSON) -> bool:
        wait = params.get("waitMs")
        if not isinstance(wait, int | float) or wait <= 0:
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
            params = self._namespace_handles(held.vsession, held.params)
            params["waitMs"] = 0
            request_id = next(self._ids)
            self._pending[request_id] = Pending(
                kind="client",
                conn_id=held.conn_id,
                client_id=held.client_id,
                vsession=held.vsession,
                process=held.process,
                method="process/read",
            )
            actions.append(ToExecutor({"id": request_id, "method": "process/read", "params": params}))
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
        deadlines = [h.deadline for h in self._held_reads]
        if self.state is ExecutorState.READY:
            detached = [v.detached_at for v in self._vsessions.values() if v.detached_at is not None]
            deadlines += [at + self.resume_window for at in detached]
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
                for conn_id in list(self._links):
                    actions.append(CloseBridge(conn_id, CLOSE_EXECUTOR_LOST, "executor did not come back"))
                self._links.clear()
                self.finished = True
            return actions
        for vsession in list(self._vsessions.values()):
            if vsession.detached_at is not None and now >= vsession.detached_at + self.resume_window:
                actions.extend(self._expire_vsession(vsession))
        return actions

    def _expire_vsession(self, vsession: VirtualSession) -> list[Action]:
        """Nobody resumed the virtual session in time: end its processes on the executor."""
        if self.state is not ExecutorState.READY:
            return []  # retried on a later tick, once the executor is back
        actions: list[Action] = []
        for process_id, process in vsession.processes.items():
            if process.closed:
                continue
            request_id = next(self._ids)
            self._pending[request_id] = Pending(kind="internal")
            params = {"processId": f"{vsession.prefix}.{process_id}"}
            actions.append(ToExecutor({"id": request_id, "method": "process/terminate", "params": params}))
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

    def _fail_backlog(self, reason: str) -> list[Action]:
        actions: list[Action] = []
        backlog, self._backlog = self._backlog, []
        for conn_id, message in backlog:
            if isinstance(message, dict) and "id" in message and conn_id in self._links:
                actions.append(ToBridge(conn_id, _unavailable(message["id"], reason)))
        return actions

    def drain(self, code: int, reason: str) -> list[Action]:
        """This gateway process is going away: answer everything that waits (retryable), then
        close every bridge and the executor with ``code`` so both reconnect to another process,
        which takes the virtual sessions over from the shared table."""
        actions = self.executor_disconnected()
        for conn_id in list(self._links):
            actions.append(CloseBridge(conn_id, code, reason))
        self._links.clear()
        actions.append(CloseExecutor(code, reason))
        self.finished = True
        return actions

    def evicted(self, reason: str) -> list[Action]:
        """Another gateway process now holds the executor: every bridge must reconnect there."""
        actions: list[Action] = [CloseExecutor(CLOSE_EXECUTOR_REPLACED, reason)]
        for conn_id in list(self._links):
            actions.append(CloseBridge(conn_id, CLOSE_EXECUTOR_LOST, reason))
        self._links.clear()
        self.finished = True
        return actions
