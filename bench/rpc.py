"""JSON-RPC measurements that run the same way against every target: a direct WebSocket to
exec-server, or a ``/bridge`` through the gateway. The client (the harness's ``RpcClient``) is the
same for all targets, so its own cost cancels out of the ratios."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.proc import CpuMeter
from bench.report import percentile
from tests.e2e.harness import RpcClient

MiB = 1024 * 1024
_process_ids = itertools.count(1)


@dataclass(frozen=True)
class Target:
    """Where a client connects: ``url`` plus upgrade headers (the bridge's capability token)."""

    label: str
    url: str
    headers: Mapping[str, str]

    async def open(self) -> RpcClient:
        client = await RpcClient.connect(self.url, self.headers, open_timeout=60)
        await client.initialize("codexgw-bench")
        return client


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    calls: int


@dataclass
class Concurrency:
    requests_per_s: float
    p99_ms: float
    cpu_us_per_request: dict[int, float]
    requests: int


def file_uri(path: Path) -> str:
    return path.resolve().as_uri()


async def _timed_calls(client: RpcClient, method: str, params: object, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        response = await client.call(method, params, timeout=60)
        samples.append(time.perf_counter() - started)
        if "error" in response:
            raise RuntimeError(f"{method} failed: {response['error']}")
    return samples


async def latency(target: Target, path: Path, calls: int, warmup: int = 50) -> Latency:
    """Sequential ``fs/getMetadata`` round trips on one connection."""
    params = {"path": file_uri(path)}
    client = await target.open()
    try:
        await _timed_calls(client, "fs/getMetadata", params, warmup)
        samples = await _timed_calls(client, "fs/getMetadata", params, calls)
    finally:
        await client.close()
    return Latency(percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000, calls)


async def read_file_mb_s(target: Target, path: Path, size: int, repeats: int) -> float:
    """``fs/readFile`` of ``path`` (``size`` bytes) ``repeats`` times in a row; decoded MB/s (1 MB = 10^6 B)."""
    client = await target.open()
    try:
        started = time.perf_counter()
        for _ in range(repeats):
            result = await client.call_result("fs/readFile", {"path": file_uri(path)}, timeout=300)
            if len(base64.b64decode(result["dataBase64"])) != size:
                raise RuntimeError("fs/readFile returned a short file")
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    return size * repeats / elapsed / 1e6


async def stream_mb_s(target: Target, size: int) -> float:
    """``head -c size /dev/zero`` as a process; decoded ``process/output`` MB/s until
    ``process/closed``. Every byte must arrive (the run fails rather than report a lossy rate)."""
    process_id = f"bench-{next(_process_ids)}"
    client = await target.open()
    try:
        started = time.perf_counter()
        await client.call_result(
            "process/start",
            {
                "processId": process_id,
                "argv": ["head", "-c", str(size), "/dev/zero"],
                "cwd": "file:///tmp",
                "env": {"PATH": "/usr/bin:/bin"},
                "tty": False,
            },
        )
        received = 0
        while True:
            event = await client.next_notification(timeout=120)
            params = event.get("params") or {}
            if params.get("processId") != process_id:
                continue
            if event["method"] == "process/output":
                received += len(base64.b64decode(params["chunk"]))
            elif event["method"] == "process/closed":
                break
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    if received != size:
        raise RuntimeError(f"streamed {received} of {size} bytes")
    return size / elapsed / 1e6


async def concurrency(
    target: Target, path: Path, clients: int, calls_each: int, cpu_pids: list[int], warmup: int = 10
) -> Concurrency:
    """``clients`` connections, each issuing ``calls_each`` sequential ``fs/getMetadata`` at once;
    CPU of ``cpu_pids`` (utime+stime) over the timed part, per request."""
    params = {"path": file_uri(path)}
    connections = await asyncio.gather(*(target.open() for _ in range(clients)))
    try:
        await asyncio.gather(*(_timed_calls(c, "fs/getMetadata", params, warmup) for c in connections))
        meter = CpuMeter(cpu_pids).start()
        started = time.perf_counter()
        per_client = await asyncio.gather(*(_timed_calls(c, "fs/getMetadata", params, calls_each) for c in connections))
        elapsed = time.perf_counter() - started
        meter.stop()
    finally:
        await asyncio.gather(*(c.close() for c in connections))
    samples = [sample for client_samples in per_client for sample in client_samples]
    return Concurrency(
        requests_per_s=len(samples) / elapsed,
        p99_ms=percentile(samples, 0.99) * 1000,
        cpu_us_per_request={pid: used / len(samples) * 1e6 for pid, used in meter.used.items()},
        requests=len(samples),
    )
