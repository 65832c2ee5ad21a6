"""The session multiplexer (``bridge/multiplexer.py``), driven the way the session driver does:
as a fake executor (``executor_*``) and fake bridges (``bridge_*``), with a fake clock. Every
test asserts the exact JSON that goes each way; wire facts are from codex-wire.md §A."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from bridge import multiplexer
from bridge.multiplexer import (
    EXEC_RETENTION_BYTES,
    RECOVERY_READ_BYTES,
    Action,
    CloseBridge,
    CloseExecutor,
    Dropped,
    Multiplexer,
    SaveSession,
    TableChanges,
    ToBridge,
    ToExecutor,
)
from bridge.protocol import CLOSE_EXECUTOR_LOST, CLOSE_EXECUTOR_REPLACED, EXEC_SESSION_RETENTION, JSON

EXEC_SESSION = "e210ae7a-5c9e-4ed7-846f-140234148aa7"
ENV_INFO: JSON = {
    "shell": {"name": "bash", "path": "/bin/bash"},
    "executorVersion": "0.169.0",
    "cwd": "file:///tmp/probe",
    "platformOs": "linux",
    "capabilities": {"fsWatchMissing": True},
}
START_PARAMS: JSON = {"argv": ["/bin/echo", "hi"], "cwd": "file:///tmp", "env": {"PATH": "/usr/bin:/bin"}, "tty": False}
RETRYABLE = {"retryable": True}
INITIALIZED = ToExecutor({"method": "initialized", "params": {}})


# --- helpers ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def to_executor(actions: list[Action]) -> list[JSON]:
    return [a.message for a in actions if isinstance(a, ToExecutor)]


def to_bridge(actions: list[Action], conn_id: str) -> list[JSON]:
    return [a.message for a in actions if isinstance(a, ToBridge) and a.conn_id == conn_id]


def reads(actions: list[Action]) -> list[JSON]:
    return [m for m in to_executor(actions) if m.get("method") == "process/read"]


def only(messages: list[JSON]) -> JSON:
    assert len(messages) == 1, messages
    return messages[0]


def error(request_id: Any, code: int, message: str, data: Any = None) -> JSON:
    body: JSON = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"error": body, "id": request_id}


def output(process_id: str, seq: int, chunk: str = "aGkK", stream: str = "stdout") -> JSON:
    return {
        "method": "process/output",
        "params": {"processId": process_id, "seq": seq, "stream": stream, "chunk": chunk},
    }


def exited(process_id: str, seq: int, exit_code: int = 0) -> JSON:
    params = {"processId": process_id, "seq": seq, "exitCode": exit_code, "sandboxDenied": False}
    return {"method": "process/exited", "params": params}


def closed(process_id: str, seq: int) -> JSON:
    return {"method": "process/closed", "params": {"processId": process_id, "seq": seq}}


def chunk(seq: int, data: str = "aGkK") -> JSON:
    return {"seq": seq, "stream": "stdout", "chunk": data}


def read_result(
    chunks: list[JSON], next_seq: int, *, exited: bool = False, exit_code: int | None = None, closed: bool = False
) -> JSON:
    return {
        "chunks": chunks,
        "nextSeq": next_seq,
        "exited": exited,
        "exitCode": exit_code,
        "closed": closed,
        "failure": None,
        "sandboxDenied": False,
    }


def recovery_read(sent: JSON, exec_pid: str, after_seq: int) -> JSON:
    """The read the gateway sends to recover missed output (asserted against ``sent``)."""
    params = {"processId": exec_pid, "afterSeq": after_seq, "maxBytes": RECOVERY_READ_BYTES, "waitMs": 0}
    return {"id": sent["id"], "method": "process/read", "params": params}


class Rig:
    """One multiplexer with a fake clock, plus the moves of a fake executor and fake bridges."""

    def __init__(
        self,
        *,
        session_id: str | None = None,
        environment_info: JSON | None = None,
        retention: float = EXEC_SESSION_RETENTION,
    ) -> None:
        self.clock = FakeClock()
        self.mux = Multiplexer(
            "exe-1", session_id=session_id, environment_info=environment_info, retention=retention, clock=self.clock
        )
        self.vsids: dict[str, str] = {}  # conn_id -> virtual session id, filled by attach()

    # executor side

    def connect(self, session_id: str = EXEC_SESSION) -> list[Action]:
        """The executor connects and answers the gateway's initialize; returns what followed."""
        init = only(to_executor(self.mux.executor_connected()))
        assert init == {
            "id": init["id"],
            "method": "initialize",
            "params": {"clientName": "codexgw", "resumeSessionId": self.mux.session_id},
        }
        return self.answer(init, {"sessionId": session_id, "environmentInfo": ENV_INFO})

    def answer(self, request: JSON, result: Any) -> list[Action]:
        return self.mux.executor_message({"id": request["id"], "result": result})

    def fail(self, request: JSON, code: int, message: str) -> list[Action]:
        return self.mux.executor_message(error(request["id"], code, message))

    def push(self, notification: JSON) -> list[Action]:
        return self.mux.executor_message(notification)

    # bridge side

    def initialize(self, conn_id: str, resume: str | None = None, request_id: Any = 1) -> list[Action]:
        self.mux.bridge_attached(conn_id)
        params = {"clientName": "codex-environment", "resumeSessionId": resume}
        return self.mux.bridge_message(conn_id, {"id": request_id, "method": "initialize", "params": params})

    def initialized(self, conn_id: str) -> list[Action]:
        return self.mux.bridge_message(conn_id, {"method": "initialized", "params": {}})

    def attach(self, conn_id: str) -> str:
        """A new bridge completes initialize/initialized; returns its virtual session id."""
        actions = self.initialize(conn_id)
        reply = only(to_bridge(actions, conn_id))
        assert actions == [ToBridge(conn_id, reply)]  # answered by the gateway, nothing to the executor
        assert reply == {"id": 1, "result": {"sessionId": reply["result"]["sessionId"], "environmentInfo": ENV_INFO}}
        assert self.initialized(conn_id) == []
        self.vsids[conn_id] = str(reply["result"]["sessionId"])
        return self.vsids[conn_id]

    def send(self, conn_id: str, message: Any) -> list[Action]:
        return self.mux.bridge_message(conn_id, message)

    def gone(self, conn_id: str) -> bool:
        """The multiplexer no longer knows the bridge (it closed it)."""
        return self.send(conn_id, {"id": 0, "method": "environment/status"}) == [
            Dropped("message_from_unknown_bridge", conn_id)
        ]

    def forward(self, conn_id: str, message: JSON) -> JSON:
        """A bridge request the gateway forwards at once: returns what the executor receives."""
        actions = self.send(conn_id, message)
        sent = only(to_executor(actions))
        assert actions == [ToExecutor(sent)]
        return sent

    def start(self, conn_id: str, process_id: str, request_id: Any = 2) -> str:
        """A bridge starts a process; returns the processId the executor sees."""
        params = {"processId": process_id, **START_PARAMS}
        sent = self.forward(conn_id, {"id": request_id, "method": "process/start", "params": params})
        exec_pid = sent["params"]["processId"]
        assert sent == {"id": sent["id"], "method": "process/start", "params": {**params, "processId": exec_pid}}
        reply = self.answer(sent, {"processId": exec_pid, "sandboxType": "none"})
        assert reply == [
            ToBridge(conn_id, {"id": request_id, "result": {"processId": process_id, "sandboxType": "none"}})
        ]
        return str(exec_pid)

    def deliver(self, exec_event: JSON, conn_id: str, client_event: JSON) -> None:
        """The executor pushes an event that must reach exactly one bridge, rewritten."""
        assert self.push(exec_event) == [ToBridge(conn_id, client_event)]


def ready_rig(**kwargs: Any) -> Rig:
    rig = Rig(**kwargs)
    assert rig.connect() == [INITIALIZED, SaveSession(EXEC_SESSION, ENV_INFO)]
    return rig


def recovering_rig() -> tuple[Rig, str, JSON]:
    """Bridge A ran p1, got seq 1 and 2, then the executor dropped and came back: the recovery
    read (afterSeq 2) is in flight. Returns the rig, p1's executor-side id and that read."""
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1, "YQ=="), "A", output("p1", 1, "YQ=="))
    rig.deliver(output(pid, 2, "Yg=="), "A", output("p1", 2, "Yg=="))
    assert rig.mux.executor_disconnected() == []
    actions = rig.connect()
    read = only(reads(actions))
    assert actions == [INITIALIZED, SaveSession(EXEC_SESSION, ENV_INFO), ToExecutor(recovery_read(read, pid, 2))]
    return rig, pid, read


# --- executor handshake -----------------------------------------------------------------------


def test_gateway_speaks_first_with_fresh_initialize_then_initialized_and_save():
    rig = Rig()
    actions = rig.mux.executor_connected()
    assert actions == [
        ToExecutor({"id": 1, "method": "initialize", "params": {"clientName": "codexgw", "resumeSessionId": None}})
    ]
    result = {"sessionId": EXEC_SESSION, "environmentInfo": ENV_INFO}
    assert rig.mux.executor_message({"id": 1, "result": result}) == [INITIALIZED, SaveSession(EXEC_SESSION, ENV_INFO)]
    assert rig.mux.session_id == EXEC_SESSION
    assert rig.mux.environment_info == ENV_INFO
    assert rig.mux.pending_count == 0


def test_stored_session_is_resumed():
    rig = Rig(session_id=EXEC_SESSION, environment_info=ENV_INFO)
    init = only(to_executor(rig.mux.executor_connected()))
    assert init == {
        "id": init["id"],
        "method": "initialize",
        "params": {"clientName": "codexgw", "resumeSessionId": EXEC_SESSION},
    }
    result = {"sessionId": EXEC_SESSION, "environmentInfo": ENV_INFO}
    assert rig.answer(init, result) == [INITIALIZED, SaveSession(EXEC_SESSION, ENV_INFO)]


def test_unknown_session_on_resume_reinitializes_fresh_and_loses_every_virtual_session():
    rig = ready_rig()
    ready = rig.attach("A")
    assert only(to_bridge(rig.initialize("B"), "B"))["result"]  # B awaits initialized
    rig.attach("C")
    rig.mux.bridge_detached("C")  # C's virtual session is detached
    rig.mux.bridge_attached("D")  # D has not initialized: it has no virtual session yet
    assert len(rig.mux.take_changes().upserts) == 3
    rig.mux.executor_disconnected()

    init = only(to_executor(rig.mux.executor_connected()))
    assert init["params"] == {"clientName": "codexgw", "resumeSessionId": EXEC_SESSION}
    retry = only(to_executor(rig.fail(init, -32600, f"unknown session id {EXEC_SESSION}")))
    assert retry == {
        "id": retry["id"],
        "method": "initialize",
        "params": {"clientName": "codexgw", "resumeSessionId": None},
    }
    assert retry["id"] != init["id"]

    actions = rig.answer(retry, {"sessionId": "new-session", "environmentInfo": ENV_INFO})
    assert actions[:2] == [INITIALIZED, SaveSession("new-session", ENV_INFO)]
    assert sorted((a.conn_id, a.code) for a in actions[2:] if isinstance(a, CloseBridge)) == [
        ("A", CLOSE_EXECUTOR_LOST),
        ("B", CLOSE_EXECUTOR_LOST),
    ]
    assert len(actions) == 4
    changes = rig.mux.take_changes()
    assert changes.upserts == {}
    assert len(changes.deletes) == 3
    assert rig.gone("A")
    assert rig.gone("B")
    assert not rig.gone("D")  # D stays: it can still initialize a fresh virtual session
    # The lost virtual session is gone for good.
    assert to_bridge(rig.initialize("E", resume=ready), "E") == [
        error(1, -32600, f"unknown session id {ready}"),
    ]


def test_resume_answered_with_a_different_session_counts_as_lost():
    rig = ready_rig()
    rig.attach("A")
    rig.mux.executor_disconnected()
    actions = rig.connect(session_id="other-session")
    assert actions[:2] == [INITIALIZED, SaveSession("other-session", ENV_INFO)]
    assert [(a.conn_id, a.code) for a in actions[2:] if isinstance(a, CloseBridge)] == [("A", CLOSE_EXECUTOR_LOST)]
    assert len(actions) == 3


def test_refused_fresh_initialize_closes_the_executor():
    rig = Rig()
    init = only(to_executor(rig.mux.executor_connected()))
    refusal = error(init["id"], -32603, "boom")
    assert rig.mux.executor_message(refusal) == [
        CloseExecutor(1011, "executor refused initialize"),
        Dropped("executor_handshake_failed", str(refusal)),
    ]


def test_bridge_initialize_before_the_first_handshake_is_answered_after_it():
    rig = Rig()
    assert rig.initialize("A") == []  # no environmentInfo yet
    actions = rig.connect()
    assert actions[:2] == [INITIALIZED, SaveSession(EXEC_SESSION, ENV_INFO)]
    reply = only(to_bridge(actions, "A"))
    assert reply == {"id": 1, "result": {"sessionId": reply["result"]["sessionId"], "environmentInfo": ENV_INFO}}
    assert len(actions) == 3


def test_requests_during_the_handshake_wait_for_it():
    rig = ready_rig()
    rig.attach("A")
    rig.mux.executor_disconnected()
    init = only(to_executor(rig.mux.executor_connected()))
    assert rig.send("A", {"id": 9, "method": "environment/status"}) == []
    actions = rig.answer(init, {"sessionId": EXEC_SESSION, "environmentInfo": ENV_INFO})
    sent = to_executor(actions)[-1]
    assert actions == [INITIALIZED, SaveSession(EXEC_SESSION, ENV_INFO), ToExecutor(sent)]
    assert sent == {"id": sent["id"], "method": "environment/status"}
    assert rig.answer(sent, {"status": "ready"}) == [ToBridge("A", {"id": 9, "result": {"status": "ready"}})]


def test_requests_during_a_handshake_that_finds_a_new_exec_server_are_answered_before_the_close():
    """The exec-server process was restarted: its session cannot be resumed. A request the bridge
    sent while the gateway was still finding that out is answered (retryable) before the bridge is
    closed, never left unanswered: codex would wait 45 s for it to recover."""
    rig = ready_rig()
    rig.attach("A")
    rig.attach("B")
    rig.mux.executor_disconnected()
    init = only(to_executor(rig.mux.executor_connected()))
    assert rig.send("A", {"id": 7, "method": "process/start", "params": {"processId": "p1", **START_PARAMS}}) == []
    retry = only(to_executor(rig.fail(init, -32600, f"unknown session id {EXEC_SESSION}")))
    actions = rig.answer(retry, {"sessionId": "new-session", "environmentInfo": ENV_INFO})
    lost = "the executor's session was lost; start a new session"
    assert actions[:2] == [INITIALIZED, SaveSession("new-session", ENV_INFO)]
    assert actions[2:5] == [
        ToBridge("A", error(7, -32000, lost, RETRYABLE)),
        CloseBridge("A", CLOSE_EXECUTOR_LOST, lost),
        CloseBridge("B", CLOSE_EXECUTOR_LOST, lost),
    ]
    assert len(actions) == 5
    assert rig.mux.pending_count == 0
    # A's new connection starts afresh on the new exec-server session.
    rig.attach("A2")
    rig.start("A2", "p1")


# --- the bridge's virtual session -------------------------------------------------------------


def test_bridge_initialize_is_answered_by_the_gateway_with_a_new_session():
    rig = ready_rig()
    first = rig.attach("A")
    second = rig.attach("B")
    assert first != second
    assert str(uuid.UUID(first)) == first
    assert sorted(rig.mux.take_changes().upserts) == sorted([first, second])
    assert rig.initialized("A") == []  # a second initialized is ignored, as exec-server does


def test_bridge_initialize_with_a_stored_environment_needs_no_executor():
    rig = Rig(session_id=EXEC_SESSION, environment_info=ENV_INFO)
    reply = only(to_bridge(rig.initialize("A"), "A"))
    assert reply["result"]["environmentInfo"] == ENV_INFO
    assert rig.initialized("A") == []
    # ...but its requests fail until the executor is there.
    assert rig.send("A", {"id": 2, "method": "environment/status"}) == [
        ToBridge("A", error(2, -32000, "executor is not connected; retry when it reconnects", RETRYABLE))
    ]


def test_requests_before_initialize_and_before_initialized_get_exec_servers_errors():
    rig = ready_rig()
    rig.mux.bridge_attached("A")
    request = {"id": 1, "method": "process/start", "params": {"processId": "p1", **START_PARAMS}}
    assert rig.send("A", request) == [
        ToBridge("A", error(1, -32600, "client must call initialize before using exec methods"))
    ]
    rig.send("A", {"id": 2, "method": "initialize", "params": {"clientName": "x"}})
    assert rig.send("A", {**request, "id": 3}) == [
        ToBridge("A", error(3, -32600, "client must send initialized before using exec methods"))
    ]
    assert rig.send("A", {"id": 4, "method": "initialize", "params": {"clientName": "x"}}) == [
        ToBridge("A", error(4, -32600, "initialize may only be sent once per connection"))
    ]
    assert rig.initialized("A") == []
    assert rig.send("A", {"id": 5, "method": "initialize", "params": {"clientName": "x"}}) == [
        ToBridge("A", error(5, -32600, "initialize may only be sent once per connection"))
    ]


def test_initialized_before_initialize_is_dropped():
    rig = ready_rig()
    rig.mux.bridge_attached("A")
    assert rig.initialized("A") == [Dropped("initialized_before_initialize", "A")]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"id": 1, "method": "initialize", "params": {}}, error(1, -32602, "missing field `clientName`")),
        (
            {"id": 1, "method": "initialize", "params": {"resumeSessionId": None}},
            error(1, -32602, "missing field `clientName`"),
        ),
        ({"id": 1, "method": "initialize"}, error(1, -32602, "invalid type: null, expected struct InitializeParams")),
    ],
)
def test_bad_initialize_params(message, expected):
    rig = ready_rig()
    rig.mux.bridge_attached("A")
    assert rig.send("A", message) == [ToBridge("A", expected)]
    # The connection stays usable: a correct initialize still works.
    assert only(to_bridge(rig.send("A", {"id": 2, "method": "initialize", "params": {"clientName": "x"}}), "A"))[
        "result"
    ]


@pytest.mark.parametrize("message", [None, [{"id": 1, "method": "x"}], "text", 5])
def test_unparsable_message_gets_error_with_id_minus_one(message):
    rig = ready_rig()
    rig.attach("A")
    assert rig.send("A", message) == [
        ToBridge("A", error(-1, -32600, "failed to parse JSON-RPC message: expected a JSON-RPC object"))
    ]


@pytest.mark.parametrize("bad_id", [None, 1.5, True, {"a": 1}])
def test_invalid_request_id_gets_error_with_id_minus_one(bad_id):
    rig = ready_rig()
    rig.attach("A")
    assert rig.send("A", {"id": bad_id, "method": "environment/status"}) == [
        ToBridge("A", error(-1, -32600, "failed to parse JSON-RPC message: invalid id or method"))
    ]


def test_message_from_an_unknown_bridge_is_dropped():
    rig = ready_rig()
    assert rig.send("ghost", {"id": 1, "method": "environment/status"}) == [
        Dropped("message_from_unknown_bridge", "ghost")
    ]


# --- id rewriting -----------------------------------------------------------------------------


def test_two_bridges_using_the_same_id_get_their_own_responses():
    rig = ready_rig()
    rig.attach("A")
    rig.attach("B")
    sent_a = rig.forward("A", {"id": 1, "method": "fs/readFile", "params": {"path": "file:///a"}})
    sent_b = rig.forward("B", {"id": 1, "method": "fs/readFile", "params": {"path": "file:///b"}})
    assert sent_a == {"id": sent_a["id"], "method": "fs/readFile", "params": {"path": "file:///a"}}
    assert sent_b == {"id": sent_b["id"], "method": "fs/readFile", "params": {"path": "file:///b"}}
    assert isinstance(sent_a["id"], int)
    assert sent_a["id"] != sent_b["id"]
    # Answered out of order.
    assert rig.answer(sent_b, {"dataBase64": "Yg=="}) == [ToBridge("B", {"id": 1, "result": {"dataBase64": "Yg=="}})]
    assert rig.answer(sent_a, {"dataBase64": "YQ=="}) == [ToBridge("A", {"id": 1, "result": {"dataBase64": "YQ=="}})]
    assert rig.mux.pending_count == 0
    # A response is delivered once: a repeat is stray.
    assert rig.answer(sent_a, {}) == [Dropped("stray_executor_response", repr(sent_a["id"]))]


def test_string_ids_and_requests_without_params():
    rig = ready_rig()
    rig.attach("A")
    sent = rig.forward("A", {"id": "req-1", "method": "environment/status"})
    assert sent == {"id": sent["id"], "method": "environment/status"}  # no params key added
    assert rig.answer(sent, {"status": "ready"}) == [ToBridge("A", {"id": "req-1", "result": {"status": "ready"}})]


def test_error_responses_pass_through_with_the_clients_id():
    rig = ready_rig()
    rig.attach("A")
    sent = rig.forward("A", {"id": 7, "method": "fs/readFile", "params": {"path": "file:///nope"}})
    assert rig.fail(sent, -32004, "No such file or directory (os error 2)") == [
        ToBridge("A", error(7, -32004, "No such file or directory (os error 2)"))
    ]


def test_response_for_a_departed_bridge_is_dropped():
    rig = ready_rig()
    rig.attach("A")
    sent = rig.forward("A", {"id": 1, "method": "environment/status"})
    rig.mux.bridge_detached("A")
    assert rig.answer(sent, {"status": "ready"}) == [Dropped("response_for_departed_bridge", "environment/status")]


# --- handle namespacing -----------------------------------------------------------------------


def test_two_bridges_may_both_use_process_id_p1():
    rig = ready_rig()
    rig.attach("A")
    rig.attach("B")
    pid_a = rig.start("A", "p1")
    pid_b = rig.start("B", "p1")
    assert pid_a != pid_b
    assert pid_a.endswith(".p1")
    assert pid_b.endswith(".p1")

    rig.deliver(output(pid_b, 1, "Yg=="), "B", output("p1", 1, "Yg=="))
    rig.deliver(output(pid_a, 1, "YQ==", "stderr"), "A", output("p1", 1, "YQ==", "stderr"))
    rig.deliver(exited(pid_a, 2, 3), "A", exited("p1", 2, 3))
    rig.deliver(closed(pid_a, 3), "A", closed("p1", 3))
    rig.deliver(exited(pid_b, 2), "B", exited("p1", 2))
    rig.deliver(closed(pid_b, 3), "B", closed("p1", 3))

    # Requests naming p1 reach each bridge's own process.
    write = {"id": 5, "method": "process/write", "params": {"processId": "p1", "chunk": "eAo=", "writeId": "w1"}}
    assert rig.forward("A", write)["params"]["processId"] == pid_a
    assert rig.forward("B", write)["params"]["processId"] == pid_b


def test_a_bridge_cannot_name_another_bridges_handles():
    rig = ready_rig()
    rig.attach("A")
    rig.attach("B")
    pid_a = rig.start("A", "p1")
    sent = rig.forward("B", {"id": 3, "method": "process/terminate", "params": {"processId": pid_a}})
    assert sent["params"]["processId"] != pid_a
    assert sent["params"]["processId"].endswith("." + pid_a)


def test_fs_open_handle_ids_are_namespaced_and_restored():
    rig = ready_rig()
    rig.attach("A")
    rig.attach("B")
    open_params = {"handleId": "h1", "path": "file:///tmp/a.txt"}
    sent_a = rig.forward("A", {"id": 1, "method": "fs/open", "params": open_params})
    sent_b = rig.forward("B", {"id": 1, "method": "fs/open", "params": open_params})
    handle_a, handle_b = sent_a["params"]["handleId"], sent_b["params"]["handleId"]
    assert handle_a != handle_b
    assert sent_a == {"id": sent_a["id"], "method": "fs/open", "params": {**open_params, "handleId": handle_a}}
    assert rig.answer(sent_a, {"handleId": handle_a}) == [ToBridge("A", {"id": 1, "result": {"handleId": "h1"}})]
    assert rig.answer(sent_b, {"handleId": handle_b}) == [ToBridge("B", {"id": 1, "result": {"handleId": "h1"}})]

    block = rig.forward("A", {"id": 2, "method": "fs/readBlock", "params": {"handleId": "h1", "offset": 0, "len": 5}})
    assert block == {
        "id": block["id"],
        "method": "fs/readBlock",
        "params": {"handleId": handle_a, "offset": 0, "len": 5},
    }
    assert rig.answer(block, {"chunk": "aGVsbG8=", "eof": False}) == [
        ToBridge("A", {"id": 2, "result": {"chunk": "aGVsbG8=", "eof": False}})
    ]


def test_integer_watch_ids_are_mapped_to_distinct_integers_and_restored():
    rig = ready_rig()
    rig.attach("A")
    rig.attach("B")
    params = {"watchId": 1, "missing": ["file:///home/user/work/.git"], "present": None}
    sent_a = rig.forward("A", {"id": 1, "method": "fs/watchMissing", "params": params})
    sent_b = rig.forward("B", {"id": 1, "method": "fs/watchMissing", "params": params})
    watch_a, watch_b = sent_a["params"]["watchId"], sent_b["params"]["watchId"]
    for watch in (watch_a, watch_b):
        assert type(watch) is int  # exec-server wants a u64
    assert watch_a != watch_b
    assert sent_b == {"id": sent_b["id"], "method": "fs/watchMissing", "params": {**params, "watchId": watch_b}}
    assert rig.answer(sent_a, {"watching": True}) == [ToBridge("A", {"id": 1, "result": {"watching": True}})]
    # The same client watchId maps to the same executor watchId again.
    again = rig.forward("A", {"id": 2, "method": "fs/watchMissing", "params": params})
    assert again["params"]["watchId"] == watch_a

    change = {"watchId": watch_b, "path": "file:///home/user/work/.git"}
    rig.deliver(
        {"method": "fs/missingChanged", "params": change},
        "B",
        {"method": "fs/missingChanged", "params": {**change, "watchId": 1}},
    )
    change = {"watchId": watch_a, "path": "file:///home/user/work/.git"}
    rig.deliver(
        {"method": "fs/missingChanged", "params": change},
        "A",
        {"method": "fs/missingChanged", "params": {**change, "watchId": 1}},
    )


def test_http_request_ids_route_body_deltas():
    rig = ready_rig()
    rig.attach("A")
    rig.attach("B")
    params = {"method": "GET", "url": "http://127.0.0.1:9/", "requestId": "r1", "streamResponse": True}
    sent_a = rig.forward("A", {"id": 1, "method": "http/request", "params": params})
    sent_b = rig.forward("B", {"id": 1, "method": "http/request", "params": params})
    req_a, req_b = sent_a["params"]["requestId"], sent_b["params"]["requestId"]
    assert req_a != req_b
    assert sent_a == {"id": sent_a["id"], "method": "http/request", "params": {**params, "requestId": req_a}}
    rig.deliver(
        {"method": "http/request/bodyDelta", "params": {"requestId": req_b, "delta": "Yg=="}},
        "B",
        {"method": "http/request/bodyDelta", "params": {"requestId": "r1", "delta": "Yg=="}},
    )
    rig.deliver(
        {"method": "http/request/bodyDelta", "params": {"requestId": req_a, "delta": "YQ=="}},
        "A",
        {"method": "http/request/bodyDelta", "params": {"requestId": "r1", "delta": "YQ=="}},
    )


def test_notifications_for_a_detached_owner_are_dropped():
    rig = ready_rig()
    rig.attach("A")
    sent = rig.forward(
        "A", {"id": 1, "method": "http/request", "params": {"requestId": "r1", "url": "u", "method": "GET"}}
    )
    rig.mux.bridge_detached("A")
    delta = {"method": "http/request/bodyDelta", "params": {"requestId": sent["params"]["requestId"], "delta": ""}}
    assert rig.push(delta) == [Dropped("owner_detached", "http/request/bodyDelta")]


# --- pass-through and drops -------------------------------------------------------------------


def test_unknown_methods_pass_through_with_the_id_rewritten():
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    sent = rig.forward("A", {"id": 11, "method": "process/resize", "params": {"processId": "p1", "rows": 24}})
    assert sent == {"id": sent["id"], "method": "process/resize", "params": {"processId": pid, "rows": 24}}
    assert sent["id"] != 11
    message = "exec-server stub does not implement `process/resize` yet"
    assert rig.fail(sent, -32601, message) == [ToBridge("A", error(11, -32601, message))]
    future = rig.forward("A", {"id": 12, "method": "future/thing", "params": {"x": [1, 2]}})
    assert future == {"id": future["id"], "method": "future/thing", "params": {"x": [1, 2]}}
    assert rig.answer(future, {"ok": True}) == [ToBridge("A", {"id": 12, "result": {"ok": True}})]


def test_unknown_client_notifications_and_stray_responses_are_dropped():
    rig = ready_rig()
    rig.attach("A")
    assert rig.send("A", {"method": "foo/notify", "params": {}}) == [
        Dropped("unknown_client_notification", "foo/notify")
    ]
    assert rig.send("A", {"id": 99, "result": {}}) == [Dropped("stray_client_response", "99")]
    assert rig.send("A", {"id": 98, "error": {"code": 1, "message": "x"}}) == [Dropped("stray_client_response", "98")]
    assert rig.mux.pending_count == 0


def test_executor_requests_get_method_not_found():
    rig = ready_rig()
    actions = rig.push({"id": 5, "method": "network/policyRequest", "params": {"host": "example.com"}})
    assert actions == [
        ToExecutor(error(5, -32601, "codexgw does not serve network/policyRequest")),
        Dropped("executor_request", "network/policyRequest"),
    ]


@pytest.mark.parametrize(
    "message",
    [
        {"method": "network/policyDecision", "params": {"decision": "allow"}},
        {"method": "process/output", "params": {"processId": "vdeadbeef.p1", "seq": 1}},
        {"method": "process/output", "params": {"processId": "p1", "seq": 1}},
        {"method": "fs/missingChanged", "params": {"watchId": 424242}},
        {"method": "process/output"},
    ],
)
def test_unroutable_executor_notifications_are_dropped(message):
    rig = ready_rig()
    rig.attach("A")
    assert rig.push(message) == [Dropped("unrouted_notification", message["method"])]


def test_stray_and_invalid_executor_messages_are_dropped():
    rig = ready_rig()
    assert rig.mux.executor_message({"id": 777, "result": {}}) == [Dropped("stray_executor_response", "777")]
    assert rig.mux.executor_message({"id": "x", "result": {}}) == [Dropped("stray_executor_response", "'x'")]
    assert rig.mux.executor_message(None) == [Dropped("executor_invalid_message", "None")]


# --- long-poll process/read -------------------------------------------------------------------


def long_read(after_seq: int | None, wait_ms: int = 5000) -> JSON:
    return {
        "id": 20,
        "method": "process/read",
        "params": {"processId": "p1", "afterSeq": after_seq, "maxBytes": 65536, "waitMs": wait_ms},
    }


def forwarded_read(sent: JSON, exec_pid: str, after_seq: int | None) -> JSON:
    params = {"processId": exec_pid, "afterSeq": after_seq, "maxBytes": 65536, "waitMs": 0}
    return {"id": sent["id"], "method": "process/read", "params": params}


def test_long_poll_is_held_then_forwarded_when_output_arrives():
    rig = ready_rig()
    rig.attach("A")
    rig.attach("B")
    pid = rig.start("A", "p1")
    assert rig.send("A", long_read(0)) == []
    assert rig.mux.pending_count == 1
    # No head-of-line blocking: other requests are forwarded meanwhile.
    other = rig.forward("B", {"id": 1, "method": "environment/status"})
    assert rig.answer(other, {"status": "ready"}) == [ToBridge("B", {"id": 1, "result": {"status": "ready"}})]

    actions = rig.push(output(pid, 1))
    sent = only(to_executor(actions))
    assert actions == [ToExecutor(forwarded_read(sent, pid, 0)), ToBridge("A", output("p1", 1))]
    result = read_result([chunk(1)], 2)
    assert rig.answer(sent, result) == [ToBridge("A", {"id": 20, "result": result})]
    assert rig.mux.pending_count == 0


def test_long_poll_is_forwarded_at_its_deadline():
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    assert rig.send("A", long_read(None, wait_ms=2500)) == []
    assert rig.mux.next_deadline() == rig.clock.now + 2.5
    rig.clock.advance(2.4)
    assert rig.mux.tick() == []
    rig.clock.advance(0.1)
    actions = rig.mux.tick()
    sent = only(to_executor(actions))
    assert actions == [ToExecutor(forwarded_read(sent, pid, None))]
    assert rig.mux.tick() == []


def test_long_poll_is_released_by_exit():
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    assert rig.send("A", long_read(1)) == []
    actions = rig.push(exited(pid, 2))
    sent = only(to_executor(actions))
    assert actions == [ToExecutor(forwarded_read(sent, pid, 1)), ToBridge("A", exited("p1", 2))]
    # The process has exited: later reads are not held.
    sent = rig.forward("A", long_read(2))
    assert sent == forwarded_read(sent, pid, 2)


def test_read_behind_what_was_seen_is_forwarded_at_once():
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    rig.deliver(output(pid, 2), "A", output("p1", 2))
    sent = rig.forward("A", long_read(1))
    assert sent == forwarded_read(sent, pid, 1)
    sent = rig.forward("A", long_read(None))
    assert sent == forwarded_read(sent, pid, None)
    # A read that does not wait is never held.
    sent = rig.forward("A", long_read(2, wait_ms=0))
    assert sent == forwarded_read(sent, pid, 2)


def test_read_of_a_process_the_session_does_not_know_is_forwarded():
    rig = ready_rig()
    rig.attach("A")
    sent = rig.forward("A", long_read(0))
    assert sent["params"]["waitMs"] == 0
    assert rig.fail(sent, -32600, f"unknown process id {sent['params']['processId']}") == [
        ToBridge("A", error(20, -32600, f"unknown process id {sent['params']['processId']}"))
    ]


def test_held_read_of_a_departed_bridge_is_forgotten():
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    assert rig.send("A", long_read(0)) == []
    rig.mux.bridge_detached("A")
    assert rig.mux.pending_count == 0
    rig.clock.advance(10)
    assert rig.mux.tick() == []
    assert rig.push(output(pid, 1)) == [Dropped("owner_detached", "process/output")]


# --- executor disconnect ----------------------------------------------------------------------


def test_executor_disconnect_fails_pending_and_held_requests_as_retryable():
    rig = ready_rig()
    rig.attach("A")
    rig.attach("B")
    rig.start("A", "p1")
    rig.forward("A", {"id": 3, "method": "fs/readFile", "params": {"path": "file:///a"}})
    assert rig.send("A", long_read(0)) == []
    rig.forward("B", {"id": "b1", "method": "environment/status"})

    actions = rig.mux.executor_disconnected()
    lost = "executor connection lost before the response; the request may or may not have run"
    assert sorted(actions, key=repr) == sorted(
        [
            ToBridge("A", error(3, -32000, lost, RETRYABLE)),
            ToBridge("B", error("b1", -32000, lost, RETRYABLE)),
            ToBridge("A", error(20, -32000, "executor connection lost", RETRYABLE)),
        ],
        key=repr,
    )
    assert rig.mux.pending_count == 0
    assert rig.mux.executor_disconnected() == []  # already disconnected
    assert rig.send("A", {"id": 4, "method": "environment/status"}) == [
        ToBridge("A", error(4, -32000, "executor is not connected; retry when it reconnects", RETRYABLE))
    ]


def test_executor_disconnect_during_the_handshake_fails_queued_requests():
    rig = ready_rig()
    rig.attach("A")
    rig.mux.executor_disconnected()
    rig.mux.executor_connected()
    assert rig.send("A", {"id": 4, "method": "environment/status"}) == []
    assert rig.mux.executor_disconnected() == [ToBridge("A", error(4, -32000, "executor connection lost", RETRYABLE))]


# --- reconnect and resume: no output lost -----------------------------------------------------


def test_reconnect_rereads_live_processes_of_attached_sessions():
    rig = ready_rig()
    rig.attach("A")
    rig.attach("B")
    rig.attach("C")
    pid_a = rig.start("A", "p1")
    pid_done = rig.start("A", "done")
    pid_b = rig.start("B", "p1")
    pid_c = rig.start("C", "p1")
    rig.deliver(output(pid_a, 1), "A", output("p1", 1))
    rig.deliver(output(pid_done, 1), "A", output("done", 1))
    rig.deliver(closed(pid_done, 2), "A", closed("done", 2))
    rig.mux.bridge_detached("C")  # detached sessions are read when they resume, not now
    rig.mux.executor_disconnected()

    actions = rig.connect()
    assert actions[:2] == [INITIALIZED, SaveSession(EXEC_SESSION, ENV_INFO)]
    sent = sorted(reads(actions), key=lambda m: m["params"]["processId"])
    assert len(actions) == 2 + len(sent)
    expected = sorted([(pid_a, 1), (pid_b, 0)])
    assert [(m["params"]["processId"], m["params"]["afterSeq"]) for m in sent] == expected
    for message, (pid, after) in zip(sent, expected, strict=True):
        assert message == recovery_read(message, pid, after)
    assert pid_c not in {m["params"]["processId"] for m in sent}


def test_recovered_chunks_are_delivered_in_order_paging_until_empty():
    rig, pid, read = recovering_rig()
    actions = rig.answer(read, read_result([chunk(4, "ZA=="), chunk(3, "Yw==")], 5))
    page = only(reads(actions))
    assert actions == [
        ToBridge("A", output("p1", 3, "Yw==")),
        ToBridge("A", output("p1", 4, "ZA==")),
        ToExecutor(recovery_read(page, pid, 4)),
    ]
    actions = rig.answer(page, read_result([chunk(5, "ZQ==")], 6))
    page = only(reads(actions))
    assert actions == [ToBridge("A", output("p1", 5, "ZQ==")), ToExecutor(recovery_read(page, pid, 5))]
    assert rig.answer(page, read_result([], 6)) == []
    rig.deliver(output(pid, 6), "A", output("p1", 6))


def test_live_pushes_during_and_after_recovery_are_not_duplicated():
    rig, pid, read = recovering_rig()
    # Live pushes while the recovery read is in flight are held back...
    assert rig.push(output(pid, 4, "ZA==")) == []
    actions = rig.answer(read, read_result([chunk(3, "Yw=="), chunk(4, "ZA==")], 5))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [output("p1", 3, "Yw=="), output("p1", 4, "ZA==")]
    assert rig.push(output(pid, 5, "ZQ==")) == []
    actions = rig.answer(page, read_result([chunk(5, "ZQ==")], 6))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [output("p1", 5, "ZQ==")]
    assert rig.push(output(pid, 6, "Zg==")) == []
    # ...and when recovery ends, only what it did not deliver goes out.
    assert rig.answer(page, read_result([], 6)) == [ToBridge("A", output("p1", 6, "Zg=="))]
    # A late push of a seq recovery already delivered is not repeated.
    assert rig.push(output(pid, 5, "ZQ==")) == []
    rig.deliver(output(pid, 7), "A", output("p1", 7))


def test_exit_and_close_while_away_are_synthesized_with_their_seqs():
    rig, _, read = recovering_rig()
    # While away: output 3, exited 4 (before the last output, as exec-server may), output 5, closed 6.
    actions = rig.answer(read, read_result([chunk(3, "Yw=="), chunk(5, "ZQ==")], 6))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [output("p1", 3, "Yw=="), output("p1", 5, "ZQ==")]
    actions = rig.answer(page, read_result([], 7, exited=True, exit_code=0, closed=True))
    assert actions == [ToBridge("A", exited("p1", 4, 0)), ToBridge("A", closed("p1", 6))]
    # The process is closed: a later reconnect does not read it again.
    rig.mux.executor_disconnected()
    assert reads(rig.connect()) == []


def test_exit_last_while_away():
    rig, _, read = recovering_rig()
    actions = rig.answer(read, read_result([chunk(3)], 4))
    page = only(reads(actions))
    actions = rig.answer(page, read_result([], 6, exited=True, exit_code=137, closed=True))
    assert actions == [ToBridge("A", exited("p1", 4, 137)), ToBridge("A", closed("p1", 5))]


def test_exited_but_not_closed_while_away():
    rig, pid, read = recovering_rig()
    actions = rig.answer(read, read_result([], 4, exited=True, exit_code=1))
    assert actions == [ToBridge("A", exited("p1", 3, 1))]
    rig.deliver(closed(pid, 4), "A", closed("p1", 4))


def test_exit_and_close_pushed_live_during_recovery_are_delivered_once():
    rig, pid, read = recovering_rig()
    assert rig.push(exited(pid, 4, 0)) == []
    assert rig.push(closed(pid, 5)) == []
    actions = rig.answer(read, read_result([chunk(3)], 4))
    page = only(reads(actions))
    actions = rig.answer(page, read_result([], 6, exited=True, exit_code=0, closed=True))
    assert actions == [ToBridge("A", exited("p1", 4, 0)), ToBridge("A", closed("p1", 5))]


def test_output_beyond_retention_is_told_to_the_client_and_counted():
    """Before #17 the loss was only a counter on the gateway: the client got 40 after 2."""
    rig, pid, read = recovering_rig()
    # exec-server kept only seq 40.. (about 1 MiB); 3..39 are gone: the answer starts later than asked.
    actions = rig.answer(read, read_result([chunk(40), chunk(41)], 42))
    page = only(reads(actions))
    assert actions == [
        ToBridge("A", output_lost("p1", 3, 39)),
        Dropped("output_lost_beyond_retention", "p1: 37 event(s), seq 3-39"),
        ToBridge("A", output("p1", 40)),
        ToBridge("A", output("p1", 41)),
        ToExecutor(recovery_read(page, pid, 41)),
    ]
    assert rig.answer(page, read_result([], 42)) == []
    # Reported once; the process carries on.
    rig.deliver(output(pid, 42), "A", output("p1", 42))
    rig.mux.executor_disconnected()
    page = only(reads(rig.connect()))
    assert page == recovery_read(page, pid, 42)
    assert rig.answer(page, read_result([], 43)) == []


def test_a_held_push_that_fell_out_of_the_retention_is_delivered_not_told_lost():
    """Found in review: seq 3, pushed while the recovery read was in flight, was told lost with
    3..39 (its held copy then dropped as delivered) although the gateway had it."""
    rig, pid, read = recovering_rig()
    assert rig.push(output(pid, 3, "Yw==")) == []  # held: the read may owe something before it
    actions = rig.answer(read, read_result([chunk(40), chunk(41)], 42))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [
        output("p1", 3, "Yw=="),
        output_lost("p1", 4, 39),
        output("p1", 40),
        output("p1", 41),
    ]
    assert Dropped("output_lost_beyond_retention", "p1: 36 event(s), seq 4-39") in actions
    assert rig.answer(page, read_result([], 42)) == []
    rig.deliver(output(pid, 42), "A", output("p1", 42))


def test_output_beyond_retention_of_a_closed_process_keeps_exit_and_close():
    rig, _, read = recovering_rig()
    # The process has exited: the gap before 40 might hold its exit, so the loss is told once the
    # exit and close are placed, before them.
    actions = rig.answer(read, read_result([chunk(40)], 41, exited=True, exit_code=0, closed=True))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [output("p1", 40)]
    actions = rig.answer(page, read_result([], 43, exited=True, exit_code=0, closed=True))
    assert actions == [
        ToBridge("A", output_lost("p1", 3, 39)),
        Dropped("output_lost_beyond_retention", "p1: 37 event(s), seq 3-39"),
        ToBridge("A", exited("p1", 41, 0)),
        ToBridge("A", closed("p1", 42)),
    ]


def test_recovery_of_a_vanished_process_is_dropped_and_live_events_flow():
    rig, pid, read = recovering_rig()
    assert rig.push(output(pid, 3)) == []
    actions = rig.fail(read, -32600, f"unknown process id {pid}")
    assert actions[0] == Dropped("recovery_failed", f"p1: {{'code': -32600, 'message': 'unknown process id {pid}'}}")
    assert actions[1:] == [ToBridge("A", output("p1", 3))]


def test_executor_drop_during_recovery_restarts_it_next_time():
    rig, pid, _ = recovering_rig()
    assert rig.mux.executor_disconnected() == []
    page = only(reads(rig.connect()))
    assert page == recovery_read(page, pid, 2)
    actions = rig.answer(page, read_result([chunk(3)], 4))
    assert to_bridge(actions, "A") == [output("p1", 3)]


def test_session_attached_during_the_outage_is_recovered_after_initialized():
    rig = ready_rig()
    vsid = rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    rig.mux.executor_disconnected()
    rig.mux.bridge_detached("A")
    assert only(to_bridge(rig.initialize("B", resume=vsid), "B"))["result"]["sessionId"] == vsid
    init = only(to_executor(rig.mux.executor_connected()))
    # B has not sent initialized yet: nothing is read for it.
    assert rig.answer(init, {"sessionId": EXEC_SESSION, "environmentInfo": ENV_INFO}) == [
        INITIALIZED,
        SaveSession(EXEC_SESSION, ENV_INFO),
    ]
    page = only(reads(rig.initialized("B")))
    assert page == recovery_read(page, pid, 1)
    assert to_bridge(rig.answer(page, read_result([chunk(2)], 3)), "B") == [output("p1", 2)]


# --- reconnect loss (#17): nothing is delivered past a gap, a gap is read or told -------------


def output_lost(process_id: str, from_seq: int, to_seq: int) -> JSON:
    return {"method": "gateway/outputLost", "params": {"processId": process_id, "fromSeq": from_seq, "toSeq": to_seq}}


def test_push_before_the_resume_answer_is_not_delivered_past_the_gap():
    """reliability-notes.md: the executor pushes seq 9 before it answers the gateway's resume
    initialize. Before the fix the push went to the bridge at once, last_seq jumped to 9, the
    recovery read asked afterSeq 9, and 3..8 were counted as lost without telling the client."""
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    rig.deliver(output(pid, 2), "A", output("p1", 2))
    assert rig.mux.executor_disconnected() == []
    init = only(to_executor(rig.mux.executor_connected()))
    assert rig.push(output(pid, 9)) == []  # held: 3..8 are still owed
    actions = rig.answer(init, {"sessionId": EXEC_SESSION, "environmentInfo": ENV_INFO})
    read = only(reads(actions))
    assert actions == [INITIALIZED, SaveSession(EXEC_SESSION, ENV_INFO), ToExecutor(recovery_read(read, pid, 2))]
    actions = rig.answer(read, read_result([chunk(seq) for seq in range(3, 10)], 10))
    page = only(reads(actions))
    assert actions == [
        *(ToBridge("A", output("p1", seq)) for seq in range(3, 10)),
        ToExecutor(recovery_read(page, pid, 9)),
    ]
    assert rig.answer(page, read_result([], 10)) == []  # the held 9 came with the read: not repeated
    rig.deliver(output(pid, 10), "A", output("p1", 10))


def test_push_before_the_resume_answer_past_the_read_is_delivered_after_it():
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    rig.mux.executor_disconnected()
    init = only(to_executor(rig.mux.executor_connected()))
    assert rig.push(output(pid, 4)) == []
    read = only(reads(rig.answer(init, {"sessionId": EXEC_SESSION, "environmentInfo": ENV_INFO})))
    assert read == recovery_read(read, pid, 1)
    # The read was served before 4 existed (a push may overtake the answer of a read).
    actions = rig.answer(read, read_result([chunk(2), chunk(3)], 4))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [output("p1", 2), output("p1", 3)]
    assert rig.answer(page, read_result([], 4)) == [ToBridge("A", output("p1", 4))]


def test_recovery_starts_after_the_lowest_seq_still_owed():
    """A recovery read may deliver past a gap it cannot place yet (the process exited, and its
    exit may be in the gap before the retained output). Before the fix, a cut at that point was
    followed by a read after the highest seq delivered: the gap was never read again."""
    rig, pid, read = recovering_rig()
    big = "A" * (multiplexer.EXEC_RETENTION_BYTES * 4 // 3)  # an answer this big could have been trimmed
    actions = rig.answer(read, read_result([chunk(40, big), chunk(41)], 42, exited=True, exit_code=0))
    assert to_bridge(actions, "A") == [output("p1", 40, big), output("p1", 41)]
    rig.mux.executor_disconnected()
    read = only(reads(rig.connect()))
    assert read == recovery_read(read, pid, 2)
    actions = rig.answer(read, read_result([chunk(40, big), chunk(41)], 42, exited=True, exit_code=0, closed=True))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == []  # nothing twice
    actions = rig.answer(page, read_result([], 44, exited=True, exit_code=0, closed=True))
    assert actions == [
        ToBridge("A", output_lost("p1", 3, 39)),
        Dropped("output_lost_beyond_retention", "p1: 37 event(s), seq 3-39"),
        ToBridge("A", exited("p1", 42, 0)),
        ToBridge("A", closed("p1", 43)),
    ]


def test_a_closed_process_that_still_owes_an_event_is_read_again():
    """A table stored by a gateway that forwarded live events out of seq order (before #17) can
    say: process/closed delivered, process/exited still owed (codex-wire.md §C.10). Before the
    fix a closed process was never read again, so the exit never reached the client."""
    old = ready_rig()
    vsid = old.attach("A")
    pid = old.start("A", "p1")
    old.deliver(output(pid, 1), "A", output("p1", 1))
    stored = old.mux.take_changes()
    stored.upserts[vsid]["processes"]["p1"].update(last_seq=3, observed_seq=3, closed=True, missing=[2])
    new = take_over(old, stored)
    new.initialize("B", resume=vsid)
    page = only(reads(new.initialized("B")))
    assert page == recovery_read(page, pid, 1)
    actions = new.answer(page, read_result([], 4, exited=True, exit_code=7, closed=True))
    assert actions == [ToBridge("B", exited("p1", 2, 7))]
    new.mux.executor_disconnected()
    assert reads(new.connect()) == []  # nothing owed any more


def test_live_close_that_overtakes_the_exit_waits_for_it():
    """Seen through the gateway with codex 0.171.0 (codex-wire.md §C.10): process/closed pushed
    before process/exited. Forwarded as pushed, a client that stops at process/closed (as the e2e
    reconnect test does) never saw the exit."""
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    assert rig.push(closed(pid, 3)) == []
    assert rig.mux.next_deadline() == rig.clock.now + multiplexer.REORDER_WAIT
    assert rig.push(exited(pid, 2, 0)) == [ToBridge("A", exited("p1", 2, 0)), ToBridge("A", closed("p1", 3))]
    assert rig.mux.next_deadline() is None


def test_live_exit_that_overtakes_the_last_output_waits_for_it():
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    assert rig.push(exited(pid, 2, 0)) == []
    assert rig.push(closed(pid, 3)) == []
    assert rig.push(output(pid, 1)) == [
        ToBridge("A", output("p1", 1)),
        ToBridge("A", exited("p1", 2, 0)),
        ToBridge("A", closed("p1", 3)),
    ]


def test_a_live_gap_that_does_not_fill_is_read():
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    assert rig.push(output(pid, 3)) == []
    deadline = rig.mux.next_deadline()
    assert deadline == rig.clock.now + multiplexer.REORDER_WAIT
    rig.clock.now = deadline
    read = only(to_executor(rig.mux.tick()))
    assert read == recovery_read(read, pid, 1)
    assert rig.push(output(pid, 4)) == []  # held while the gap is read
    actions = rig.answer(read, read_result([chunk(2), chunk(3)], 4))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [output("p1", 2), output("p1", 3)]
    assert rig.answer(page, read_result([], 4)) == [ToBridge("A", output("p1", 4))]
    assert rig.mux.next_deadline() is None


def test_exit_before_the_last_output_while_away_is_placed_in_seq_order():
    rig, _, read = recovering_rig()
    actions = rig.answer(read, read_result([chunk(3), chunk(5)], 6, exited=True, exit_code=0))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [output("p1", 3), exited("p1", 4, 0), output("p1", 5)]
    actions = rig.answer(page, read_result([], 7, exited=True, exit_code=0, closed=True))
    assert actions == [ToBridge("A", closed("p1", 6))]


def test_exit_placed_between_retained_chunks_comes_after_the_loss_before_it():
    """Before the fix the exit went out at its seq and the loss at the end of the recovery: the
    client got process/exited before gateway/outputLost (tests/e2e/test_fault_output_lost.py)."""
    rig, _, read = recovering_rig()
    # 3..39 fell out of the retention; 40 and 42 are output, 41 the exit (before the last output).
    actions = rig.answer(read, read_result([chunk(40), chunk(42)], 43, exited=True, exit_code=0, closed=True))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [
        output("p1", 40),
        output_lost("p1", 3, 39),
        exited("p1", 41, 0),
        output("p1", 42),
    ]
    assert Dropped("output_lost_beyond_retention", "p1: 37 event(s), seq 3-39") in actions
    actions = rig.answer(page, read_result([], 44, exited=True, exit_code=0, closed=True))
    assert actions == [ToBridge("A", closed("p1", 43))]


def test_exit_found_on_a_later_page_comes_after_the_loss_on_the_first():
    rig, _, read = recovering_rig()
    # A first page large enough to have been trimmed: the gap 3..39 is lost output or the exit.
    big = "A" * (EXEC_RETENTION_BYTES // 2)
    actions = rig.answer(read, read_result([chunk(40, big), chunk(41, big)], 42, exited=True, exit_code=0))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [output("p1", 40, big), output("p1", 41, big)]
    # The next page places the exit at 43, between 42 and 44: 3..39 were output, told first.
    actions = rig.answer(page, read_result([chunk(42), chunk(44)], 45, exited=True, exit_code=0, closed=True))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [
        output("p1", 42),
        output_lost("p1", 3, 39),
        exited("p1", 43, 0),
        output("p1", 44),
    ]
    actions = rig.answer(page, read_result([], 46, exited=True, exit_code=0, closed=True))
    assert actions == [ToBridge("A", closed("p1", 45))]


def test_exit_right_after_what_the_client_had_is_placed_in_seq_order():
    rig, _, read = recovering_rig()
    # The client had 1..2; 3 is the exit, 4 the last output: a small answer cannot have been trimmed.
    actions = rig.answer(read, read_result([chunk(4)], 5, exited=True, exit_code=0, closed=True))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [exited("p1", 3, 0), output("p1", 4)]
    actions = rig.answer(page, read_result([], 6, exited=True, exit_code=0, closed=True))
    assert actions == [ToBridge("A", closed("p1", 5))]


def test_failed_recovery_read_keeps_the_gap_owed_and_reads_it_again():
    """Before the fix a failed recovery read flushed what it held: seq 5 reached the client past
    3..4, last_seq jumped to 5 and every later recovery read after 5: the gap was never read."""
    rig, pid, read = recovering_rig()
    assert rig.push(output(pid, 5)) == []
    actions = rig.fail(read, -32010, "busy")
    assert actions == [Dropped("recovery_failed", "p1: {'code': -32010, 'message': 'busy'}")]
    assert rig.push(output(pid, 6)) == []  # still held: 3..4 are owed
    retry_at = rig.mux.next_deadline()
    assert retry_at is not None
    assert retry_at > rig.clock.now
    assert rig.mux.tick() == []
    rig.clock.now = retry_at
    again = only(to_executor(rig.mux.tick()))
    assert again == recovery_read(again, pid, 2)
    actions = rig.answer(again, read_result([chunk(seq) for seq in range(3, 7)], 7))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [output("p1", seq) for seq in range(3, 7)]
    assert rig.answer(page, read_result([], 7)) == []
    rig.deliver(output(pid, 7), "A", output("p1", 7))


def test_recovery_abandoned_by_another_drop_delivers_nothing_past_the_gap():
    rig, pid, _ = recovering_rig()
    assert rig.push(output(pid, 5)) == []
    assert rig.mux.executor_disconnected() == []  # nothing flushed
    init = only(to_executor(rig.mux.executor_connected()))
    assert rig.push(output(pid, 7)) == []  # before the resume answer: held too
    read = only(reads(rig.answer(init, {"sessionId": EXEC_SESSION, "environmentInfo": ENV_INFO})))
    assert read == recovery_read(read, pid, 2)
    actions = rig.answer(read, read_result([chunk(seq) for seq in range(3, 7)], 7))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [output("p1", seq) for seq in range(3, 7)]
    assert rig.answer(page, read_result([], 7)) == [ToBridge("A", output("p1", 7))]


def test_recovery_that_keeps_failing_tells_the_client_what_it_gave_up_on():
    rig, pid, read = recovering_rig()
    assert rig.push(output(pid, 6)) == []
    failure = Dropped("recovery_failed", "p1: {'code': -32603, 'message': 'boom'}")
    for _ in range(multiplexer.RECOVERY_ATTEMPTS - 1):
        assert rig.fail(read, -32603, "boom") == [failure]
        deadline = rig.mux.next_deadline()
        assert deadline is not None
        rig.clock.now = deadline
        read = only(to_executor(rig.mux.tick()))
        assert read == recovery_read(read, pid, 2)
    assert rig.fail(read, -32603, "boom") == [
        failure,
        ToBridge("A", output_lost("p1", 3, 5)),
        Dropped("output_lost_unreadable", "p1: 3 event(s), seq 3-5"),
        ToBridge("A", output("p1", 6)),
    ]
    rig.deliver(output(pid, 7), "A", output("p1", 7))


def test_a_retry_for_a_departed_owner_waits_for_its_resume():
    rig, pid, read = recovering_rig()
    rig.fail(read, -32010, "busy")
    rig.mux.bridge_detached("A")
    deadline = rig.mux.next_deadline()
    assert deadline is not None
    rig.clock.now = deadline
    assert to_executor(rig.mux.tick()) == []
    rig.initialize("B", resume=rig.vsids["A"])
    page = only(reads(rig.initialized("B")))
    assert page == recovery_read(page, pid, 2)


def test_held_events_are_bounded_and_recovery_reads_what_it_let_go(monkeypatch):
    monkeypatch.setattr(multiplexer, "HELD_EVENTS_MAX", 3)
    rig, pid, read = recovering_rig()
    for seq in range(3, 9):
        assert rig.push(output(pid, seq)) == []  # 3..5 held, 6..8 let go
    actions = rig.answer(read, read_result([chunk(3), chunk(4)], 5))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [output("p1", 3), output("p1", 4)]
    # The executor says it is caught up at 4 (served before 5 existed), but 6..8 were let go:
    # read again rather than deliver 5 and hope.
    again = only(reads(rig.answer(page, read_result([], 5))))
    assert again == recovery_read(again, pid, 4)
    actions = rig.answer(again, read_result([chunk(seq) for seq in range(5, 9)], 9))
    page = only(reads(actions))
    assert to_bridge(actions, "A") == [output("p1", seq) for seq in range(5, 9)]
    assert rig.answer(page, read_result([], 9)) == []


class SimExecutor:
    """A fake exec-server session with one process, for the simulation below: it keeps every event
    (no retention limit), serves requests in order, pushes live events only while a connection has
    the session (now and then one overtakes the one before it, as exec-server's output, exit and
    close tasks do), and a cut loses whatever was on the wire."""

    def __init__(self, rig: Rig, pid: str, rng: random.Random) -> None:
        self.rig, self.pid, self.rng = rig, pid, rng
        self.events: list[str] = []  # the kind of each seq: output, exited, closed
        self.connected = True
        self.attached = True
        self.requests: list[JSON] = []  # gateway -> executor, not served yet
        self.wire: list[JSON] = []  # executor -> gateway, not delivered yet
        self.received: list[JSON] = []  # what bridge A got

    def take(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToExecutor) and "id" in action.message and self.connected:
                self.requests.append(action.message)
            elif isinstance(action, ToBridge):
                assert action.conn_id == "A"
                self.received.append(action.message)
            elif isinstance(action, CloseExecutor):
                self.cut()

    def produce(self, kind: str = "output") -> None:
        if "closed" in self.events:
            return
        self.events.append(kind)
        seq = len(self.events)
        if not self.attached:
            return
        event = (
            output(self.pid, seq)
            if kind == "output"
            else exited(self.pid, seq)
            if kind == "exited"
            else closed(self.pid, seq)
        )
        if self.wire and "method" in self.wire[-1] and self.rng.random() < 0.2:
            self.wire.insert(len(self.wire) - 1, event)  # overtakes the push before it
        else:
            self.wire.append(event)

    def end(self) -> None:
        if "exited" not in self.events:
            self.produce("exited")
            while self.rng.random() < 0.5:
                self.produce()  # output after the exit
            self.produce("closed")

    def serve(self, *, may_fail: bool) -> None:
        request = self.requests.pop(0)
        if request["method"] == "initialize":
            self.attached = True
            while self.rng.random() < 0.3:
                self.produce()  # pushed before the answer to initialize
            self.wire.append({"id": request["id"], "result": {"sessionId": EXEC_SESSION, "environmentInfo": ENV_INFO}})
        elif may_fail and self.rng.random() < 0.2:
            self.wire.append(error(request["id"], -32010, "busy"))
        else:
            after = request["params"]["afterSeq"]
            seqs = [s for s in range(after + 1, len(self.events) + 1) if self.events[s - 1] == "output"]
            seqs = seqs[: self.rng.randint(1, 4)]
            result = read_result(
                [chunk(seq) for seq in seqs],
                seqs[-1] + 1 if seqs else len(self.events) + 1,
                exited="exited" in self.events,
                exit_code=0 if "exited" in self.events else None,
                closed="closed" in self.events,
            )
            self.wire.append({"id": request["id"], "result": result})

    def deliver(self) -> None:
        self.take(self.rig.push(self.wire.pop(0)))

    def cut(self) -> None:
        self.connected = self.attached = False
        self.requests.clear()
        self.wire.clear()
        self.take(self.rig.mux.executor_disconnected())

    def reconnect(self) -> None:
        self.connected = True
        self.take(self.rig.mux.executor_connected())

    def tick(self) -> None:
        deadline = self.rig.mux.next_deadline()
        if deadline is not None and self.rig.mux.state.value == "ready":
            self.rig.clock.now = max(self.rig.clock.now, deadline)
            self.take(self.rig.mux.tick())

    def step(self) -> None:
        moves = [self.produce, self.produce, self.tick]
        if self.requests:
            moves.append(lambda: self.serve(may_fail=True))
        if self.wire:
            moves += [self.deliver, self.deliver, self.deliver]
        moves.append(self.cut if self.connected else self.reconnect)
        self.rng.choice(moves)()

    def settle(self) -> None:
        if not self.connected:
            self.reconnect()
        for _ in range(10_000):
            if self.wire:
                self.deliver()
            elif self.requests:
                self.serve(may_fail=False)
            elif self.rig.mux.next_deadline() is not None:
                self.tick()
            else:
                return
        raise AssertionError("the multiplexer did not settle")


@pytest.mark.parametrize("seed", range(60))
def test_random_cuts_early_pushes_and_failed_reads_lose_nothing(seed):
    """A seeded simulation of what the soak in reliability-notes.md does, on the pure
    multiplexer: output produced while the executor is cut off, pushed before the resume answer
    or ahead of a lower seq, recovery reads that fail or are cut off, paged answers, and (in half
    the runs) the process's exit and close, during the run or at its end. The client must end up
    with every event exactly once, in seq order, and never be told of a loss (nothing fell out of
    retention)."""
    rng = random.Random(seed)
    rig = ready_rig()
    rig.attach("A")
    sim = SimExecutor(rig, rig.start("A", "p1"), rng)
    ends = seed % 2 == 0
    for step in range(300):
        sim.step()
        if ends and step == rng.randint(100, 400):
            sim.end()
    if ends:
        sim.end()
    sim.settle()
    assert [(m["method"], m["params"]["seq"]) for m in sim.received] == [
        (f"process/{kind}", seq) for seq, kind in enumerate(sim.events, start=1)
    ]


# --- virtual session resume -------------------------------------------------------------------


def test_bridge_resumes_its_detached_session_and_recovers_missed_output():
    rig = ready_rig()
    vsid = rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    rig.mux.bridge_detached("A")
    assert rig.push(output(pid, 2, "Yg==")) == [Dropped("owner_detached", "process/output")]

    actions = rig.initialize("B", resume=vsid, request_id="init")
    assert actions == [ToBridge("B", {"id": "init", "result": {"sessionId": vsid, "environmentInfo": ENV_INFO}})]
    page = only(reads(rig.initialized("B")))
    assert page == recovery_read(page, pid, 1)
    actions = rig.answer(page, read_result([chunk(2, "Yg==")], 3))
    page = only(reads(actions))
    assert actions == [ToBridge("B", output("p1", 2, "Yg==")), ToExecutor(recovery_read(page, pid, 2))]
    assert rig.answer(page, read_result([], 3)) == []
    rig.deliver(output(pid, 3), "B", output("p1", 3))
    # The resumed session keeps its handles.
    sent = rig.forward("B", {"id": 4, "method": "process/terminate", "params": {"processId": "p1"}})
    assert sent["params"]["processId"] == pid


def test_resuming_a_session_attached_elsewhere_is_refused():
    rig = ready_rig()
    vsid = rig.attach("A")
    assert rig.initialize("B", resume=vsid) == [
        ToBridge("B", error(1, -32010, f"session {vsid} is already attached to another connection"))
    ]
    # B may still start a fresh session; A is unaffected.
    assert only(to_bridge(rig.initialize("B", request_id=2), "B"))["result"]["sessionId"] != vsid
    rig.forward("A", {"id": 3, "method": "environment/status"})


def test_resuming_an_unknown_session_is_refused():
    rig = ready_rig()
    assert rig.initialize("B", resume="nope") == [ToBridge("B", error(1, -32600, "unknown session id nope"))]


# --- expiry -----------------------------------------------------------------------------------


def test_detached_session_expires_and_its_live_processes_are_terminated():
    rig = ready_rig()
    vsid = rig.attach("A")
    pid_live = rig.start("A", "live")
    pid_done = rig.start("A", "done")
    rig.deliver(closed(pid_done, 1), "A", closed("done", 1))
    rig.mux.bridge_detached("A")
    assert rig.mux.next_deadline() == rig.clock.now + EXEC_SESSION_RETENTION
    rig.clock.advance(EXEC_SESSION_RETENTION - 0.1)
    assert rig.mux.tick() == []
    rig.clock.advance(0.1)
    actions = rig.mux.tick()
    terminate = only(to_executor(actions))
    assert actions == [
        ToExecutor({"id": terminate["id"], "method": "process/terminate", "params": {"processId": pid_live}})
    ]
    assert rig.mux.take_changes().deletes == [vsid]
    assert rig.answer(terminate, {"running": True}) == []
    assert rig.push(exited(pid_live, 1, 137)) == [Dropped("unrouted_notification", "process/exited")]
    assert rig.initialize("B", resume=vsid) == [ToBridge("B", error(1, -32600, f"unknown session id {vsid}"))]


def test_session_resumed_in_time_does_not_expire():
    rig = ready_rig()
    vsid = rig.attach("A")
    rig.start("A", "p1")
    rig.mux.bridge_detached("A")
    assert rig.mux.next_deadline() == rig.clock.now + EXEC_SESSION_RETENTION
    rig.clock.advance(EXEC_SESSION_RETENTION - 1)
    rig.initialize("B", resume=vsid)
    assert rig.mux.next_deadline() is None  # the expiry it no longer has is not a deadline
    rig.clock.advance(10)
    assert rig.mux.tick() == []
    assert rig.mux.take_changes().deletes == []


def test_expiry_waits_for_the_executor():
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.mux.bridge_detached("A")
    rig.clock.advance(EXEC_SESSION_RETENTION - 1)
    rig.mux.executor_disconnected()
    rig.clock.advance(2)
    assert rig.mux.tick() == []
    init = only(to_executor(rig.mux.executor_connected()))
    assert rig.mux.tick() == []  # still handshaking
    rig.answer(init, {"sessionId": EXEC_SESSION, "environmentInfo": ENV_INFO})
    terminate = only(to_executor(rig.mux.tick()))
    assert terminate == {"id": terminate["id"], "method": "process/terminate", "params": {"processId": pid}}


def test_executor_away_too_long_closes_every_bridge_and_finishes():
    rig = ready_rig()
    rig.attach("A")
    rig.mux.bridge_attached("B")  # not initialized
    rig.mux.executor_disconnected()
    assert rig.mux.next_deadline() == rig.clock.now + EXEC_SESSION_RETENTION
    rig.clock.advance(EXEC_SESSION_RETENTION - 0.5)
    assert rig.mux.tick() == []
    assert not rig.mux.finished
    rig.clock.advance(0.5)
    actions = rig.mux.tick()
    assert sorted((a.conn_id, a.code) for a in actions if isinstance(a, CloseBridge)) == [
        ("A", CLOSE_EXECUTOR_LOST),
        ("B", CLOSE_EXECUTOR_LOST),
    ]
    assert len(actions) == 2
    assert rig.mux.finished
    assert rig.gone("A")
    assert rig.gone("B")
    assert rig.mux.take_changes().deletes == [rig.vsids["A"]]


def test_executor_that_never_connects_finishes_after_the_window():
    rig = Rig(retention=5)
    rig.mux.bridge_attached("A")
    rig.clock.advance(5)
    assert rig.mux.tick() == [CloseBridge("A", CLOSE_EXECUTOR_LOST, "executor did not come back")]
    assert rig.mux.finished


def test_evicted_closes_executor_and_every_bridge():
    rig = ready_rig()
    rig.attach("A")
    rig.attach("B")
    rig.mux.bridge_attached("C")
    assert rig.mux.evicted("taken over") == [
        CloseExecutor(CLOSE_EXECUTOR_REPLACED, "taken over"),
        CloseBridge("A", CLOSE_EXECUTOR_LOST, "taken over"),
        CloseBridge("B", CLOSE_EXECUTOR_LOST, "taken over"),
        CloseBridge("C", CLOSE_EXECUTOR_LOST, "taken over"),
    ]
    assert rig.mux.finished
    assert all(rig.gone(conn_id) for conn_id in "ABC")


# --- regressions: bugs found in bridge/multiplexer.py while writing these tests ---------------


def test_owner_leaving_mid_recovery_stops_paging_and_its_resume_reads_again():
    """Before the fix, a recovery page for a detached owner was dropped without advancing, and
    the gateway re-sent the very same process/read: a hot loop until the owner resumed."""
    rig, pid, read = recovering_rig()
    assert rig.push(output(pid, 4, "ZA==")) == []  # held: recovery in progress
    rig.mux.bridge_detached("A")
    actions = rig.answer(read, read_result([chunk(3, "Yw=="), chunk(4, "ZA==")], 5))
    assert reads(actions) == []
    assert [a for a in actions if not isinstance(a, Dropped)] == []
    assert rig.mux.pending_count == 0

    assert only(to_bridge(rig.initialize("B", resume=rig.vsids["A"]), "B"))["result"]["sessionId"] == rig.vsids["A"]
    page = only(reads(rig.initialized("B")))
    assert page == recovery_read(page, pid, 2)
    actions = rig.answer(page, read_result([chunk(3, "Yw=="), chunk(4, "ZA==")], 5))
    page = only(reads(actions))
    assert to_bridge(actions, "B") == [output("p1", 3, "Yw=="), output("p1", 4, "ZA==")]
    assert rig.answer(page, read_result([], 5)) == []


def test_recovery_page_arriving_before_the_resumer_is_initialized_does_not_loop():
    rig, pid, read = recovering_rig()
    rig.mux.bridge_detached("A")
    rig.initialize("B", resume=rig.vsids["A"])  # B has not sent initialized yet
    assert reads(rig.answer(read, read_result([chunk(3)], 4))) == []
    page = only(reads(rig.initialized("B")))
    assert page == recovery_read(page, pid, 2)
    assert to_bridge(rig.answer(page, read_result([chunk(3)], 4)), "B") == [output("p1", 3)]


def test_process_started_for_a_departed_bridge_is_terminated_on_expiry():
    """Before the fix, a process/start answered after its bridge left was never recorded: a
    silent process (sleep) was neither recovered on resume nor terminated on expiry."""
    rig = ready_rig()
    rig.attach("A")
    sent = rig.forward("A", {"id": 2, "method": "process/start", "params": {"processId": "p1", **START_PARAMS}})
    pid = sent["params"]["processId"]
    rig.mux.bridge_detached("A")
    result = {"processId": pid, "sandboxType": "none"}
    assert rig.answer(sent, result) == [Dropped("response_for_departed_bridge", "process/start")]
    rig.clock.advance(EXEC_SESSION_RETENTION)
    terminate = only(to_executor(rig.mux.tick()))
    assert terminate == {"id": terminate["id"], "method": "process/terminate", "params": {"processId": pid}}


def test_process_started_for_a_departed_bridge_is_recovered_on_resume():
    rig = ready_rig()
    rig.attach("A")
    sent = rig.forward("A", {"id": 2, "method": "process/start", "params": {"processId": "p1", **START_PARAMS}})
    pid = sent["params"]["processId"]
    rig.mux.bridge_detached("A")
    rig.answer(sent, {"processId": pid, "sandboxType": "none"})
    rig.initialize("B", resume=rig.vsids["A"])
    page = only(reads(rig.initialized("B")))
    assert page == recovery_read(page, pid, 0)


def test_recovered_output_counts_as_seen_for_long_polls():
    """Before the fix, output recovered after a reconnect did not count as observed, so a
    long-poll behind it was held until new output or its deadline although data was there."""
    rig, pid, read = recovering_rig()
    page = only(reads(rig.answer(read, read_result([chunk(3), chunk(4)], 5))))
    assert rig.answer(page, read_result([], 5)) == []
    sent = rig.forward("A", long_read(2))
    assert sent == forwarded_read(sent, pid, 2)
    assert rig.send("A", long_read(4)) == []  # nothing new past 4: held


def test_next_deadline_is_never_in_the_past_after_a_tick():
    """Before the fix, a detached session's expiry (or the executor's own window) that tick()
    had to postpone stayed the next deadline: the driver, which sleeps until next_deadline(),
    spun on tick() for as long as the executor was away or handshaking."""
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.mux.bridge_detached("A")
    rig.clock.advance(EXEC_SESSION_RETENTION - 1)
    rig.mux.executor_disconnected()
    rig.clock.advance(2)  # the session's expiry is due, but the executor is away
    assert rig.mux.tick() == []
    deadline = rig.mux.next_deadline()
    assert deadline is not None
    assert deadline > rig.clock.now

    rig.clock.advance(EXEC_SESSION_RETENTION - 2)  # the executor reconnects just inside its window...
    init = only(to_executor(rig.mux.executor_connected()))
    rig.clock.advance(1)  # ...and its handshake takes a while
    assert rig.mux.tick() == []
    deadline = rig.mux.next_deadline()
    assert deadline is None or deadline > rig.clock.now
    assert not rig.mux.finished

    rig.answer(init, {"sessionId": EXEC_SESSION, "environmentInfo": ENV_INFO})
    deadline = rig.mux.next_deadline()
    assert deadline is not None
    assert deadline <= rig.clock.now  # now the expiry can run
    terminate = only(to_executor(rig.mux.tick()))
    assert terminate["params"] == {"processId": pid}
    assert rig.mux.next_deadline() is None


def test_tick_fires_each_due_timer_once_and_none_that_was_cleared_or_moved():
    """tick() takes what is due from the timeline. A timer cleared (its gap filled) or moved (its
    session resumed and left again) leaves a stale entry behind that must not fire; a timer put
    on the timeline twice, or ticked twice, fires once."""
    rig = ready_rig()
    t0 = rig.clock.now
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    assert rig.push(output(pid, 3)) == []  # a gap: read at t0 + 1 unless it fills
    rig.clock.now = t0 + 0.5
    assert rig.push(output(pid, 2)) == [ToBridge("A", output("p1", 2)), ToBridge("A", output("p1", 3))]
    assert rig.push(output(pid, 5)) == []  # a new gap: read at t0 + 1.5
    rig.clock.now = t0 + 1
    assert rig.mux.tick() == []
    rig.clock.now = t0 + 1.5
    read = only(to_executor(rig.mux.tick()))
    assert read == recovery_read(read, pid, 3)
    assert rig.mux.tick() == []

    vsid = rig.attach("B")
    pid_b = rig.start("B", "q1")
    rig.mux.bridge_detached("B")  # expires at t0 + 1.5 + the window...
    rig.clock.now = t0 + 2.5
    rig.initialize("C", resume=vsid)
    rig.mux.bridge_detached("C")  # ...no: at t0 + 2.5 + the window...
    rig.initialize("D", resume=vsid)
    rig.mux.bridge_detached("D")  # ...the same expiry again (the same clock reading)
    rig.clock.now = t0 + 1.5 + EXEC_SESSION_RETENTION
    assert rig.mux.tick() == []
    rig.clock.now = t0 + 2.5 + EXEC_SESSION_RETENTION
    terminate = only(to_executor(rig.mux.tick()))
    assert terminate["params"] == {"processId": pid_b}
    assert rig.mux.tick() == []
    assert rig.mux.take_changes().deletes == [vsid]  # B's, not A's


def test_the_timers_of_a_process_a_client_named_empty_fire():
    """A client may name a process "" (exec-server takes any string). Its timers were once
    taken for its session's detach expiry, found stale and dropped: a gap was never read and a
    failed recovery read never tried again, so all the process's output stayed held."""
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "")
    rig.deliver(output(pid, 1), "A", output("", 1))
    assert rig.push(output(pid, 3)) == []  # a gap
    process = rig.mux._vsessions[rig.vsids["A"]].processes[""]
    assert process.reorder_at is not None
    assert rig.mux.next_deadline() == process.reorder_at
    rig.clock.now = process.reorder_at
    assert recovery_read(read := only(to_executor(rig.mux.tick())), pid, 1) == read

    rig.mux.executor_disconnected()
    read = only(reads(rig.connect()))
    rig.fail(read, -32000, "busy")
    assert process.recovering
    assert process.retry_at is not None
    assert rig.mux.next_deadline() == process.retry_at
    rig.clock.now = process.retry_at
    assert reads(rig.mux.tick())


def test_events_before_the_start_response_are_kept():
    """exec-server may push a fast process's events before the process/start result. Before
    the fix the result reset the (already closed) process, so the next reconnect re-read it and
    delivered its output a second time."""
    rig = ready_rig()
    rig.attach("A")
    sent = rig.forward("A", {"id": 2, "method": "process/start", "params": {"processId": "p1", **START_PARAMS}})
    pid = sent["params"]["processId"]
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    rig.deliver(exited(pid, 2), "A", exited("p1", 2))
    rig.deliver(closed(pid, 3), "A", closed("p1", 3))
    assert rig.answer(sent, {"processId": pid, "sandboxType": "none"}) == [
        ToBridge("A", {"id": 2, "result": {"processId": "p1", "sandboxType": "none"}})
    ]
    rig.mux.executor_disconnected()
    assert reads(rig.connect()) == []


def test_a_reused_process_id_starts_a_new_seq_series():
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    rig.deliver(closed(pid, 2), "A", closed("p1", 2))
    assert rig.start("A", "p1", request_id=3) == pid
    rig.deliver(output(pid, 1, "Yg=="), "A", output("p1", 1, "Yg=="))
    rig.mux.executor_disconnected()
    page = only(reads(rig.connect()))
    assert page == recovery_read(page, pid, 1)


def test_an_executor_that_never_answers_initialize_is_hung_up_on():
    clock = FakeClock()
    mux = Multiplexer("exe_test", clock=clock)
    mux.executor_connected()
    deadline = mux.next_deadline()
    assert deadline is not None
    assert mux.tick() == []
    clock.now = deadline
    actions = mux.tick()
    assert CloseExecutor(1011, "executor did not answer initialize") in actions
    assert Dropped("executor_handshake_timeout") in actions
    retry_at = mux.next_deadline()
    assert retry_at is not None
    assert retry_at > clock.now


def test_resume_window_is_separate_from_the_executor_retention():
    rig = ready_rig()
    rig.mux.resume_window = 2
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.mux.bridge_detached("A")
    assert rig.mux.next_deadline() == rig.clock.now + 2
    rig.clock.advance(1.9)
    assert rig.mux.tick() == []
    rig.clock.advance(0.1)
    terminate = only(to_executor(rig.mux.tick()))
    assert terminate["params"] == {"processId": pid}


def test_a_long_poll_during_recovery_is_held_not_answered_empty():
    """Before the fix, a long-poll arriving while the process was being recovered was forwarded at
    once with waitMs 0: an empty answer that ended the client's wait early."""
    rig, pid, read = recovering_rig()
    assert rig.send("A", long_read(2)) == []  # nothing past 2 known yet: held
    assert rig.answer(read, read_result([], 3)) == []  # recovery: still nothing new
    released = only(reads(rig.push(output(pid, 3, "Yw=="))))
    assert released == forwarded_read(released, pid, 2)


def test_recovery_that_finds_output_releases_a_waiting_long_poll():
    rig, pid, read = recovering_rig()
    assert rig.send("A", long_read(2)) == []
    page = only(reads(rig.answer(read, read_result([chunk(3)], 4))))
    released = [m for m in reads(rig.answer(page, read_result([], 4))) if m["params"]["afterSeq"] == 2]
    assert released == [forwarded_read(released[0], pid, 2)]


# --- the shared table: takeover by another gateway process --------------------------------------


def take_over(old: Rig, stored: TableChanges | None = None) -> Rig:
    """A second process's multiplexer restores what ``old`` stored (by default: everything so
    far), and the executor resumes its session there."""
    changes = stored or old.mux.take_changes()
    new = Rig(session_id=EXEC_SESSION, environment_info=ENV_INFO)
    new.mux.restore(changes.upserts, changes.next_handle)
    assert new.connect() == [INITIALIZED, SaveSession(EXEC_SESSION, ENV_INFO)]  # nobody attached: nothing read
    return new


def test_new_sessions_processes_and_int_handles_are_urgent_changes_sequence_progress_is_not():
    rig = ready_rig()
    rig.mux.take_changes()
    vsid = rig.attach("A")
    assert rig.mux.has_urgent_changes
    assert set(rig.mux.take_changes().upserts) == {vsid}
    pid = rig.start("A", "p1")
    changes = rig.mux.take_changes()
    assert changes.urgent
    assert changes.upserts[vsid]["processes"] == {
        "p1": {"last_seq": 0, "observed_seq": 0, "exited": False, "closed": False, "missing": []}
    }
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    assert rig.mux.has_changes
    assert not rig.mux.has_urgent_changes
    assert rig.mux.take_changes().upserts[vsid]["processes"]["p1"]["last_seq"] == 1
    sent = rig.forward("A", {"id": 3, "method": "fs/watchMissing", "params": {"watchId": 7, "path": "file:///x"}})
    changes = rig.mux.take_changes()
    assert changes.urgent
    assert changes.upserts[vsid]["int_handles"] == [["watchId", 7, sent["params"]["watchId"]]]
    assert changes.next_handle == sent["params"]["watchId"] + 1
    assert not rig.mux.has_changes


def test_a_refused_start_leaves_no_process_in_the_table():
    rig = ready_rig()
    vsid = rig.attach("A")
    sent = rig.forward("A", {"id": 2, "method": "process/start", "params": {"processId": "p1", **START_PARAMS}})
    assert "p1" in rig.mux.take_changes().upserts[vsid]["processes"]  # stored before it runs
    assert rig.fail(sent, -32602, "bad argv") == [ToBridge("A", error(2, -32602, "bad argv"))]
    assert rig.mux.take_changes().upserts[vsid]["processes"] == {}


def test_another_process_takes_over_and_the_resumed_bridge_gets_every_missed_chunk():
    old = ready_rig()
    vsid = old.attach("A")
    pid = old.start("A", "p1")
    old.deliver(output(pid, 1, "YQ=="), "A", output("p1", 1, "YQ=="))
    old.deliver(output(pid, 2, "Yg=="), "A", output("p1", 2, "Yg=="))
    # The old process dies here; its executor reconnects to the new one.
    new = take_over(old)
    actions = new.initialize("B", resume=vsid, request_id="init")
    assert actions == [ToBridge("B", {"id": "init", "result": {"sessionId": vsid, "environmentInfo": ENV_INFO}})]
    page = only(reads(new.initialized("B")))
    assert page == recovery_read(page, pid, 2)  # from the last chunk the client got
    actions = new.answer(page, read_result([chunk(3, "Yw==")], 4))
    page = only(reads(actions))
    assert actions == [ToBridge("B", output("p1", 3, "Yw==")), ToExecutor(recovery_read(page, pid, 3))]
    assert new.answer(page, read_result([], 4)) == []
    new.deliver(output(pid, 4), "B", output("p1", 4))
    # Handles keep their meaning on the new process.
    sent = new.forward("B", {"id": 5, "method": "process/terminate", "params": {"processId": "p1"}})
    assert sent["params"]["processId"] == pid


def test_stale_sequence_progress_repeats_output_with_its_seq_never_skips_it():
    old = ready_rig()
    vsid = old.attach("A")
    pid = old.start("A", "p1")
    stored = old.mux.take_changes()  # p1 at seq 0
    old.deliver(output(pid, 1, "YQ=="), "A", output("p1", 1, "YQ=="))  # not stored before the crash
    new = take_over(old, stored)
    new.initialize("B", resume=vsid)
    page = only(reads(new.initialized("B")))
    assert page == recovery_read(page, pid, 0)
    actions = new.answer(page, read_result([chunk(1, "YQ=="), chunk(2, "Yg==")], 3))
    assert to_bridge(actions, "B") == [output("p1", 1, "YQ=="), output("p1", 2, "Yg==")]


def test_takeover_keeps_integer_handles_and_allocates_past_them():
    old = ready_rig()
    vsid = old.attach("A")
    watch = old.forward("A", {"id": 2, "method": "fs/watchMissing", "params": {"watchId": 7, "path": "file:///x"}})
    mapped = watch["params"]["watchId"]
    new = take_over(old)
    new.initialize("B", resume=vsid)
    new.initialized("B")
    note = {"method": "fs/missingChanged", "params": {"watchId": mapped, "exists": True}}
    assert new.push(note) == [ToBridge("B", {"method": "fs/missingChanged", "params": {"watchId": 7, "exists": True}})]
    other = new.attach("C")
    assert other != vsid
    fresh = new.forward("C", {"id": 2, "method": "fs/watchMissing", "params": {"watchId": 7, "path": "file:///y"}})
    assert fresh["params"]["watchId"] > mapped


def test_restored_sessions_expire_unless_resumed_in_the_window():
    old = ready_rig()
    old.attach("A")
    pid = old.start("A", "p1")
    new = take_over(old)
    new.clock.advance(EXEC_SESSION_RETENTION + 1)
    actions = new.mux.tick()
    assert to_executor(actions) == [
        {"id": to_executor(actions)[0]["id"], "method": "process/terminate", "params": {"processId": pid}}
    ]
    assert new.mux.take_changes().deletes == [old.vsids["A"]]


LOST_BEFORE_RESPONSE = "executor connection lost before the response; the request may or may not have run"


def test_drain_answers_what_waits_and_closes_everything_with_the_code():
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    sent = rig.forward("A", {"id": 3, "method": "fs/readFile", "params": {"path": "file:///big"}})
    assert sent["method"] == "fs/readFile"
    rig.send("A", {"id": 4, "method": "process/read", "params": {"processId": "p1", "afterSeq": 0, "waitMs": 5000}})
    actions = rig.mux.drain(1012, "gateway restarting")
    assert actions == [
        ToBridge("A", error(3, -32000, LOST_BEFORE_RESPONSE, RETRYABLE)),
        ToBridge("A", error(4, -32000, "executor connection lost", RETRYABLE)),
        CloseBridge("A", 1012, "gateway restarting"),
        CloseExecutor(1012, "gateway restarting"),
    ]
    assert rig.mux.finished
    assert pid
