"""Fault: a bridge client stops reading its socket while its process writes tens of MiB.

The real exec-server on gateway process 0; the slow client on process 0 (its bridge is local to
the executor's session) or on process 1 (its frames cross the channel layer); a normal client on
the other process runs a clock (a line with the time every 50 ms) throughout. While the slow
client reads nothing for ``PAUSE`` seconds, its process writes ``FLOOD_LINES`` numbered lines.

Required: the gateways' resident memory stays bounded (sampled from /proc), the normal client's
lines keep arriving on time, and the slow client, when it reads again, gets every byte, or is
told exactly which seqs it will not get (``gateway/outputLost``), never a silent gap.
"""

# ruff: noqa: ASYNC109 - helpers take a timeout like the harness client does

from __future__ import annotations

import asyncio
import base64
import statistics
import time

import pytest

from tests.e2e.faults import OutputAccount, PausableClient, RssSampler, assert_pieces_of
from tests.e2e.harness import MiB, RpcClient
from tests.e2e.test_bridge import OnlineExecutor, online_executor, start_params

pytestmark = pytest.mark.e2e
__all__ = ["online_executor"]  # the fixture, used by name

FLOOD_LINES = 2_000_000  # "line-000000001\n" …: 30,000,000 bytes
PAUSE = 8.0
CLOCK_LINES = 400
CLOCK_PAUSE = 0.05


def expected_flood() -> bytes:
    return "".join(f"line-{i:09d}\n" for i in range(1, FLOOD_LINES + 1)).encode()


async def clock_latencies(client: RpcClient, account: OutputAccount, timeout: float) -> list[tuple[float, float]]:
    """(printed at, latency) of each clock line until the clock process closes."""
    seen: list[tuple[float, float]] = []
    partial = b""
    deadline = time.monotonic() + timeout
    while not account.closed:
        event = await client.next_notification(timeout=max(0.1, deadline - time.monotonic()))
        now = time.time()
        account.add(event)
        if event["method"] != "process/output":
            continue
        partial += base64.b64decode(event["params"]["chunk"])
        *lines, partial = partial.split(b"\n")
        seen += [(float(line), now - float(line)) for line in lines if line]
    return seen


async def run_flood(slow: PausableClient, process_id: str, pause: float) -> tuple[OutputAccount, float, float]:
    """Start the flood, read nothing for ``pause`` seconds, then read it to the end:
    (account, wall-clock start, wall-clock end)."""
    started = time.time()
    flood = ["/usr/bin/seq", "-f", "line-%09.0f", "1", str(FLOOD_LINES)]
    await slow.send("process/start", start_params(process_id, flood))
    await asyncio.sleep(pause)
    account = OutputAccount(process_id)
    while not account.closed:
        message = await slow.recv(timeout=30)
        if "method" in message:
            account.add(message)
    return account, started, time.time()


def latency_summary(latencies: list[tuple[float, float]], start: float, end: float) -> tuple[float, float, int]:
    during = [lat for at, lat in latencies if start <= at <= end]
    return statistics.median(during), max(during), len(during)


@pytest.mark.parametrize("slow_on", [0, 1], ids=["local-bridge", "remote-bridge"])
async def test_a_slow_reader_gets_everything_or_is_told_and_does_not_slow_others(
    online_executor: OnlineExecutor, slow_on: int
) -> None:
    cluster = online_executor.cluster
    normal = await online_executor.bridge(1 - slow_on)
    await normal.initialize("normal")
    clock = f"i=0; while [ $i -lt {CLOCK_LINES} ]; do i=$((i+1)); date +%s.%N; sleep {CLOCK_PAUSE}; done"
    await normal.call_result("process/start", start_params("clock", ["/bin/sh", "-c", clock]))
    clock_account = OutputAccount("clock")
    clock_task = asyncio.create_task(clock_latencies(normal, clock_account, timeout=90))

    headers = {"Authorization": f"Bearer {online_executor.token()}"}
    reader = await PausableClient.connect(online_executor.bridge_url(slow_on), headers)
    answer, _ = await reader.call("initialize", {"clientName": "slow"})
    assert "result" in answer, answer
    await reader.ws.send('{"method":"initialized","params":{}}')
    await asyncio.sleep(1.0)  # the clock's pace with no flood
    # Control: the same flood to a client that reads at once.
    control, control_from, control_to = await run_flood(reader, "control", pause=0)
    assert control.lost == [], control.summary()
    assert control.output == expected_flood()
    # The fault: the client reads nothing for PAUSE seconds.
    pids = {gateway.name: gateway.pid for gateway in cluster} | {"exec-server": online_executor.server.process.pid}
    sampler = RssSampler(pids)
    account, flood_from, flood_to = await run_flood(reader, "flood", pause=PAUSE)
    growth = sampler.stop()
    await reader.close()
    latencies = await clock_task
    await normal.close()

    base = latency_summary(latencies, 0, control_from)
    with_control = latency_summary(latencies, control_from, control_to)
    with_slow = latency_summary(latencies, flood_from, flood_to)
    print(
        f"\nslow reader ({'local' if slow_on == 0 else 'remote'} bridge): {account.summary()}\n"
        f"RSS growth (MiB): { {name: round(g / MiB, 1) for name, g in growth.items()} }\n"
        f"clock latency p50/max (lines): no flood {base[0]:.3f}/{base[1]:.3f} ({base[2]}); "
        f"flood read at once {with_control[0]:.3f}/{with_control[1]:.3f} ({with_control[2]}), "
        f"{control_to - control_from:.1f}s; "
        f"flood to the slow reader {with_slow[0]:.3f}/{with_slow[1]:.3f} ({with_slow[2]})"
    )
    assert_pieces_of(account, expected_flood())
    clock_account.check()
    assert len(latencies) == CLOCK_LINES
    # Bounded: the outbox (8 MiB of text) and what the server's buffers hold, not the 40 MB sent.
    for name in (gateway.name for gateway in cluster):
        assert growth[name] < 24 * MiB, (name, growth)
    # The other client's pace: no worse than with a flood that is read at once, give or take.
    # (Generous: the machine is shared, and the two floods run seconds apart.)
    assert with_slow[0] < max(3 * with_control[0], with_control[0] + 0.5), (with_control, with_slow)
    assert with_slow[1] < with_control[1] + 3.0, (with_control, with_slow)
