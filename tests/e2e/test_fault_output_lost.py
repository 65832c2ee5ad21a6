"""``gateway/outputLost`` end to end: output that fell out of exec-server's retention (~1 MiB per
process) while the executor was away is told to the client with its exact seq range.

The real exec-server dials gateway process 0 through a ``TcpCutProxy``; the client's bridge is on
process 1. The executor's connection is cut and the proxy refuses it while the process writes
3 MB; then the executor is let back. The recovery read cannot return the beginning any more, so
the client must get ``gateway/outputLost`` for exactly those seqs, and the bytes it does get must
be exactly the rest of what was written, ending with exit and close.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from executors.presence import presence_store
from tests.e2e.faults import OutputAccount, assert_pieces_of
from tests.e2e.harness import wait_for
from tests.e2e.test_bridge import OnlineExecutor, online_executor, start_params

pytestmark = pytest.mark.e2e
__all__ = ["online_executor"]  # the fixture, used by name

LINES = 200_000  # "line-000000001\n" …: 3,000,000 bytes, about three times the retention


def expected_output() -> bytes:
    return "".join(f"line-{i:09d}\n" for i in range(1, LINES + 1)).encode()


async def test_output_beyond_retention_while_the_executor_is_away_is_reported_exactly(
    online_executor: OnlineExecutor, tmp_path: Path
) -> None:
    go, done = tmp_path / "go", tmp_path / "done"
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; /usr/bin/seq -f 'line-%09.0f' 1 {LINES}; touch {done}"
    proxy = online_executor.proxy
    before = presence_store().get(online_executor.exe_id)
    assert before is not None
    async with await online_executor.bridge(1) as client:
        await client.initialize("outputlost")
        await client.call_result("process/start", start_params("big", ["/bin/sh", "-c", script]))

        proxy.refusing = True
        assert proxy.cut() >= 1  # the executor is away, and stays away
        go.touch()
        assert await asyncio.to_thread(wait_for, done.exists, 30), "the process did not finish writing"
        away = time.monotonic()
        proxy.refusing = False  # the executor comes back, its retention holds the last ~1 MiB only

        account = OutputAccount("big")
        await account.take(client, timeout=40)
        back_after = time.monotonic() - away
        after = presence_store().get(online_executor.exe_id)
        assert after is not None
        assert after.connection_id != before.connection_id, "the executor did not reconnect"

    expected = expected_output()
    pieces = assert_pieces_of(account, expected)
    received = account.output
    print(
        f"\noutputLost: {account.summary()}; received {len(received):,} of {len(expected):,} bytes; "
        f"reconnected and read within {back_after:.1f}s"
    )
    # The beginning fell out of the retention: one range, from seq 1, told before anything after it.
    assert len(account.lost) == 1, account.lost
    low, high = account.lost[0]
    assert low == 1, account.lost
    assert min(account.events) == high + 1
    # Told before the exit and the close (docs/protocol.md: when the process has exited, the gap
    # could hold the exit, so the output after the gap may go out before the notice).
    methods = [frame.get("method") for frame in client.frames if isinstance(frame, dict)]
    assert methods.index("gateway/outputLost") < methods.index("process/exited") < methods.index("process/closed")
    # What it got is exactly the end of what was written: lost bytes + received bytes = all.
    assert len(pieces) == 1
    assert expected.endswith(received)
    assert 0 < len(received) < len(expected)
    assert account.exit_codes == [0]
