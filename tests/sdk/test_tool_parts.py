"""The tools' local parts: output capping, the in-memory session table, error results and
argument checks (no executor needed; the e2e tests in tests/e2e/test_tools.py run the tools)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bridge.client import BridgeClosed
from bridge.client_pool import Pool
from sdk.resolver import NameResolver
from sdk.tools import get_tool, tool_specs
from sdk.tools.arguments import AbsolutePath, Arguments, Count, takes
from sdk.tools.base import ToolContext, ToolError, ToolResult
from sdk.tools.processes import ReadOutputArguments
from sdk.tools.running import CappedOutput
from sdk.tools.sessions import InMemoryProcessSessions, ProcessSession
from tests.bridge_dial import websocket_connector


async def no_token() -> str:
    raise AssertionError("nothing may dial in these tests")


async def no_bindings() -> list[dict[str, Any]]:
    return []


def context() -> ToolContext:
    return ToolContext(
        "ws",
        Pool(websocket_connector("ws://127.0.0.1:1"), no_token),
        NameResolver(no_bindings),
        InMemoryProcessSessions(),
    )


def test_capped_output_keeps_head_and_tail():
    capped = CappedOutput(10)
    for piece in (b"abc", b"defg", b"hij", b"klmno", b"p"):
        capped.append(piece)
    assert capped.omitted == 6
    assert capped.text() == "abcde\n[... 6 bytes omitted ...]\nlmnop"
    short = CappedOutput(10)
    short.append(b"abc")
    assert short.text() == "abc"
    assert CappedOutput(4).text() == ""


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_in_memory_sessions_forget_idle_ones():
    clock = Clock()
    sessions = InMemoryProcessSessions(max_idle=60, clock=clock)
    pool = Pool(websocket_connector("ws://127.0.0.1:1"), no_token)
    idle = ProcessSession(workspace_id="ws", environment="box", exe_id="exe_1", pool=pool, clock=clock)
    busy = ProcessSession(workspace_id="ws", environment="box", exe_id="exe_1", pool=pool, clock=clock)
    await sessions.register(idle)
    await sessions.register(busy)
    clock.now = 50
    busy.output_since(0)  # any use counts as activity
    clock.now = 70
    assert await sessions.get(idle.session_id) is None
    assert await sessions.get(busy.session_id) is busy
    await sessions.forget(busy.session_id)
    assert await sessions.get(busy.session_id) is None


class Kind(Arguments):
    kind: str


async def test_a_tool_turns_exceptions_into_error_results():
    @takes(Kind)
    async def broken(ctx: ToolContext, arguments: Kind) -> ToolResult:
        kind = arguments.kind
        if kind == "tool":
            raise ToolError("a readable failure")
        if kind == "bridge":
            raise BridgeClosed(4001, "turn revoked")
        raise KeyError("surprise")

    ctx = context()
    assert (await broken(ctx, {"kind": "tool"})).to_mcp() == {
        "content": [{"type": "text", "text": "a readable failure"}],
        "isError": True,
    }
    assert (await broken(ctx, {"kind": "bridge"})).text == "bridge connection closed (code 4001, turn revoked)"
    assert (await broken(ctx, {"kind": "other"})).text == "broken: internal error: KeyError: 'surprise'"
    assert ToolResult.ok("fine", {"a": 1}).to_mcp() == {
        "content": [{"type": "text", "text": "fine"}],
        "isError": False,
        "structuredContent": {"a": 1},
    }


class Probe(Arguments):
    n: Count = 7
    p: AbsolutePath = "/"


def test_argument_models():
    assert Probe.parse({"n": 5.0}).n == 5
    assert Probe.parse({"n": None, "unknown": [1]}) == Probe(n=7, p="/")  # null is absent, extras ignored
    for bad in (True, "5", 2.5, -1, float("inf")):
        with pytest.raises(ToolError, match=r"^invalid arguments: n: Input should be"):
            Probe.parse({"n": bad})
    assert Probe.parse({"p": "/a/b/../c"}).p == "/a/c"
    assert Probe.parse({"p": "file:///a%20b/c"}).p == "/a b/c"
    with pytest.raises(ToolError, match=r"^invalid arguments: p: must be an absolute path, got 'a/b'$"):
        Probe.parse({"p": "a/b"})


def test_schemas_are_generated_as_they_were_written():
    assert ReadOutputArguments.input_schema() == {
        "type": "object",
        "properties": {
            "session_id": {"type": "string", "description": "The session_id exec_command returned."},
            "since": {"type": "integer", "minimum": 0, "description": "Return chunks with seq > since."},
            "yield_time_ms": {"type": "integer", "minimum": 0, "description": "Default 1000."},
            "environment_id": {
                "type": "string",
                "description": "Optional: the session's environment name, checked if given.",
            },
        },
        "required": ["session_id"],
        "additionalProperties": False,
    }


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("shell", {"environment_id": "box", "command": []}, "invalid arguments: command: List should have at least 1"),
        ("shell", {"environment_id": "box", "command": ["ls"], "env": {"A": 1}}, "invalid arguments: env.A: Input"),
        ("shell", {"environment_id": "box", "command": ["ls"]}, "no environment named 'box'"),
        ("exec_command", {"command": ["cat"]}, "invalid arguments: environment_id is required"),
        ("write_stdin", {"session_id": "s", "chars": "x"}, "no such session: s"),
        ("read_output", {}, "invalid arguments: session_id is required"),
        ("copy_path", {"source_path": "/a", "destination_path": "/b", "transport": "x"}, "transport: Input should be"),
        ("read_file", {"environment_id": "box", "path": "/x", "limit": -1}, "invalid arguments: limit: Input should"),
    ],
)
async def test_tools_report_bad_input_as_error_results(name: str, arguments: dict[str, Any], message: str):
    tool = get_tool(name)
    assert tool is not None
    result = await tool(context(), arguments)
    assert result.is_error
    assert message in result.text


def output(seq: int, data: bytes, stream: str = "stdout") -> dict[str, Any]:
    return {"processId": "p", "seq": seq, "stream": stream, "chunk": base64.b64encode(data).decode()}


async def test_a_session_takes_events_out_of_seq_order_once_each():
    session = ProcessSession(
        workspace_id="ws", environment="box", exe_id="exe_1", pool=Pool(websocket_connector("ws://x"), no_token)
    )
    deliver = session._on_event  # what the bridge client calls for each pushed event
    deliver("process/output", output(1, b"a"))
    deliver("process/exited", {"processId": "p", "seq": 3, "exitCode": 4})
    deliver("process/output", output(2, b"b", "stderr"))  # after the exited that follows it
    deliver("process/output", output(1, b"a"))  # a duplicate (catch-up overlapping a push)
    deliver("process/closed", {"processId": "p", "seq": 4})
    got = session.output_since(0)
    assert [(c.seq, c.stream, c.data) for c in got.chunks] == [(1, "stdout", b"a"), (2, "stderr", b"b")]
    assert (got.exit_code, got.alive, session.closed) == (4, False, True)
    assert got.to_json()["chunks"][1] == {"stream": "stderr", "data_b64": "Yg==", "seq": 2}


async def test_a_session_buffer_drops_the_oldest_output():
    session = ProcessSession(
        workspace_id="ws",
        environment="box",
        exe_id="exe_1",
        pool=Pool(websocket_connector("ws://x"), no_token),
        max_buffer=10,
    )
    for seq, data in enumerate((b"12345", b"6789", b"abcd", b"efghijklmnop"), start=1):
        session._on_event("process/output", output(seq, data))
    got = session.output_since(0)
    assert [c.data for c in got.chunks] == [b"efghijklmnop"]  # a single chunk over the limit stays
    assert got.lost_bytes == 13
    assert got.to_json()["truncated"] is True
    assert session.output_since(4).chunks == []


def test_the_registry_lists_every_tool_with_a_schema():
    listed = tool_specs()
    names = [spec["name"] for spec in listed]
    assert names == [
        "list_environments",
        "shell",
        "exec_command",
        "write_stdin",
        "read_output",
        "terminate",
        "read_file",
        "write_file",
        "apply_patch",
        "copy_path",
    ]
    assert all(get_tool(name) is not None for name in names)
    assert get_tool("nope") is None
    for spec in listed:
        schema = spec["inputSchema"]
        assert schema["type"] == "object"
        assert set(schema["required"]) <= set(schema["properties"]), spec["name"]
        assert spec["description"]


async def test_an_unreachable_environment_is_an_error_result():
    async def token() -> str:
        return "a-token"

    async def box() -> list[dict[str, Any]]:
        return [{"exe_id": "exe_1", "name": "box"}]

    ctx = ToolContext(
        "ws", Pool(websocket_connector("ws://127.0.0.1:1"), token), NameResolver(box), InMemoryProcessSessions()
    )
    shell = get_tool("shell")
    assert shell is not None
    result = await shell(ctx, {"environment_id": "box", "command": ["ls"]})
    assert result.is_error
    assert result.text.startswith("environment 'box' unavailable: cannot connect to the gateway")
