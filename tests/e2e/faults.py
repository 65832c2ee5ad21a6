"""Pieces for fault tests (``tests/e2e/test_fault_*.py``): a private ``redis-server`` that can be
killed and started again on its port, exact accounting of a process's output as one client sees
it across connections, resuming a virtual session, and the resident memory of a process.

Kept apart from ``harness.py`` (which is large already); it builds on it.
"""

# ruff: noqa: ASYNC109 - helpers take a timeout like the harness client does

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tests.e2e.harness import MiB, RpcClient, RpcConnectionClosed, _free_port, reap, wait_for

OUTPUT_LOST = "gateway/outputLost"


# --- a private Redis ---------------------------------------------------------------------------


@dataclass
class RedisServer:
    """Debian's ``redis-server`` on 127.0.0.1:<free port>, nothing persisted (``--save ""
    --appendonly no``): a restart loses every key, as a crashed cache node does."""

    port: int
    work_dir: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @classmethod
    def start(cls, work_dir: Path) -> RedisServer:
        work_dir.mkdir(parents=True, exist_ok=True)
        server = cls(port=_free_port(), work_dir=work_dir)
        server.launch()
        return server

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def launch(self, timeout: float = 10.0) -> None:
        """Start it (again) on its port and wait until it answers PING."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        log = self.work_dir / f"redis-{self.starts}.log"
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.work_dir), "--logfile", str(log)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for(lambda: self.ping() or self.process is None or self.process.poll() is not None, timeout):
            self.stop()
            raise AssertionError(f"redis-server did not start on port {self.port}")
        if not self.ping():
            raise AssertionError(f"redis-server exited ({self.process.poll()}): {log.read_text(errors='replace')}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: every key, list and connection is gone at once."""
        if self.process is not None:
            reap(self.process, signal.SIGKILL, 5)

    def stop(self) -> None:
        if self.process is not None:
            reap(self.process, signal.SIGTERM, 5)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


# --- exact accounting of one process's output ---------------------------------------------------


@dataclass
class OutputAccount:
    """One process's events as one client sees them, across connections, by ``seq``.

    A repeated seq must be identical (at-least-once across a crash) and is counted, not stored
    twice; ``gateway/outputLost`` ranges are kept. ``check`` then demands that every seq from 1 to
    the close was either delivered or reported lost, and nothing else."""

    process_id: str
    events: dict[int, dict[str, Any]] = field(default_factory=dict)
    lost: list[tuple[int, int]] = field(default_factory=list)
    repeats: int = 0
    order: list[int] = field(default_factory=list)  # seqs in arrival order (with repeats)

    def add(self, event: dict[str, Any]) -> bool:
        """Take one notification of this process; True if it was one."""
        params = event.get("params") or {}
        if params.get("processId") != self.process_id:
            return False
        if event.get("method") == OUTPUT_LOST:
            self.lost.append((int(params["fromSeq"]), int(params["toSeq"])))
            return True
        seq = params["seq"]
        self.order.append(seq)
        if seq in self.events:
            assert self.events[seq] == event, f"seq {seq} came back different: {self.events[seq]} != {event}"
            self.repeats += 1
        self.events[seq] = event
        return True

    @property
    def closed(self) -> bool:
        return any(e["method"] == "process/closed" for e in self.events.values())

    @property
    def output(self) -> bytes:
        return b"".join(
            base64.b64decode(self.events[s]["params"]["chunk"])
            for s in sorted(self.events)
            if self.events[s]["method"] == "process/output"
        )

    @property
    def exit_codes(self) -> list[int]:
        return [e["params"]["exitCode"] for e in self.events.values() if e["method"] == "process/exited"]

    def lost_seqs(self) -> set[int]:
        return {seq for low, high in self.lost for seq in range(low, high + 1)}

    def check(self) -> None:
        """Every seq up to the close delivered or reported lost (not both), exit and close seen."""
        assert self.closed, f"{self.process_id}: no process/closed (seqs {self.summary()})"
        top = max(self.events)
        lost = self.lost_seqs()
        delivered = set(self.events)
        assert not (lost & delivered), f"seqs both delivered and reported lost: {sorted(lost & delivered)}"
        unaccounted = set(range(1, top + 1)) - delivered - lost
        assert not unaccounted, f"{self.process_id}: silent gap, seqs {sorted(unaccounted)} ({self.summary()})"
        assert self.exit_codes in ([0], []), f"exit: {self.exit_codes}"
        assert self.exit_codes or lost, f"{self.process_id}: no process/exited and none reported lost"

    def summary(self) -> str:
        seqs = sorted(self.events)
        ranges: list[str] = []
        for seq in seqs:
            if ranges and int(ranges[-1].split("-")[-1]) == seq - 1:
                ranges[-1] = f"{ranges[-1].split('-')[0]}-{seq}"
            else:
                ranges.append(str(seq))
        return f"delivered {','.join(ranges)}; lost {self.lost}; repeats {self.repeats}"

    async def take(self, client: RpcClient, timeout: float) -> None:
        """Take this process's notifications until it is closed or the connection ends."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            try:
                event = await client.next_notification(timeout=max(0.1, deadline - time.monotonic()))
            except RpcConnectionClosed:
                return
            self.add(event)


def assert_pieces_of(account: OutputAccount, expected: bytes) -> list[bytes]:
    """Every seq accounted for (``check``), and the output exactly ``expected``; or, when seqs were
    reported lost, each run of consecutive delivered output is the next piece of ``expected``, in
    order, never repeated. Returns the pieces."""
    account.check()
    if not account.lost:
        assert account.output == expected, "the output arrived altered"
        return [expected]
    lost = account.lost_seqs()
    top = max(account.events)
    pieces: list[bytes] = []
    position = 0
    run = b""
    for seq in range(1, top + 2):
        event = account.events.get(seq)
        if event is not None and event["method"] == "process/output":
            run += base64.b64decode(event["params"]["chunk"])
        elif (seq in lost or seq > top) and run:
            found = expected.find(run, position)
            assert found >= position, f"the output before seq {seq} is not the next piece of what was written"
            position = found + len(run)
            pieces.append(run)
            run = b""
    return pieces


def numbered_lines(output: bytes, prefix: str) -> list[int]:
    """The numbers of the ``<prefix>-<n>`` lines in ``output`` (AssertionError on anything else)."""
    numbers = []
    for line in output.decode().splitlines():
        head, _, number = line.rpartition("-")
        assert head == prefix, f"unexpected line {line!r}"
        assert number.isdigit(), f"unexpected line {line!r}"
        numbers.append(int(number))
    return numbers


def ticker_params(process_id: str, lines: int, pause: float, width: int = 0) -> dict[str, Any]:
    """``process/start`` of a shell loop printing ``<process_id>-<i>`` (padded with ``width``
    dots) for i in 1..lines, ``pause`` seconds apart."""
    pad = " " + "." * width if width else ""
    script = f"i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo {process_id}{pad}-$i; sleep {pause}; done"
    return {
        "processId": process_id,
        "argv": ["/bin/sh", "-c", script],
        "cwd": "file:///tmp",
        "env": {"PATH": "/usr/bin:/bin"},
        "tty": False,
    }


# --- memory -------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc (VmRSS)."""
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """The highest resident set size of some processes, sampled every ``interval`` seconds on a
    thread until ``stop()``."""

    def __init__(self, pids: Mapping[str, int], interval: float = 0.1) -> None:
        self.pids = dict(pids)
        self.before = {name: rss_bytes(pid) for name, pid in self.pids.items()}
        self.peak = dict(self.before)
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_bytes(pid))

    def stop(self) -> dict[str, int]:
        """Stop sampling; returns each process's growth (peak minus before), in bytes."""
        self._stopped.set()
        self._thread.join(5)
        return {name: self.peak[name] - self.before[name] for name in self.pids}


# --- a client that can stop reading its socket --------------------------------------------------


class PausableClient:
    """A bridge client on a raw WebSocket with a tiny receive queue: while nobody calls ``recv``,
    the library stops reading the socket after ``max_queue`` frames, so TCP flow control reaches
    the gateway (unlike ``RpcClient``, whose reader task always reads)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, url: str, headers: Mapping[str, str]) -> PausableClient:
        ws = await ws_connect(
            url, additional_headers=dict(headers), compression=None, max_size=64 * MiB, max_queue=4, ping_interval=None
        )
        return cls(ws)

    async def send(self, method: str, params: Any = None) -> int:
        """Send a request without waiting for its answer; returns its id."""
        request_id = next(self._ids)
        await self.ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
        return request_id

    async def recv(self, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            message: dict[str, Any] = json.loads(await self.ws.recv())
            return message

    async def call(
        self, method: str, params: Any = None, timeout: float = 10.0
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Send a request and read until its answer: (answer, notifications read meanwhile)."""
        request_id = await self.send(method, params)
        others: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.1, deadline - time.monotonic()))
            if message.get("id") == request_id and "method" not in message:
                return message, others
            others.append(message)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
