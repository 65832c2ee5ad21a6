"""A fake agentserver (the control plane) for tests: a real HTTP server on 127.0.0.1.

It runs on its own thread, so sync tests, async tests and gateway subprocesses can all call it.
Every request is recorded (``requests``). Routes are ``(method, path) -> handler`` and tests add
their own with ``route``; ``respond`` queues one-off canned responses in front of a route (an
outage, a slow answer) that are used up in order before its handler answers again.

Built in: ``POST /api/internal/codex/tokens/verify``, which checks ``X-Internal-Secret`` (403
when it is wrong, so a gateway that forgets it fails loudly) and answers 200
``{user_id, workspace_id}`` for tokens added with ``add_token``, 401 ``invalid_token`` otherwise.

    with FakeAgentserver(secret) as agentserver:
        agentserver.add_token("ast_x", user_id="u1", workspace_id="ws1")
        agentserver.respond("POST", VERIFY, FakeResponse(503))       # the next verify fails
        settings.CXG_AGENTSERVER_INTERNAL_URL = agentserver.base_url
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.local_http import LocalHttpServer

VERIFY = "/api/internal/codex/tokens/verify"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # decoded JSON, else the text, else None

    def json(self) -> Any:
        return self.body


@dataclass(frozen=True)
class FakeResponse:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes; None: no body
    delay: float = 0.0  # seconds to wait before answering (timeouts)
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[RecordedRequest], FakeResponse]


class FakeAgentserver:
    def __init__(self, internal_secret: str) -> None:
        self.internal_secret = internal_secret
        self.requests: list[RecordedRequest] = []
        self.tokens: dict[str, dict[str, str]] = {}
        self._routes: dict[tuple[str, str], Handler] = {("POST", VERIFY): self._verify}
        self._queued: defaultdict[tuple[str, str], deque[FakeResponse]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._http: LocalHttpServer | None = None

    # --- programming it ----------------------------------------------------------------------

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Add (or replace) the handler of ``method path`` (exact path, query string ignored)."""
        with self._lock:
            self._routes[(method.upper(), path)] = handler

    def respond(self, method: str, path: str, *responses: FakeResponse) -> None:
        """Answer the next requests to ``method path`` with these, in order, then the route again."""
        with self._lock:
            self._queued[(method.upper(), path)].extend(responses)

    def add_token(self, token: str, *, user_id: str, workspace_id: str) -> None:
        with self._lock:
            self.tokens[token] = {"user_id": user_id, "workspace_id": workspace_id}

    def requests_to(self, path: str, method: str = "POST") -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path and r.method == method.upper()]

    # --- built-in routes ---------------------------------------------------------------------

    def _verify(self, request: RecordedRequest) -> FakeResponse:
        if request.headers.get("x-internal-secret") != self.internal_secret:
            return FakeResponse(403, {"error": "forbidden"})
        token = request.body.get("token") if isinstance(request.body, dict) else None
        with self._lock:
            identity = self.tokens.get(token) if isinstance(token, str) else None
        if identity is None:
            return FakeResponse(401, {"error": "invalid_token"})
        return FakeResponse(200, dict(identity))

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeAgentserver:
        self._http = LocalHttpServer(self._serve, "FakeAgentserver").start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None

    def __enter__(self) -> FakeAgentserver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._http is not None, "FakeAgentserver is not started"
        return self._http.port

    @property
    def base_url(self) -> str:
        """What ``CXG_AGENTSERVER_INTERNAL_URL`` must be."""
        return f"http://127.0.0.1:{self.port}"

    # --- serving -----------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        path = handler.path.split("?", 1)[0]
        request = RecordedRequest(handler.command, path, {k.lower(): v for k, v in handler.headers.items()}, body)
        key = (handler.command, path)
        with self._lock:
            self.requests.append(request)
            queued = self._queued.get(key)
            response = queued.popleft() if queued else None
            route = self._routes.get(key)
        if response is None:
            response = route(request) if route is not None else FakeResponse(404, {"error": "no such route"})
        if response.delay:
            time.sleep(response.delay)
        if isinstance(response.body, bytes):
            payload = response.body
        else:
            payload = b"" if response.body is None else json.dumps(response.body).encode()
        try:
            handler.send_response(response.status)
            for name, value in response.headers.items():
                handler.send_header(name, value)
            if "content-type" not in {name.lower() for name in response.headers}:
                handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)
