"""Process sessions: an ``exec_command`` process whose output is collected while it runs.

A session subscribes to the process's pushed events (exec-server keeps only ~1 MiB of output per
process, so pulling later could lose some) and keeps its own bounded buffer: once more than
``max_buffer`` bytes are held, the oldest chunks are dropped and counted in ``lost_bytes``.
Chunks get the session's own sequence numbers, starting at 1.

If the bridge closes, the session re-attaches on its next use: the pool resumes the virtual
session when the gateway still has it, and the output pushed meanwhile is read back with
``process/read`` from the last event seen.
"""

# ruff: noqa: ASYNC109 - waits take the caller's budget

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.client import BridgeClient, BridgeClosed, BridgeRPCError, Subscription
from bridge.client_pool import Pool

JSON = dict[str, Any]
DEFAULT_MAX_BUFFER = 1024 * 1024
CATCH_UP_BYTES = 1024 * 1024
MAX_SEQ_GAPS = 1024
DEFAULT_MAX_IDLE = 30 * 60.0


@dataclass(frozen=True)
class OutputChunk:
    seq: int
    stream: str
    data: bytes


@dataclass(frozen=True)
class SessionOutput:
    """What a session holds after some seq, and its state."""

    chunks: list[OutputChunk]
    exit_code: int | None
    alive: bool
    lost_bytes: int
    next_seq: int
    failure: str | None

    def to_json(self) -> JSON:
        """The SDK's ``processes/{sid}/output`` shape."""
        body: JSON = {
            "chunks": [
                {"stream": c.stream, "data_b64": base64.b64encode(c.data).decode(), "seq": c.seq} for c in self.chunks
            ],
            "exit_code": self.exit_code,
            "session_alive": self.alive,
            "truncated": self.lost_bytes > 0,
            "lost_bytes": self.lost_bytes,
            "next_seq": self.next_seq,
        }
        if self.failure:
            body["failure"] = self.failure
        return body


class ProcessSession:
    def __init__(
        self,
        *,
        workspace_id: str,
        environment: str,
        exe_id: str,
        pool: Pool,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_id = str(uuid.uuid4())
        self.workspace_id = workspace_id
        self.environment = environment
        self.exe_id = exe_id
        self.process_id = f"exec-{self.session_id}"
        self.pool = pool
        self.max_buffer = max_buffer
        self._clock = clock
        self.last_activity = clock()
        self.exit_code: int | None = None
        self.closed = False  # process/closed: no more output will come
        self.failure: str | None = None
        self.lost_bytes = 0
        self.read_cursor = 0  # where read_output continues when no ``since`` is given
        self._chunks: deque[OutputChunk] = deque()
        self._buffered = 0
        self._next_seq = 1
        # exec-server event seqs applied: all up to ``_seen_upto``, and these above it. Events can
        # arrive out of seq order (an output after the exited that follows it), so a high-water
        # mark alone would drop them.
        self._seen_upto = 0
        self._seen_above: set[int] = set()
        self._client: BridgeClient | None = None
        self._subscription: Subscription | None = None
        self._held: list[tuple[str, JSON]] | None = None  # events pushed during a catch-up
        self._attach_lock = asyncio.Lock()
        self._changed = asyncio.Event()

    @property
    def alive(self) -> bool:
        """More output may come: until ``process/closed``, which can follow the exit (the last
        output may arrive after ``process/exited``)."""
        return not self.closed and self.failure is None

    def touch(self) -> None:
        self.last_activity = self._clock()

    # --- attachment -------------------------------------------------------------------------------

    def attach(self, client: BridgeClient) -> None:
        """Start listening on ``client``; call before ``process/start`` (and on re-attaching)."""
        self._subscription = client.subscribe(self._on_event, process_id=self.process_id, on_close=self._on_close)
        self._client = client

    async def client(self) -> BridgeClient:
        """The bridge the process lives on, re-attaching (and catching up) after a close."""
        client = self._client
        if client is not None and not client.closed:
            return client
        async with self._attach_lock:
            if self._client is not None and not self._client.closed:
                return self._client
            client = await self.pool.get(self.exe_id)
            self._held = []
            try:
                self.attach(client)
                await self._catch_up(client)
            finally:
                held, self._held = self._held, None
                for method, params in sorted(held, key=lambda event: int(event[1].get("seq", 0))):
                    self._apply(method, params)
            return client

    async def _catch_up(self, client: BridgeClient) -> None:
        after = self._seen_upto
        while True:
            params = {"processId": self.process_id, "afterSeq": after, "maxBytes": CATCH_UP_BYTES}
            try:
                result = await client.call("process/read", params, idempotent=True)
            except BridgeRPCError as error:
                # The session did not survive (gateway restarted, executor session expired).
                self.failure = f"process lost: {error.message}"
                self._wake()
                return
            chunks = [chunk for chunk in result.get("chunks") or [] if isinstance(chunk.get("seq"), int)]
            for chunk in chunks:
                self._apply("process/output", {**chunk, "processId": self.process_id})
            if chunks:
                after = max(chunk["seq"] for chunk in chunks)
                continue  # the exit status is only final with the last page
            if result.get("exited"):
                self._apply("process/exited", {"exitCode": result.get("exitCode")})
            if result.get("closed"):
                self._apply("process/closed", {})
            return

    def _on_event(self, method: str, params: JSON) -> None:
        if self._held is not None:
            self._held.append((method, params))
        else:
            self._apply(method, params)

    def _apply(self, method: str, params: JSON) -> None:
        seq = params.get("seq")
        if isinstance(seq, int) and not self._first_sighting(seq):
            return  # a catch-up read overlapping pushed events
        if method == "process/output":
            self._append(str(params.get("stream", "stdout")), base64.b64decode(params.get("chunk") or ""))
        elif method == "process/exited":
            code = params.get("exitCode")
            self.exit_code = code if isinstance(code, int) else -1
        elif method == "process/closed":
            self.closed = True
        else:
            return
        self.touch()
        self._wake()

    def _first_sighting(self, seq: int) -> bool:
        if seq <= self._seen_upto or seq in self._seen_above:
            return False
        self._seen_above.add(seq)
        if len(self._seen_above) > MAX_SEQ_GAPS:
            # Events that never came (lost beyond exec-server's retention) stop holding it back.
            self._seen_upto = min(self._seen_above) - 1
        while self._seen_upto + 1 in self._seen_above:
            self._seen_upto += 1
            self._seen_above.remove(self._seen_upto)
        return True

    def _on_close(self, error: BridgeClosed) -> None:
        self._client = None
        self._subscription = None
        self._wake()

    def _append(self, stream: str, data: bytes) -> None:
        self._chunks.append(OutputChunk(self._next_seq, stream, data))
        self._next_seq += 1
        self._buffered += len(data)
        while self._buffered > self.max_buffer and len(self._chunks) > 1:
            dropped = self._chunks.popleft()
            self._buffered -= len(dropped.data)
            self.lost_bytes += len(dropped.data)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def detach(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
        self._subscription = None
        self._client = None

    # --- use ----------------------------------------------------------------------------------------

    def output_since(self, since: int) -> SessionOutput:
        self.touch()
        return SessionOutput(
            chunks=[chunk for chunk in self._chunks if chunk.seq > since],
            exit_code=self.exit_code,
            alive=self.alive,
            lost_bytes=self.lost_bytes,
            next_seq=self._next_seq,
            failure=self.failure,
        )

    async def wait_for_output(self, since: int, timeout: float) -> None:
        """Until there is output after ``since``, the process ended or the bridge closed, or
        ``timeout`` seconds passed."""
        deadline = self._clock() + timeout
        while self.alive and self._next_seq - 1 <= since and (self._client is not None and not self._client.closed):
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            changed = self._changed
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return

    async def write(self, data: bytes) -> str:
        """Send ``data`` to stdin; returns exec-server's status (``accepted``, ``stdinClosed``,
        ``unknownProcess``). The writeId makes a retried write land once."""
        self.touch()
        client = await self.client()
        params = {"processId": self.process_id, "chunk": base64.b64encode(data).decode(), "writeId": uuid.uuid4().hex}
        result = await client.call("process/write", params, idempotent=True)
        return str(result.get("status", ""))

    async def terminate(self) -> bool:
        """Kill the process; True if it was still running."""
        client = await self.client()
        result = await client.call("process/terminate", {"processId": self.process_id}, idempotent=True)
        return bool(result.get("running"))


class InMemoryProcessSessions:
    """``ProcessSessions`` for one process. Sessions idle for ``max_idle`` seconds are
    dropped on the next access; their processes are left alone, as with ``forget``."""

    def __init__(self, max_idle: float = DEFAULT_MAX_IDLE, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_idle = max_idle
        self._clock = clock
        self._sessions: dict[str, ProcessSession] = {}

    async def register(self, session: ProcessSession) -> None:
        self._sweep()
        self._sessions[session.session_id] = session

    async def get(self, session_id: str) -> ProcessSession | None:
        self._sweep()
        return self._sessions.get(session_id)

    async def forget(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.detach()

    def _sweep(self) -> None:
        cutoff = self._clock() - self.max_idle
        for session_id, session in list(self._sessions.items()):
            if session.last_activity < cutoff:
                del self._sessions[session_id]
                session.detach()
