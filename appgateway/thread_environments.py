"""Threads that codex hands back without environments, and the turn that gives them some.

Measured on 0.171.0 (``docs/app-gateway.md``): ``thread/resume`` of a thread codex stored with an
environment that no longer exists (``local``, from before the app-server lost its local
environment) answers ``environments: []``, and so does every ``thread/fork``; both ignore an
``environments`` they are given. Their tools would have nowhere to run. A ``turn/start`` that names
``environments`` sets them for the thread, for that turn and the later ones. So, per client
connection: the answers to its ``thread/resume`` and ``thread/fork`` requests are watched, and the
next ``turn/start`` on a thread that came back with none, naming none itself, gets the workspace's
default selection (``environments.default_selection``). A client that names environments keeps
its choice.

``ThreadsWithoutEnvironments`` is pure and bounded (``LIMIT`` requests and threads remembered);
the TUI proxy keeps one per connection, the broker checks its own ``thread/resume`` answers with
``has_no_environments``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Final

from appgateway.rpc_filter import Frame, decode_object, request_named

WATCHED: Final = ("thread/resume", "thread/fork")
LIMIT: Final = 256


def has_no_environments(result: Any) -> str | None:
    """The thread id of a ``thread/resume``/``thread/fork`` result whose thread has no environment, else None."""
    thread = result.get("thread") if isinstance(result, dict) else None
    if not isinstance(thread, dict) or not isinstance(thread.get("id"), str):
        return None
    return thread["id"] if not thread.get("environments") else None


class ThreadsWithoutEnvironments:
    """One client connection's threads that came back from codex with no environment."""

    def __init__(self) -> None:
        self._asked: OrderedDict[str, None] = OrderedDict()  # ids of its resume/fork requests, as JSON
        self._without: OrderedDict[str, None] = OrderedDict()  # thread ids

    def client_frame(self, frame: Frame) -> None:
        """Note a ``thread/resume`` or ``thread/fork`` request on its way to codex."""
        message = decode_object(frame, '"thread/')
        if message is None or message.get("method") not in WATCHED or message.get("id") is None:
            return
        self._remember(self._asked, json.dumps(message["id"]))

    def server_frame(self, frame: Frame) -> None:
        """Read codex's answer to a noted request (any other frame passes at the cost of a check)."""
        if not self._asked:
            return
        message = decode_object(frame, '"thread"')
        if message is None or "method" in message or "id" not in message:
            return
        request_id = json.dumps(message["id"])
        if request_id not in self._asked:
            return
        del self._asked[request_id]
        thread_id = has_no_environments(message.get("result"))
        if thread_id is not None:
            self._remember(self._without, thread_id)

    def turn_needing_environments(self, frame: Frame) -> dict[str, Any] | None:
        """A ``turn/start`` request (decoded) on a thread that came back with none and that names
        none itself. Any ``turn/start`` on such a thread gives it environments: it is then forgotten."""
        if not self._without:
            return None
        message = request_named(frame, "turn/start")
        if message is None:
            return None
        params = message.get("params")
        thread_id = params.get("threadId") if isinstance(params, dict) else None
        if not isinstance(params, dict) or not isinstance(thread_id, str) or thread_id not in self._without:
            return None
        del self._without[thread_id]  # this turn gives it environments, its own or the default ones
        return message if params.get("environments") is None else None

    @staticmethod
    def _remember(entries: OrderedDict[str, None], key: str) -> None:
        entries[key] = None
        entries.move_to_end(key)
        while len(entries) > LIMIT:
            entries.popitem(last=False)
