"""A fake OpenAI Responses API on 127.0.0.1 for offline codex turns (codex-wire §C.3).

A real HTTP server on its own thread: codex POSTs ``/v1/responses`` and gets a streamed
``text/event-stream`` answer. Each request takes the next scripted ``Reply``, ``FunctionCall`` or ``CustomToolCall``
(``FakeModel.script``), or the default reply once the script is used up; codex's thread-title
requests get a title of their own and are kept apart (``title_requests``). Every other request is
recorded (``requests``) with its path, headers, decoded JSON body and arrival time, so tests can
assert what codex sent (model, the bearer key, tool outputs) and the bench can time tool calls.

    with FakeModel(default_text="hello") as model:
        config.toml: base_url = model.base_url, env_key = <name>, wire_api = "responses"

Usable from sync and async tests alike; ``stop()`` is idempotent.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.local_http import LocalHttpServer


@dataclass(frozen=True)
class Reply:
    """An assistant message with ``text``; completes the turn."""

    text: str


@dataclass(frozen=True)
class FunctionCall:
    """A tool call (``name`` with JSON ``arguments``); codex runs it and POSTs again with the output."""

    name: str
    arguments: dict[str, Any]
    call_id: str = "call_1"
    namespace: str | None = None


@dataclass(frozen=True)
class CustomToolCall:
    """A call of a freeform (``custom``) tool such as codex's ``apply_patch``: raw ``input`` text."""

    name: str
    input: str
    call_id: str = "call_1"


Step = Reply | FunctionCall | CustomToolCall


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float  # time.perf_counter() when the request's headers were in

    def user_texts(self) -> list[str]:
        """The text of every user message in the request's ``input``."""
        texts: list[str] = []
        for item in self.body.get("input", []) if isinstance(self.body, dict) else []:
            if item.get("type") == "message" and item.get("role") == "user":
                texts.extend(part.get("text", "") for part in item.get("content", []) if isinstance(part, dict))
        return texts


# How codex 0.171.0 asks for a new thread's title (a side request the TUI makes with its first
# message, in parallel with the turn): answered apart, so it takes no scripted step.
TITLE_PROMPT = b"Generate a concise, single-line task title"
TITLE = "A thread title"


@dataclass
class FakeModel:
    default_text: str = "Hello from the fake model"
    model: str = "fake-model"
    requests: list[RecordedRequest] = field(default_factory=list)
    title_requests: list[RecordedRequest] = field(default_factory=list)
    _script: deque[Step] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _http: LocalHttpServer | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeModel:
        self._http = LocalHttpServer(self._handle, "FakeModel").start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None

    def __enter__(self) -> FakeModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._http is not None, "FakeModel is not started"
        return self._http.port

    @property
    def base_url(self) -> str:
        """What config.toml's ``base_url`` must be (codex appends ``/responses``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # --- scripting --------------------------------------------------------------------------

    def script(self, *steps: Step) -> None:
        """Queue answers for the next requests, in order."""
        with self._lock:
            self._script.extend(steps)

    def responses_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/responses")]

    # --- serving ----------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        received_at = time.perf_counter()
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        request = RecordedRequest(
            handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}, body, received_at
        )
        with self._lock:
            step: Step | None = None
            if TITLE_PROMPT in raw:
                self.title_requests.append(request)
                step = Reply(TITLE)
            else:
                self.requests.append(request)
                if handler.command == "POST" and handler.path.endswith("/responses"):
                    step = self._script.popleft() if self._script else Reply(self.default_text)
        if step is None:
            payload = b'{"error":"not found"}'
            handler.send_response(404)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Connection", "close")
        handler.end_headers()
        for event_type, data in self._events(step):
            handler.wfile.write(f"event: {event_type}\ndata: {json.dumps({'type': event_type, **data})}\n\n".encode())
            handler.wfile.flush()
        handler.close_connection = True

    def _events(self, step: Step) -> list[tuple[str, dict[str, Any]]]:
        number = next(self._ids)
        response_id = f"resp_{number}"
        item: dict[str, Any]
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "response.created",
                {"response": {"id": response_id, "object": "response", "status": "in_progress", "model": self.model}},
            )
        ]
        if isinstance(step, Reply):
            item_id = f"msg_{number}"
            item = {
                "type": "message",
                "id": item_id,
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": step.text, "annotations": []}],
            }
            events += [
                (
                    "response.output_item.added",
                    {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
                ),
                (
                    "response.output_text.delta",
                    {"item_id": item_id, "output_index": 0, "content_index": 0, "delta": step.text},
                ),
            ]
        elif isinstance(step, CustomToolCall):
            item = {
                "type": "custom_tool_call",
                "id": f"ctc_{number}",
                "call_id": step.call_id,
                "name": step.name,
                "input": step.input,
                "status": "completed",
            }
            events.append(("response.output_item.added", {"output_index": 0, "item": item}))
        else:
            item = {
                "type": "function_call",
                "id": f"fc_{number}",
                "call_id": step.call_id,
                "name": step.name,
                "arguments": json.dumps(step.arguments),
                "status": "completed",
            }
            if step.namespace is not None:
                item["namespace"] = step.namespace
            events.append(("response.output_item.added", {"output_index": 0, "item": item}))
        usage = {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 15,
        }
        events += [
            ("response.output_item.done", {"output_index": 0, "item": item}),
            (
                "response.completed",
                {"response": {"id": response_id, "status": "completed", "output": [item], "usage": usage}},
            ),
        ]
        return events
