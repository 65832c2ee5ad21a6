"""The pure parts of ``appgateway.environments``: which environment a new thread gets, how the
client's frames are rewritten for it, and what is sent to register an executor."""

from __future__ import annotations

import json

import pytest

from appgateway import environments, spawn_builder
from appgateway.environments import Binding
from executors import captoken

BOX = Binding(name="box", exe_id="exe_1", is_default=True)
OTHER = Binding(name="other", exe_id="exe_2", is_default=False)


def test_environment_add_reaches_the_bridge_with_the_token():
    params = environments.environment_add_params(BOX, "ws://127.0.0.1:6060/", "tok")
    assert params == {
        "environmentId": "box",
        "execServerUrl": "ws://127.0.0.1:6060/bridge/exe_1",
        "authBearerToken": "tok",
    }


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("file:///home/u/work", "/home/u/work"),
        ("file:///a%20b", "/a b"),
        ("file://localhost/srv", "/srv"),
        ("file://other-host/srv", None),
        ("http://x/y", None),
        ("/plain", None),
        (None, None),
        (7, None),
    ],
)
def test_path_from_file_uri(uri, path):
    assert environments.path_from_file_uri(uri) == path


LATE = Binding(name="late", exe_id="exe_3", is_default=False)


def test_a_thread_gets_the_default_binding_first_then_the_other_registered_ones():
    assert environments.thread_bindings([OTHER, BOX, LATE], {"box", "other"}) == [BOX, OTHER]
    assert environments.thread_bindings([OTHER, BOX, LATE], {"box", "other", "late"}) == [BOX, OTHER, LATE]


def test_without_a_registered_default_a_thread_gets_the_accepted_bindings_oldest_first():
    # The default refused by codex (a name it would refuse the whole thread for), or none flagged:
    # the model still has somewhere to run, never the gateway host.
    assert environments.thread_bindings([OTHER, BOX], {"other"}) == [OTHER]
    assert environments.thread_bindings([OTHER, LATE], {"other", "late"}) == [OTHER, LATE]
    assert environments.thread_bindings([OTHER, BOX], set()) == []
    assert environments.thread_bindings([], {"box"}) == []


async def test_the_registered_names_are_stored(store_backend):
    await environments.save_registered("ws-reg", ["box", "other"])
    assert await environments.load_registered("ws-reg") == ["box", "other"]
    assert await environments.load_registered("ws-none") == []


def test_selection():
    cwds = {"exe_1": "/home/box", "exe_2": None}
    assert environments.selection([BOX, OTHER], cwds) == [
        {"environmentId": "box", "cwd": "/home/box"},
        {"environmentId": "other", "cwd": "/"},  # never seen: a directory every executor has
    ]
    # The client's cwd is the default executor's; the others keep their own.
    assert environments.selection([BOX, OTHER], {"exe_2": "/srv"}, "/w") == [
        {"environmentId": "box", "cwd": "/w"},
        {"environmentId": "other", "cwd": "/srv"},
    ]
    assert environments.selection([], cwds, "/w") == []


@pytest.mark.parametrize(
    ("params", "cwd"),
    [
        (None, None),
        ({}, None),
        ({"environments": None}, None),
        ({"cwd": "/w", "model": "m"}, "/w"),
        ({"cwd": "w"}, None),
    ],
)
def test_a_thread_start_without_environments_is_rewritten(params, cwd):
    request: dict[str, object] = {"id": "startup-thread-start-1", "method": "thread/start"}
    if params is not None:
        request["params"] = params
    found = environments.thread_start_environments(json.dumps(request))
    assert found is not None
    message, client_cwd = found
    assert client_cwd == cwd
    rewritten = json.loads(environments.with_environments(message, [{"environmentId": "box", "cwd": "/x"}]))
    assert rewritten["id"] == "startup-thread-start-1"
    assert rewritten["params"] == {**(params or {}), "environments": [{"environmentId": "box", "cwd": "/x"}]}


@pytest.mark.parametrize(
    "frame",
    [
        json.dumps({"id": 1, "method": "thread/start", "params": {"environments": []}}),
        json.dumps({"id": 1, "method": "thread/start", "params": {"environments": [{"environmentId": "b"}]}}),
        json.dumps({"method": "thread/start", "params": {}}),  # a notification: codex ignores it
        json.dumps({"id": 1, "method": "turn/start", "params": {"threadId": "t"}}),
        json.dumps({"id": 1, "method": "thread/start", "params": "x"}),
        json.dumps({"id": 1, "result": {"note": "thread/start"}}),
        b'{"id": 1, "method": "thread/start"}',
        "not json thread/start",
    ],
)
def test_other_frames_are_not_rewritten(frame):
    assert environments.thread_start_environments(frame) is None


def test_initialize_is_made_to_declare_the_experimental_api():
    frame = json.dumps(
        {"id": "initialize", "method": "initialize", "params": {"clientInfo": {"name": "t"}, "capabilities": {"x": 1}}}
    )
    message = environments.initialize_without_experimental_api(frame)
    assert message is not None
    rewritten = json.loads(environments.with_experimental_api(message))
    assert rewritten == {
        "id": "initialize",
        "method": "initialize",
        "params": {"clientInfo": {"name": "t"}, "capabilities": {"x": 1, "experimentalApi": True}},
    }
    no_capabilities = environments.initialize_without_experimental_api(
        json.dumps({"id": 0, "method": "initialize", "params": {"clientInfo": {"name": "t"}}})
    )
    assert no_capabilities is not None
    assert json.loads(environments.with_experimental_api(no_capabilities))["params"]["capabilities"] == {
        "experimentalApi": True
    }


@pytest.mark.parametrize(
    "frame",
    [
        json.dumps({"id": 0, "method": "initialize", "params": {"capabilities": {"experimentalApi": True}}}),
        json.dumps({"method": "initialized"}),
        json.dumps({"id": 0, "method": "initialize"}),
        json.dumps({"id": 1, "method": "thread/start", "params": {"note": "initialize"}}),
    ],
)
def test_initialize_that_needs_nothing_is_left_alone(frame):
    assert environments.initialize_without_experimental_api(frame) is None


async def test_rewrite_leaves_unrelated_frames_as_they_are():
    frame = json.dumps({"id": 3, "method": "turn/start", "params": {"threadId": "t"}})
    assert await environments.rewrite_client_frame("ws-none", frame) is frame


def test_an_environment_token_is_the_spawns_turn_for_one_executor(settings):
    turn, workspace_token = spawn_builder.mint_turn("ws-1", now=1000.0)
    token = spawn_builder.environment_token("ws-1", turn, "exe_1", now=1000.0)
    payload = captoken.verify(token, settings.CXG_CAPTOKEN_HMAC_SECRET, now=1000.0)
    assert payload.turn_id == turn.turn_id  # revoking the spawn's turn stops the environment too
    assert payload.workspace_id == "ws-1"
    assert payload.exe_ids == ("exe_1",)
    assert payload.exp == turn.exp
    assert token != workspace_token


def test_a_turn_start_without_environments_loses_its_cwd():
    params = {"threadId": "t", "input": [], "cwd": "/home/me", "runtimeWorkspaceRoots": ["/home/me"], "model": "m"}
    message = environments.turn_start_without_environments(
        json.dumps({"id": 6, "method": "turn/start", "params": params})
    )
    assert message is not None
    rewritten = json.loads(environments.without_turn_placement(message))
    assert rewritten == {"id": 6, "method": "turn/start", "params": {"threadId": "t", "input": [], "model": "m"}}


@pytest.mark.parametrize(
    "params",
    [
        {"threadId": "t", "input": []},
        {"threadId": "t", "cwd": None, "runtimeWorkspaceRoots": None},
        {"threadId": "t", "cwd": "/w", "environments": [{"environmentId": "box", "cwd": "/w"}]},
        {"threadId": "t", "cwd": "/w", "environments": []},
    ],
)
def test_a_turn_start_that_keeps_the_threads_environments_is_left_alone(params):
    frame = json.dumps({"id": 6, "method": "turn/start", "params": params})
    assert environments.turn_start_without_environments(frame) is None


async def test_the_tui_turn_start_is_rewritten_without_its_cwd():
    frame = json.dumps({"id": 6, "method": "turn/start", "params": {"threadId": "t", "cwd": "/laptop"}})
    rewritten = await environments.rewrite_client_frame("ws-none", frame)
    assert json.loads(rewritten) == {"id": 6, "method": "turn/start", "params": {"threadId": "t"}}
