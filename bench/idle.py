"""Connection scale: N idle executor connections on one gateway process.

Each fake executor does what the real one does on the wire and nothing more: a SigV4-signed
upgrade to ``/codex-exec/<exe_id>``, an answer to the gateway's ``initialize`` with a session id,
then silence (the ``websockets`` library still answers the gateway's pings, as codex does).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from bench.proc import rss_bytes
from tests.e2e.harness import ExecutorCredentials, signed_upgrade_headers

# Upgrades in flight at once: enough to keep the gateway busy, few enough not to overflow its
# listen backlog (kept from when the server listened with a backlog of 50; uvicorn's is 2048).
CONNECT_PARALLELISM = 32


@dataclass
class IdleScale:
    connections: int
    accept_s: float
    presence_s: float
    rss_per_connection_kib: float
    rss_growth_mib: float
    online: int


def register(count: int) -> list[ExecutorCredentials]:
    """``count`` executors in the bench database (synchronous ORM, call outside the event loop)."""
    from executors import services

    made = []
    for index in range(count):
        created = services.register_executor("user-bench", f"idle-{index}")
        made.append(ExecutorCredentials(created.executor.exe_id, created.registration_token))
    return made


async def _executor(host_port: str, credentials: ExecutorCredentials) -> ClientConnection:
    ws = await ws_connect(
        f"ws://{host_port}/codex-exec/{credentials.exe_id}",
        additional_headers=signed_upgrade_headers(credentials, host_port),
        compression=None,
        open_timeout=120,
        ping_interval=None,
    )
    request = json.loads(await asyncio.wait_for(ws.recv(), 120))
    if request.get("method") != "initialize":
        raise RuntimeError(f"expected initialize, got {request}")
    await ws.send(json.dumps({"id": request["id"], "result": {"sessionId": str(uuid.uuid4())}}))
    initialized = json.loads(await asyncio.wait_for(ws.recv(), 120))
    if initialized.get("method") != "initialized":
        raise RuntimeError(f"expected initialized, got {initialized}")
    return ws


async def hold_idle(host_port: str, gateway_pid: int, executors: list[ExecutorCredentials]) -> IdleScale:
    """Connect every executor, wait until presence lists all of them, read the gateway's RSS,
    close them all."""
    from executors.presence import presence_store

    gate = asyncio.Semaphore(CONNECT_PARALLELISM)
    rss_before = rss_bytes(gateway_pid)

    async def one(credentials: ExecutorCredentials) -> ClientConnection:
        async with gate:
            return await _executor(host_port, credentials)

    started = time.perf_counter()
    results = await asyncio.gather(*(one(c) for c in executors), return_exceptions=True)
    accepted = time.perf_counter() - started
    sockets = [ws for ws in results if isinstance(ws, ClientConnection)]
    failures = [r for r in results if isinstance(r, BaseException)]
    try:
        if failures:
            raise RuntimeError(f"{len(failures)} of {len(executors)} executor connections failed: {failures[0]!r}")
        ids = [c.exe_id for c in executors]
        store = presence_store()
        online = 0
        for _ in range(600):
            online = len(await asyncio.to_thread(store.online, ids))
            if online == len(ids):
                break
            await asyncio.sleep(0.1)
        presence = time.perf_counter() - started
        await asyncio.sleep(1)  # let the gateway settle (initialized handling, first presence writes)
        growth = rss_bytes(gateway_pid) - rss_before
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return IdleScale(
        connections=len(executors),
        accept_s=accepted,
        presence_s=presence,
        rss_per_connection_kib=growth / len(executors) / 1024,
        rss_growth_mib=growth / 1024 / 1024,
        online=online,
    )
