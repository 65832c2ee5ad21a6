"""Running a process on an executor to completion, from its pushed events.

exec-server pushes ``process/output``, ``process/exited`` and ``process/closed`` (codex-wire
§A.3); ``exited`` may come before the last output, so only ``closed`` ends a run. Output is
collected from the pushes rather than polled: exec-server retains only ~1 MiB per process.
"""

# ruff: noqa: ASYNC109 - runs take the caller's budget

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from bridge.client import BridgeClient, BridgeClosed, BridgeError, BridgeRPCError
from bridge.protocol import INVALID_REQUEST
from sdk.tools.base import file_uri

JSON = dict[str, Any]
DEFAULT_MAX_OUTPUT = 1024 * 1024  # per stream, head and tail halves
TERMINATE_TIMEOUT = 5.0


class CappedOutput:
    """Keeps the first and the last ``limit // 2`` bytes of a stream and counts what is between."""

    def __init__(self, limit: int = DEFAULT_MAX_OUTPUT) -> None:
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self.omitted = 0

    def append(self, data: bytes) -> None:
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail_size > self._tail_limit:
            excess = self._tail_size - self._tail_limit
            first = self._tail[0]
            if len(first) <= excess:
                self._tail.popleft()
                dropped = len(first)
            else:
                self._tail[0] = first[excess:]
                dropped = excess
            self._tail_size -= dropped
            self.omitted += dropped

    def text(self) -> str:
        tail = b"".join(self._tail)
        if not self.omitted:
            return (bytes(self._head) + tail).decode(errors="replace")
        middle = f"\n[... {self.omitted} bytes omitted ...]\n"
        return bytes(self._head).decode(errors="replace") + middle + tail.decode(errors="replace")


@dataclass
class Completed:
    stdout: CappedOutput
    stderr: CappedOutput
    exit_code: int | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and self.exit_code == 0


async def start_process(client: BridgeClient, params: JSON, timeout: float = 30.0) -> None:
    """``process/start``, retried when the executor's connection drops: the processId makes it
    idempotent (a retry whose first attempt went through is answered "already exists")."""
    try:
        await client.call("process/start", params, timeout, idempotent=True)
    except BridgeRPCError as error:
        if not (error.code == INVALID_REQUEST and error.message.endswith("already exists")):
            raise


async def terminate_quietly(client: BridgeClient, process_id: str) -> None:
    """Best effort, bounded, and immune to the caller's cancellation."""
    with contextlib.suppress(BridgeError, TimeoutError):
        await asyncio.shield(
            client.call("process/terminate", {"processId": process_id}, TERMINATE_TIMEOUT, idempotent=True)
        )


async def run_process(
    client: BridgeClient,
    argv: list[str],
    *,
    cwd: str,
    env: dict[str, str],
    timeout: float,
    max_output: int = DEFAULT_MAX_OUTPUT,
) -> Completed:
    """Run ``argv`` (``cwd`` a plain path) until it closes. Never raises for the process's own
    failures: they are in ``failure`` (failed to start, timed out and terminated, connection
    lost). A timeout or cancellation terminates the process."""
    process_id = f"run-{uuid.uuid4().hex}"
    completed = Completed(CappedOutput(max_output), CappedOutput(max_output))
    done = asyncio.Event()

    def on_event(method: str, params: JSON) -> None:
        if method == "process/output":
            stream = completed.stderr if params.get("stream") == "stderr" else completed.stdout
            stream.append(base64.b64decode(params.get("chunk") or ""))
        elif method == "process/exited":
            code = params.get("exitCode")
            completed.exit_code = code if isinstance(code, int) else None
        elif method == "process/closed":
            done.set()

    def on_close(error: BridgeClosed) -> None:
        completed.failure = f"connection to the environment lost: {error}"
        done.set()

    deadline = time.monotonic() + timeout
    params = {
        "processId": process_id,
        "argv": argv,
        "cwd": file_uri(cwd),
        "env": env,
        "tty": False,
        "pipeStdin": False,
        "arg0": None,
    }
    with client.subscribe(on_event, process_id=process_id, on_close=on_close):
        try:
            await start_process(client, params, min(timeout, 30.0))
        except BridgeRPCError as error:
            completed.failure = f"failed to start: {error.message}"
            return completed
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await done.wait()
        except TimeoutError:
            completed.failure = f"timed out after {int(timeout * 1000)} ms (process terminated)"
            await terminate_quietly(client, process_id)
        except asyncio.CancelledError:
            await terminate_quietly(client, process_id)
            raise
    if completed.failure is None and completed.exit_code is None:
        completed.failure = "process ended without an exit status"
    return completed
