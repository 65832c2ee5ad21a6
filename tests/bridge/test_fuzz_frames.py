"""Fuzz corpus: client frames of the ``/bridge`` WebSocket, fed the way the session driver feeds
them (``bridge/consumers.py`` turns binary frames into text, ``bridge/session.py`` parses the
text, ``Multiplexer.bridge_message`` decides), plus junk from the executor's side.

Every frame gets the documented answer (docs/protocol.md): an unparsable frame or a non-object
``-32600`` with id ``-1``; a bad id or method ``-32600`` with id ``-1``; a second ``initialize``
``-32600``; a stray response or an unknown notification dropped and counted, never forwarded; any
other request forwarded with a gateway id and the client's handles namespaced. No frame reaches
another bridge or closes anything, and another virtual session on the same executor is
unaffected: its pending request still completes, and its process's output still reaches it.
Fixed seed, bounded examples (``tests/fuzzing.py``)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from bridge import frame_json
from bridge.multiplexer import CloseBridge, CloseExecutor, Dropped, ToBridge, ToExecutor
from bridge.protocol import HANDLE_KEYS, INVALID_REQUEST
from tests.bridge.test_multiplexer import Rig, ready_rig, to_bridge, to_executor
from tests.fuzzing import count, fuzz, run

KIND = "bridge frame"
EXEC_KIND = "executor frame"
NOT_AN_OBJECT = {
    "error": {"code": INVALID_REQUEST, "message": "failed to parse JSON-RPC message: expected a JSON-RPC object"},
    "id": -1,
}
BAD_ID = {
    "error": {"code": INVALID_REQUEST, "message": "failed to parse JSON-RPC message: invalid id or method"},
    "id": -1,
}
METHODS = [
    "initialize",
    "initialized",
    "process/start",
    "process/read",
    "process/write",
    "process/terminate",
    "fs/readFile",
    "fs/open",
    "fs/watchMissing",
    "http/request",
    "gateway/outputLost",
    "no/such/method",
    "",
]
huge_ints = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=2**63).map(lambda n: n * 10**30)
    | st.integers(min_value=300, max_value=4000).map(lambda digits: 10**digits)  # beyond any float
)
scalars = st.none() | st.booleans() | huge_ints | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
ids = huge_ints | st.text(max_size=20) | st.none() | st.booleans() | st.floats() | st.lists(st.integers(), max_size=2)
params = (
    st.fixed_dictionaries(
        {},
        optional={
            "processId": st.sampled_from(["p1", "p2", "vdeadbeef.p1"]) | st.text(max_size=12) | huge_ints,
            "handleId": st.text(max_size=12) | huge_ints,
            "watchId": huge_ints | st.text(max_size=5),
            "requestId": st.text(max_size=12) | huge_ints,
            "waitMs": huge_ints | st.floats(),
            "afterSeq": huge_ints | st.text(max_size=3),
            "argv": st.lists(st.text(max_size=10), max_size=3),
            "chunk": st.text(max_size=50),
            "clientName": st.text(max_size=10) | huge_ints,
            "resumeSessionId": st.none() | st.text(max_size=36),
        },
    )
    | json_values
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "id": ids,
        "method": st.sampled_from(METHODS) | st.text(max_size=30) | json_values,
        "params": params,
        "result": json_values,
        "error": json_values,
        "jsonrpc": st.just("2.0"),
    },
)


def frames() -> st.SearchStrategy[str | bytes]:
    as_json = requests.map(json.dumps)
    return st.one_of(
        as_json,
        as_json.map(str.encode),  # the same, in a binary frame
        json_values.map(json.dumps),  # valid JSON, not a request object
        st.text(max_size=200),  # anything
        st.binary(max_size=200),  # a binary frame of anything (decoded with replacement)
        as_json.map(lambda text: text[: len(text) // 2]),  # truncated JSON
        # Sequences that reach deeper: start one of a's processes, then long-poll it.
        st.sampled_from(["p1", "p2"]).map(
            lambda pid: json.dumps({"id": 2, "method": "process/start", "params": {"processId": pid, "argv": ["true"]}})
        ),
        st.builds(
            lambda pid, wait, after: json.dumps(
                {"id": 3, "method": "process/read", "params": {"processId": pid, "waitMs": wait, "afterSeq": after}}
            ),
            st.sampled_from(["p1", "p2"]),
            huge_ints | st.floats(),
            huge_ints,
        ),
        st.integers(min_value=1, max_value=4300).map(lambda n: '{"id": ' + "9" * n + ', "method": "x"}'),
        st.integers(min_value=4301, max_value=6000).map(lambda n: '{"id": ' + "9" * n + "}"),  # past int parsing limits
        st.integers(min_value=64 * 1024, max_value=1024 * 1024).map(  # oversize (well under the 16 MiB frame limit)
            lambda n: json.dumps({"id": 7, "method": "process/write", "params": {"processId": "p1", "chunk": "A" * n}})
        ),
    )


def decode(frame: str | bytes) -> Any:
    """What the session driver hands the multiplexer for one WebSocket frame."""
    return frame_json.decode(frame if isinstance(frame, str) else frame.decode("utf-8", "replace"))


class TwoBridges:
    """A ready executor with bridge ``a`` (the fuzzer's) and bridge ``b`` (the bystander), which
    has a process running and a request waiting for the executor's answer."""

    def __init__(self) -> None:
        self.rig: Rig = ready_rig()
        self.rig.attach("a")
        self.rig.attach("b")
        self.b_pid = self.rig.start("b", "p1", request_id=100)
        self.b_read = self.rig.forward("b", {"id": 101, "method": "process/read", "params": {"processId": "p1"}})
        self.prefix = self.vsession("a").prefix

    def vsession(self, conn_id: str) -> Any:
        return self.rig.mux._vsessions[self.rig.vsids[conn_id]]

    def bystander_unaffected(self) -> None:
        result = {"chunks": [], "nextSeq": 1, "exited": False, "exitCode": None, "closed": False, "failure": None}
        assert self.rig.answer(self.b_read, result) == [ToBridge("b", {"id": 101, "result": result})]
        pushed = {"processId": self.b_pid, "seq": 1, "stream": "stdout", "chunk": "aGkK"}
        assert self.rig.push({"method": "process/output", "params": pushed}) == [
            ToBridge("b", {"method": "process/output", "params": {**pushed, "processId": "p1"}})
        ]


def expected_refusal(message: Any, twin: TwoBridges) -> list[Any] | None:
    """The exact actions the documented refusals prescribe, or None for a request to forward."""
    if not isinstance(message, dict):
        return [ToBridge("a", NOT_AN_OBJECT)]
    method = message.get("method")
    if method is None:
        return [Dropped("stray_client_response", repr(message.get("id")))]
    if "id" not in message:
        if method == "initialized":
            return []  # already initialized: nothing to do
        return [Dropped("unknown_client_notification", str(method))]
    request_id = message["id"]
    valid_id = (isinstance(request_id, int) and not isinstance(request_id, bool)) or isinstance(request_id, str)
    if not valid_id or not isinstance(method, str):
        return [ToBridge("a", BAD_ID)]
    if method == "initialize":
        return [
            ToBridge(
                "a",
                {
                    "error": {"code": INVALID_REQUEST, "message": "initialize may only be sent once per connection"},
                    "id": request_id,
                },
            )
        ]
    return None


def check_forwarded(message: dict[str, Any], actions: list[Any], twin: TwoBridges) -> None:
    if not actions:
        # Only a long-poll read of one of a's own processes is held by the gateway.
        assert message["method"] == "process/read"
        assert isinstance(message["params"].get("processId"), str)
        assert message["params"]["processId"] in twin.vsession("a").processes
        return
    assert len(actions) == 1, actions
    assert isinstance(actions[0], ToExecutor), actions
    sent = actions[0].message
    assert isinstance(sent["id"], int)
    assert sent["method"] == message["method"]
    assert ("params" in sent) == ("params" in message)
    if isinstance(message.get("params"), dict):
        for key in HANDLE_KEYS:
            value = message["params"].get(key)
            if isinstance(value, str):
                # The client's handle, namespaced: it can never name b's (or anyone's) handle.
                assert sent["params"][key] == f"{twin.prefix}.{value}"
            elif isinstance(value, int) and not isinstance(value, bool):
                owner, original = twin.rig.mux._int_owners[(key, sent["params"][key])]
                assert (owner, original) == (twin.vsession("a"), value)
        if message["method"] == "process/read":
            assert sent["params"]["waitMs"] == 0  # never a long-poll on the shared connection


def test_bridge_frames_get_the_documented_refusals_and_leave_other_sessions_alone():
    @fuzz(1200)
    @given(batch=st.lists(frames(), min_size=1, max_size=4))
    @example(batch=[b"\xff\xfe"])
    @example(batch=['{"id": 1, "method": "initialize", "params": {"clientName": "again"}}'])
    @example(batch=['{"method": "process/output", "params": {"processId": "p1"}}'])
    @example(batch=['{"id": ' + "9" * 4300 + ', "method": "process/read", "params": {"processId": "p1"}}'])
    @example(batch=['{"id": 1, "method": "process/read", "params": {"processId": "p1", "waitMs": 1e400}}'])
    def frames_from_a(batch):
        twin = TwoBridges()
        for frame in batch:
            count(KIND)
            message = decode(frame)
            actions = twin.rig.send("a", message)
            assert not any(isinstance(a, CloseBridge | CloseExecutor) for a in actions)
            assert not to_bridge(actions, "b")
            deadline = twin.rig.mux.next_deadline()
            assert deadline is None or math.isfinite(deadline)  # the session driver sleeps until it
            expected = expected_refusal(message, twin)
            if expected is not None:
                assert actions == expected
            else:
                check_forwarded(message, actions, twin)
        twin.bystander_unaffected()

    run(KIND, frames_from_a, 1200)


def test_executor_junk_is_dropped_or_answered_and_leaves_bridges_alone():
    """Frames from the executor's side that answer nothing pending and name no handle."""
    junk = st.one_of(
        requests.filter(lambda m: not isinstance(m.get("params"), dict)).map(json.dumps),
        json_values.map(json.dumps),
        st.text(max_size=100),
        st.binary(max_size=100),
        st.integers(min_value=4301, max_value=5000).map(lambda n: '{"id": ' + "9" * n + "}"),
    )

    @fuzz(300)
    @given(batch=st.lists(junk, min_size=1, max_size=4))
    def executor_frames(batch):
        twin = TwoBridges()
        for frame in batch:
            count(EXEC_KIND)
            message = decode(frame)
            pending = isinstance(message, dict) and isinstance(message.get("id"), int) and "method" not in message
            if pending and message["id"] in twin.rig.mux._pending:
                continue  # an answer to a pending request is not junk
            actions = twin.rig.mux.executor_message(message)
            assert not to_bridge(actions, "a")
            assert not to_bridge(actions, "b")
            assert not any(isinstance(a, CloseBridge | CloseExecutor) for a in actions)
            assert any(isinstance(a, Dropped) for a in actions)
            for sent in to_executor(actions):
                assert sent["error"]["code"] == -32601  # the executor's own requests are refused
        twin.bystander_unaffected()

    run(EXEC_KIND, executor_frames, 300)


# --- bugs in bridge/multiplexer.py the corpus found (fixed), kept as regressions ---


def test_a_read_with_a_waitms_beyond_float_range_is_forwarded_not_a_crash():
    # The batch the corpus found (shrunk), with the filter off. In bridge/session.py the exception
    # ends the executor's whole session ("executor session failed"): every bridge is closed.
    twin = TwoBridges()
    batch = [
        '{"id":2,"method":"process/start","params":{"processId":"p1","":[""]}}',
        '{"id": 3, "method": "process/read", "params": {"processId": "p1", "waitMs": 1'
        + "0" * 309
        + ', "afterSeq": 0}}',
    ]
    for frame in batch:
        actions = twin.rig.send("a", decode(frame))
        assert not to_bridge(actions, "b")
    twin.bystander_unaffected()


def test_a_read_with_a_nan_waitms_keeps_the_deadlines_usable():
    twin = TwoBridges()
    twin.rig.start("a", "p1", request_id=5)
    twin.rig.send("a", decode('{"id": 6, "method": "process/read", "params": {"processId": "p1", "waitMs": NaN}}'))
    deadline = twin.rig.mux.next_deadline()
    assert deadline is None or not math.isnan(deadline)
