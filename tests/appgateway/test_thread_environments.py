"""Which threads codex handed back without environments, per client connection, and which
``turn/start`` gives them some (``appgateway.thread_environments``)."""

from __future__ import annotations

import json
from typing import Any

from appgateway import thread_environments
from appgateway.thread_environments import ThreadsWithoutEnvironments


def request(request_id: Any, method: str, **params: Any) -> str:
    return json.dumps({"id": request_id, "method": method, "params": params})


def answer(request_id: Any, thread_id: str, environments: Any) -> str:
    return json.dumps({"id": request_id, "result": {"thread": {"id": thread_id, "environments": environments}}})


def turn(thread_id: str, **params: Any) -> str:
    return request(9, "turn/start", threadId=thread_id, input=[], **params)


BOX = [{"environmentId": "box", "cwd": "/w"}]


def test_a_resumed_or_forked_thread_without_environments_gets_them_on_its_next_turn_only():
    threads = ThreadsWithoutEnvironments()
    threads.client_frame(request(1, "thread/resume", threadId="t-old"))
    threads.client_frame(request("f", "thread/fork", threadId="t-old"))
    threads.server_frame(answer(1, "t-old", []))
    threads.server_frame(answer("f", "t-fork", None))
    assert threads.turn_needing_environments(turn("t-old")) == json.loads(turn("t-old"))
    assert threads.turn_needing_environments(turn("t-old")) is None  # that turn gave it some
    assert threads.turn_needing_environments(turn("t-fork", environments=BOX)) is None  # names its own
    assert threads.turn_needing_environments(turn("t-fork")) is None  # and keeps them


def test_threads_that_came_back_with_environments_or_were_never_asked_for_are_left_alone():
    threads = ThreadsWithoutEnvironments()
    threads.client_frame(request(1, "thread/resume", threadId="t-1"))
    threads.client_frame(request(2, "thread/start"))  # not watched
    threads.server_frame(answer(1, "t-1", BOX))
    threads.server_frame(answer(2, "t-2", []))
    threads.server_frame(answer(3, "t-3", []))  # an answer to nothing it noted
    for thread_id in ("t-1", "t-2", "t-3"):
        assert threads.turn_needing_environments(turn(thread_id)) is None


def test_an_error_answer_or_a_notification_is_not_a_thread():
    threads = ThreadsWithoutEnvironments()
    threads.client_frame(request(1, "thread/resume", threadId="t-1"))
    threads.server_frame(json.dumps({"method": "thread/started", "params": {"thread": {"id": "t-9"}}}))
    threads.server_frame(json.dumps({"id": 1, "error": {"code": -32600, "message": "no thread"}}))
    threads.server_frame(b"binary")
    assert threads.turn_needing_environments(turn("t-1")) is None
    assert threads.turn_needing_environments(turn("t-9")) is None


def test_what_it_remembers_is_bounded():
    threads = ThreadsWithoutEnvironments()
    for n in range(thread_environments.LIMIT + 10):
        threads.client_frame(request(n, "thread/fork", threadId="t"))
        threads.server_frame(answer(n, f"t-{n}", []))
    assert threads.turn_needing_environments(turn("t-0")) is None  # the oldest went first
    assert threads.turn_needing_environments(turn(f"t-{thread_environments.LIMIT + 9}")) is not None


def test_has_no_environments():
    assert thread_environments.has_no_environments({"thread": {"id": "t", "environments": []}}) == "t"
    assert thread_environments.has_no_environments({"thread": {"id": "t"}}) == "t"
    assert thread_environments.has_no_environments({"thread": {"id": "t", "environments": BOX}}) is None
    assert thread_environments.has_no_environments({"thread": {}}) is None
    assert thread_environments.has_no_environments(None) is None
