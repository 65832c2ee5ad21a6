"""``appgateway.rpc_filter``: pure frame inspection (no I/O, no database)."""

from __future__ import annotations

import json

import pytest

from appgateway import rpc_filter
from appgateway.rpc_filter import FORWARD, approval_answer, inspect_client_frame

# Every local-IO request method of codex app-server 0.169.0 (stable and experimental schema).
LOCAL_IO_METHODS = [
    "thread/shellCommand",
    "command/exec",
    "command/exec/write",
    "command/exec/terminate",
    "command/exec/resize",
    "fs/readFile",
    "fs/writeFile",
    "fs/createDirectory",
    "fs/getMetadata",
    "fs/readDirectory",
    "fs/remove",
    "fs/copy",
    "fs/watch",
    "fs/unwatch",
    "process/spawn",
    "process/writeStdin",
    "process/kill",
    "process/resizePty",
    "fuzzyFileSearch",
    "fuzzyFileSearch/sessionStart",
]
# Methods that look related but must pass (TUI startup traffic, codex-wire §C.8).
PASSING_METHODS = [
    "initialize",
    "thread/start",
    "turn/start",
    "thread/backgroundTerminals/list",
    "command/execute",  # not command/exec nor under command/exec/
    "commandexec",
    "config/read",
    "account/bedrock/checkGovCloudRequirements",
    "some/futureMethod",
]


@pytest.mark.parametrize("method", LOCAL_IO_METHODS)
def test_local_io_request_is_refused_with_an_error_naming_the_reason(method):
    verdict = inspect_client_frame(json.dumps({"id": 7, "method": method, "params": {"path": "/etc/passwd"}}))
    assert not verdict.forward
    assert verdict.reply is not None
    reply = json.loads(verdict.reply)
    assert reply["id"] == 7
    assert "result" not in reply
    assert reply["error"]["code"] == -32601
    message = reply["error"]["message"]
    assert method in message
    assert "inside the gateway" in message
    assert "executor" in message
    assert (verdict.method, verdict.refusal) == (method, "local IO")


@pytest.mark.parametrize("method", PASSING_METHODS)
def test_other_methods_pass_through(method):
    assert inspect_client_frame(json.dumps({"id": 1, "method": method, "params": {}})) == FORWARD


@pytest.mark.parametrize("request_id", ["tui-config-read-3f1c", 0, -1, 2**63])
def test_reply_keeps_the_request_id_and_its_type(request_id):
    verdict = inspect_client_frame(json.dumps({"id": request_id, "method": "fs/readFile"}))
    assert verdict.reply is not None
    assert json.loads(verdict.reply)["id"] == request_id


@pytest.mark.parametrize(
    "frame",
    [
        '{"method":"fs/readFile","params":{"path":"/etc/passwd"}}',
        '{"id":null,"method":"command/exec","params":{}}',
    ],
)
def test_blocked_notification_or_null_id_is_dropped_without_reply(frame):
    verdict = inspect_client_frame(frame)
    assert (verdict.forward, verdict.reply, verdict.refusal) == (False, None, "local IO")
    assert verdict.method in ("fs/readFile", "command/exec")


def test_escaped_method_name_is_still_recognised():
    # The app-server decodes JSON escapes (it served "fs\/readFile" when probed).
    verdict = inspect_client_frame('{"id":3,"method":"fs\\/read\\u0046ile","params":{}}')
    assert not verdict.forward
    assert verdict.reply is not None


def test_binary_frames_are_inspected_too():
    verdict = inspect_client_frame(json.dumps({"id": 4, "method": "process/spawn"}).encode())
    assert not verdict.forward
    assert verdict.reply is not None
    assert json.loads(verdict.reply)["id"] == 4
    assert inspect_client_frame(b'{"id":5,"method":"turn/start"}') == FORWARD


@pytest.mark.parametrize("order", [("fs/readFile", "config/read"), ("config/read", "fs/readFile")])
def test_a_repeated_method_key_is_refused_whichever_value_the_server_would_read(order):
    first, second = order
    verdict = inspect_client_frame(f'{{"id":9,"method":"{first}","method":"{second}"}}')
    assert not verdict.forward
    assert verdict.reply is not None
    assert "fs/readFile" in json.loads(verdict.reply)["error"]["message"]


def test_a_batch_with_a_blocked_request_is_refused_whole():
    frame = json.dumps(
        [
            {"id": 1, "method": "config/read"},
            {"id": 2, "method": "fs/readFile"},
            {"method": "command/exec"},
            {"id": "x", "method": "thread/shellCommand"},
        ]
    )
    verdict = inspect_client_frame(frame)
    assert not verdict.forward
    assert verdict.reply is not None
    assert [reply["id"] for reply in json.loads(verdict.reply)] == [2, "x"]
    assert verdict.method == "fs/readFile, command/exec, thread/shellCommand"


def test_a_batch_of_blocked_notifications_is_dropped_silently():
    assert inspect_client_frame('[{"method":"fs/remove"}]') == rpc_filter.ClientVerdict(
        forward=False, method="fs/remove", refusal="local IO"
    )


def test_a_batch_without_blocked_requests_passes():
    assert inspect_client_frame('[{"id":1,"method":"config/read"},{"id":2,"result":{}}]') == FORWARD


@pytest.mark.parametrize(
    "frame",
    [
        '{"id":1,"result":{"decision":"accept"}}',  # the client's answer to a server request
        '{"method":"initialized"}',
        '{"id":1,"method":["fs/readFile"]}',  # not a string: the server rejects it
        '{"id":1,"params":{"method":"fs/readFile"}}',  # nested, not the request's method
        "not json at all",
        "[" * 100_000,  # deeper than the decoder's recursion limit
        "",
        b"\xff\xfe\x00",
        "42",
    ],
)
def test_frames_that_are_not_blocked_requests_pass_verbatim(frame):
    assert inspect_client_frame(frame) == FORWARD


# --- approval answers --------------------------------------------------------------------------

APPROVAL_CASES = [
    ("item/commandExecution/requestApproval", {"decision": "accept"}),
    ("item/fileChange/requestApproval", {"decision": "accept"}),
    ("item/permissions/requestApproval", {"permissions": {}}),
    ("item/tool/requestUserInput", {"answers": {}}),
    ("mcpServer/elicitation/request", {"action": "accept", "content": None, "_meta": None}),
]


@pytest.mark.parametrize(("method", "result"), APPROVAL_CASES)
def test_approval_requests_are_answered_in_accept_mode(method, result):
    frame = json.dumps({"method": method, "id": 0, "params": {"threadId": "t", "turnId": "u", "itemId": "call_1"}})
    answer = approval_answer(frame, "accept")
    assert answer is not None
    assert json.loads(answer) == {"id": 0, "result": result}


@pytest.mark.parametrize(("method", "result"), APPROVAL_CASES)
def test_approval_requests_are_forwarded_in_forward_mode(method, result):
    assert approval_answer(json.dumps({"method": method, "id": 0, "params": {}}), "forward") is None


def test_answer_keeps_a_string_id():
    answer = approval_answer('{"method":"item/fileChange/requestApproval","id":"req-9","params":{}}', "accept")
    assert answer is not None
    assert json.loads(answer)["id"] == "req-9"


def test_binary_approval_request_is_answered():
    assert approval_answer(b'{"method":"item/tool/requestUserInput","id":3,"params":{}}', "accept") is not None


@pytest.mark.parametrize(
    "frame",
    [
        # other server requests go to the client (the TUI answers its dynamic tools)
        '{"method":"item/tool/call","id":1,"params":{}}',
        '{"method":"account/chatgptAuthTokens/refresh","id":2,"params":{}}',
        # a notification and an id-less/null-id frame are not requests to answer
        '{"method":"item/commandExecution/requestApproval","params":{}}',
        '{"method":"item/commandExecution/requestApproval","id":null,"params":{}}',
        '{"method":"serverRequest/resolved","params":{"threadId":"t","requestId":0}}',
        # the name inside content, not as the method
        '{"method":"item/agentMessage/delta","params":{"delta":"item/tool/requestUserInput"}}',
        '{"id":5,"result":{"text":"mcpServer/elicitation/request"}}',
        '{"method":["item/tool/requestUserInput"],"id":1}',
        "item/tool/requestUserInput",
    ],
)
def test_everything_else_from_the_server_is_forwarded(frame):
    assert approval_answer(frame, "accept") is None


def test_approval_mode_names():
    assert rpc_filter.approval_mode("accept") == "accept"
    assert rpc_filter.approval_mode("forward") == "forward"
    with pytest.raises(ValueError, match="decline"):
        rpc_filter.approval_mode("decline")


@pytest.mark.parametrize(
    "message",
    [
        {"id": 5, "method": "thread/start", "params": {"config": {"features": {"shell_tool": True}}}},
        {"id": 5, "method": "thread/start", "params": {"config": {"features.unified_exec": True}}},
        {"id": 5, "method": "thread/resume", "params": {"threadId": "t", "config": {"mcp_servers": {"x": {}}}}},
        {"id": 5, "method": "thread/fork", "params": {"config": {"model_providers": {"evil": {}}}}},
        {"id": 5, "method": "config/value/write", "params": {"keyPath": "features.shell_tool", "value": True}},
        {"id": 5, "method": "config/batchWrite", "params": {"edits": [{"keyPath": "notify", "value": ["sh"]}]}},
        {"id": 5, "method": "config/value/write", "params": {"keyPath": "", "value": {"hooks": {}}}},
        {"id": 5, "method": "config/value/write", "params": {"keyPath": [{"features": {}}], "value": True}},
        {"id": 5, "method": "modelProvider/default/set", "params": {"providerId": "ollama"}},
        # Turning things off passes only as such: not mixed with turning on, nor a server's other keys.
        {"id": 5, "method": "thread/start", "params": {"config": {"features": {"a": False, "b": True}}}},
        {"id": 5, "method": "thread/start", "params": {"config": {"features.a": 0}}},
        {
            "id": 5,
            "method": "thread/start",
            "params": {"config": {"mcp_servers": {"x": {"enabled": False, "url": "u"}}}},
        },
        {"id": 5, "method": "thread/start", "params": {"config": {"mcp_servers.x.command": "sh"}}},
        {"id": 5, "method": "thread/start", "params": {"config": {"mcp_servers.x.enabled": True}}},
        {"id": 5, "method": "config/value/write", "params": {"keyPath": "features.shell_tool", "value": False}},
    ],
)
def test_config_overrides_that_would_reopen_the_gateway_are_refused(message):
    verdict = inspect_client_frame(json.dumps(message))
    assert not verdict.forward
    assert verdict.reply is not None
    reply = json.loads(verdict.reply)
    assert reply["id"] == 5
    assert reply["error"]["code"] == -32601
    assert "may not override" in reply["error"]["message"]
    assert (verdict.method, verdict.refusal) == (message["method"], "protected config")


@pytest.mark.parametrize(
    "message",
    [
        {"id": 1, "method": "thread/start", "params": {"config": {"model": "gpt-x", "model_reasoning_effort": "high"}}},
        {"id": 1, "method": "thread/start", "params": {"cwd": "/tmp"}},
        {"id": 1, "method": "config/value/write", "params": {"keyPath": "model", "value": "gpt-x"}},
        {"id": 1, "method": "config/read", "params": {"keyPath": "features"}},
        # The TUI's thread-title thread (codex 0.171.0) only turns features and MCP servers off.
        {
            "id": 1,
            "method": "thread/start",
            "params": {
                "config": {
                    "features.shell_tool": False,
                    "features": {"apps": False},
                    "mcp_servers": {"agentserver": {"enabled": False}},
                    "mcp_servers.other.enabled": False,
                    "mcp_servers.third": {"enabled": False},
                    "web_search": "disabled",
                },
                "threadSource": "thread_title",
            },
        },
    ],
)
def test_harmless_config_passes(message):
    assert inspect_client_frame(json.dumps(message)).forward


# --- codex's local environment (the gateway host) cannot be selected ---------------------------


@pytest.mark.parametrize(
    "method", ["thread/start", "thread/resume", "thread/fork", "turn/start", "thread/settings/update"]
)
def test_a_request_selecting_the_local_environment_is_refused(method):
    environments = [{"environmentId": "box", "cwd": "/w"}, {"environmentId": "local", "cwd": "/"}]
    frame = json.dumps({"id": 9, "method": method, "params": {"threadId": "t", "environments": environments}})
    verdict = inspect_client_frame(frame)
    assert not verdict.forward
    assert verdict.refusal == "local environment"
    reply = json.loads(verdict.reply or "")
    assert reply["id"] == 9
    assert reply["error"]["code"] == rpc_filter.METHOD_DISABLED
    assert "'local'" in reply["error"]["message"]


@pytest.mark.parametrize(
    "params",
    [
        {"environments": [{"environmentId": "box", "cwd": "/w"}]},
        {"environments": []},
        {"environments": None},
        {},
        {"environments": [{"environmentId": "localhost", "cwd": "/"}]},
    ],
)
def test_requests_selecting_other_environments_pass(params):
    assert inspect_client_frame(json.dumps({"id": 1, "method": "thread/start", "params": params})) == FORWARD


def test_other_methods_may_mention_the_local_environment():
    frame = json.dumps({"id": 1, "method": "thread/list", "params": {"environments": [{"environmentId": "local"}]}})
    assert inspect_client_frame(frame) == FORWARD


def test_only_codexs_bubblewrap_config_warning_is_held_back():
    warning = {
        "method": "configWarning",
        "params": {"summary": rpc_filter.FALSE_SANDBOX_WARNING + ". Install bubblewrap ...", "details": None},
    }
    assert rpc_filter.false_sandbox_warning(json.dumps(warning))
    others = [
        {**warning, "params": {"summary": "Some other warning", "details": None}},
        {**warning, "method": "item/agentMessage/delta"},  # the words in a model's message
        {**warning, "id": 3},
        {"method": "item/agentMessage/delta", "params": {"delta": rpc_filter.FALSE_SANDBOX_WARNING}},
    ]
    for frame in others:
        assert not rpc_filter.false_sandbox_warning(json.dumps(frame)), frame
    assert not rpc_filter.false_sandbox_warning(json.dumps(warning).encode())


def test_a_key_path_that_starts_with_an_object_is_judged_not_crashed_on():
    # A list key path is read by its first element; an object there (unhashable) once raised
    # TypeError in the TUI consumer's receive. Nothing protected is named: codex answers it.
    frame = json.dumps({"id": 7, "method": "config/value/write", "params": {"keyPath": [{}], "value": 1}})
    verdict = inspect_client_frame(frame)
    assert verdict.forward
    assert verdict.reply is None
