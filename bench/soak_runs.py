"""One run of each soak scenario: start ticker processes through bridges, break the executor's
connection mid-stream (``reconnect``: the proxy aborts it; ``kill``: SIGKILL the holding process;
``drain``: SIGTERM it), read every client's events to the end, resuming through the balancer
where the bridge was closed, and account for every line (``bench.soak_report``)."""

# ruff: noqa: ASYNC109 - helpers take a timeout like the harness client does

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass
from typing import Any

from bench.soak_report import Stream, ticker_script
from bench.soak_rigs import CutRig, FleetRig, bearer
from tests.e2e.harness import RpcClient, RpcConnectionClosed, resume_session

LINGER = 0.5  # keep reading this long after process/closed, in case anything comes after it


@dataclass(frozen=True)
class Shape:
    lines: int = 200
    interval: float = 0.005
    cut_within: float = 0.4  # the break comes this long at most after the first line
    run_timeout: float = 120.0


def start_params(process_id: str, shape: Shape) -> dict[str, Any]:
    return {
        "processId": process_id,
        "argv": ["/bin/sh", "-c", ticker_script(process_id, shape.lines, shape.interval)],
        "cwd": "file:///tmp",
        "env": {"PATH": "/usr/bin:/bin"},
        "tty": False,
    }


async def read_to_close(client: RpcClient, stream: Stream, timeout: float) -> None:
    """Events until the process is closed (then ``LINGER`` more), the connection ends or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not stream.closed:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            stream.add(await client.next_notification(timeout=left))
        except (RpcConnectionClosed, TimeoutError):
            return
    linger = time.monotonic() + LINGER
    while (left := linger - time.monotonic()) > 0:
        try:
            stream.add(await client.next_notification(timeout=left))
        except (RpcConnectionClosed, TimeoutError):
            return


async def open_bridge(url: str, name: str) -> tuple[RpcClient, str]:
    client = await RpcClient.connect(url, bearer(), open_timeout=10)
    return client, (await client.initialize(name))["sessionId"]


async def reconnect_run(
    rig: CutRig, index: int, shape: Shape, rng: random.Random, streams: list[Stream], notes: dict[str, Any]
) -> None:
    """The executor's connection to process 0 is aborted (RST) mid-stream; the bridge is on process 1.
    ``streams`` and ``notes`` are filled as the run goes (a run that fails still has its figures)."""
    await asyncio.to_thread(rig.ready)
    stream = Stream(f"line{index}", shape.lines)
    streams.append(stream)
    client, _ = await open_bridge(rig.bridge_url(rig.cluster[1].ws_base_url), "soak-reconnect")
    try:
        await client.call_result("process/start", start_params(stream.process_id, shape))
        stream.add(await client.next_notification("process/output", timeout=20))
        await asyncio.sleep(rng.uniform(0, shape.cut_within))
        notes["mid_stream"] = not stream.closed
        notes["seqs_before_cut"] = len(stream.events)
        notes["connections_cut"] = await asyncio.to_thread(rig.cut)
        await read_to_close(client, stream, shape.run_timeout)
        notes["bridge_closed"] = client.close_code
    finally:
        await client.close()


async def failover_run(
    rig: FleetRig,
    index: int,
    shape: Shape,
    rng: random.Random,
    streams_out: list[Stream],
    notes: dict[str, Any],
    how: str,
) -> None:
    """The process holding the executor is SIGKILLed (``kill``) or SIGTERMed (``drain``) mid-stream.
    One bridge is on that process ("near"), one on another ("far"); each reads until its
    connection ends, resumes its session through the balancer and reads to the end."""
    holder = await asyncio.to_thread(rig.holder_index)
    doomed = rig.cluster[holder]
    places = {"near": doomed, "far": rig.cluster[(holder + 1) % 3]}
    notes.update(holder=holder, holder_pid=doomed.pid)
    clients: dict[str, RpcClient] = {}
    sessions: dict[str, str] = {}
    streams = {name: Stream(f"{how}{index}{name}", shape.lines) for name in places}
    streams_out.extend(streams.values())
    broken = False
    try:
        for name, gateway in places.items():
            clients[name], sessions[name] = await open_bridge(rig.bridge_url(gateway.ws_base_url), f"soak-{name}")
        for name, client in clients.items():
            await client.call_result("process/start", start_params(streams[name].process_id, shape))
        for name, client in clients.items():
            streams[name].add(await client.next_notification("process/output", timeout=20))
        await asyncio.sleep(rng.uniform(0, shape.cut_within))
        notes["mid_stream"] = not any(stream.closed for stream in streams.values())
        broken = True
        if how == "kill":
            await asyncio.to_thread(doomed.kill)
        else:
            os.kill(doomed.pid, signal.SIGTERM)
        for name, client in clients.items():
            await read_to_close(client, streams[name], shape.run_timeout / 2)
            notes[f"{name}_closed"] = client.close_code
            await client.close()
        for name in places:
            if streams[name].closed:
                continue
            again = await resume_session(
                rig.bridge_url(rig.lb.ws_base_url),
                bearer(),
                sessions[name],
                name="soak",
                timeout=60.0,
                retry_any_error=True,
            )
            clients[name] = again
            await read_to_close(again, streams[name], shape.run_timeout / 2)
        if how == "drain":
            notes["drain_exit"] = await asyncio.to_thread(doomed.process.wait, 30)
    finally:
        for client in clients.values():
            await client.close()
        if broken:  # the next run needs three processes again (a second SIGTERM ends a drain at once)
            await asyncio.to_thread(rig.replace, holder)
