"""A bridge client's outbox: paced by the client, bounded, losses told exactly and in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bridge.outbox import BridgeOutbox, closes_sent


def output(process_id: str, seq: int, size: int = 100) -> str:
    params = {"processId": process_id, "seq": seq, "stream": "stdout", "chunk": "x" * size}
    return json.dumps({"method": "process/output", "params": params}, separators=(",", ":"))


class Gate:
    """A client that reads only while open: the server's send waits while it does not."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.sent: list[dict[str, Any]] = []

    async def send(self, text: str) -> None:
        await self.open.wait()
        self.sent.append(json.loads(text))


async def test_a_stalled_client_is_told_exactly_what_it_will_not_get_in_seq_order():
    gate = Gate()
    outbox = BridgeOutbox(gate.send, limit=1000, patience=0.05)
    for seq in range(1, 31):  # ~150 characters each: 6 fit
        await outbox.put(output("a", seq))
        await outbox.put(output("b", seq))
    await outbox.put('{"id":7,"result":{}}')  # never dropped
    assert outbox.stalled
    gate.open.set()
    await outbox.drained()
    seen: dict[str, list[int]] = {"a": [], "b": []}
    for message in gate.sent:
        if message.get("method") == "process/output":
            seen[message["params"]["processId"]].append(message["params"]["seq"])
        elif message.get("method") == "gateway/outputLost":
            params = message["params"]
            seen[params["processId"]] += list(range(params["fromSeq"], params["toSeq"] + 1))
    assert seen == {"a": list(range(1, 31)), "b": list(range(1, 31))}  # each seq once, in order
    lost = [m["params"] for m in gate.sent if m.get("method") == "gateway/outputLost"]
    # One notice per process, from its first seq that did not fit to its last.
    assert sorted((n["processId"], n["toSeq"]) for n in lost) == [("a", 30), ("b", 30)]
    assert gate.sent[-1] == {"id": 7, "result": {}}


async def test_a_client_that_keeps_reading_loses_nothing_and_paces_the_sender():
    gate = Gate()
    gate.open.set()
    outbox = BridgeOutbox(gate.send, limit=1000, patience=1.0)
    for seq in range(1, 201):
        await outbox.put(output("a", seq))
        assert outbox.queued_chars <= 1000
    await outbox.drained()
    assert [m["params"]["seq"] for m in gate.sent] == list(range(1, 201))  # no outputLost notice among them


async def test_a_stalled_client_that_reads_again_gets_output_again():
    gate = Gate()
    outbox = BridgeOutbox(gate.send, limit=1000, patience=0.05)
    for seq in range(1, 11):
        await outbox.put(output("a", seq))
    assert outbox.stalled
    gate.open.set()
    await outbox.drained()
    assert not outbox.stalled
    await outbox.put(output("a", 11))
    await outbox.drained()
    assert gate.sent[-1]["params"]["seq"] == 11


async def test_a_close_goes_after_the_queued_output_and_a_drain_waits_for_it():
    gate = Gate()
    outbox = BridgeOutbox(gate.send, limit=10_000)
    for seq in range(1, 4):
        await outbox.put(output("a", seq))

    async def close() -> None:
        gate.sent.append({"closed": 1012})

    outbox.finish(close)
    await outbox.put(output("a", 4))  # after the close: ignored
    waiting = asyncio.ensure_future(closes_sent())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the client has not read yet
    gate.open.set()
    await asyncio.wait_for(waiting, 5)
    assert [m.get("params", {}).get("seq") for m in gate.sent[:3]] == [1, 2, 3]
    assert gate.sent[3:] == [{"closed": 1012}]


def lost(process_id: str, low: int, high: int) -> str:
    params = {"processId": process_id, "fromSeq": low, "toSeq": high}
    return json.dumps({"method": "gateway/outputLost", "params": params}, separators=(",", ":"))


async def test_seqs_skipped_on_the_way_are_told_once_and_repeats_or_a_new_series_are_not_gaps():
    gate = Gate()
    gate.open.set()
    outbox = BridgeOutbox(gate.send)
    for seq in (1, 2, 5, 5, 3, 6):  # 3 and 4 lost on the way; a repeat; an old seq again
        await outbox.put(output("a", seq))
    await outbox.put(output("a", 9))  # the multiplexer's own late notice for 7-8 follows
    await outbox.put(lost("a", 7, 8))  # already told: not again
    await outbox.put(output("a", 1))  # the id reused for a new process: a new series
    await outbox.put(output("a", 2))
    await outbox.put(output("b", 414))  # first on this connection (a resume): no gap of its own
    await outbox.put(lost("b", 1, 413))  # the multiplexer's late notice, told by nobody else
    await outbox.drained()
    told = [
        (m["params"]["processId"], m["params"]["fromSeq"], m["params"]["toSeq"])
        for m in gate.sent
        if m["method"] == "gateway/outputLost"
    ]
    assert told == [("a", 3, 4), ("a", 7, 8), ("b", 1, 413)]
    outputs = [m["params"]["seq"] for m in gate.sent if m["method"] == "process/output"]
    assert outputs == [1, 2, 5, 5, 3, 6, 9, 1, 2, 414]


async def test_a_gap_is_told_with_the_exact_process_id_escaped_or_not():
    gate = Gate()
    gate.open.set()
    outbox = BridgeOutbox(gate.send)
    for process_id in ('q"uo\\te', "plain", "é"):
        await outbox.put(output(process_id, 1))
        await outbox.put(output(process_id, 3))
    await outbox.drained()
    told = [
        (m["params"]["processId"], m["params"]["fromSeq"]) for m in gate.sent if m["method"] == "gateway/outputLost"
    ]
    assert told == [('q"uo\\te', 2), ("plain", 2), ("é", 2)]


async def test_sent_counts_only_frames_handed_to_the_connection():
    """What ``bridge/sent_progress.py`` reads: a frame counts as sent once the pump wrote it, and
    a lost notice that grows keeps the frames after its first one unsent until it is written."""
    gate = Gate()
    outbox = BridgeOutbox(gate.send, limit=1000, patience=0.05)
    assert outbox.settled
    for seq in (1, 2, 3):
        assert await outbox.put(output("a", seq))
    assert (outbox.queued, outbox.settled) == (3, False)
    await asyncio.sleep(0.05)
    assert outbox.sent == 0  # the client reads nothing: nothing has left
    gate.open.set()
    await outbox.drained()
    assert (outbox.sent, outbox.settled) == (3, True)
    outbox.close()
    assert outbox.given_up
    assert not await outbox.put(output("a", 4))  # gone: the sender owes it again


async def test_a_frame_with_room_is_written_in_place_and_one_that_must_wait_keeps_its_order():
    """The pump starts in the putting task: a connection with room gets the frame before ``put``
    returns, with no task; a full one makes the pump a task, and ``put`` still never waits."""
    gate = Gate()
    gate.open.set()
    outbox = BridgeOutbox(gate.send, limit=10_000)
    assert await outbox.put(output("a", 1))
    assert [m["params"]["seq"] for m in gate.sent] == [1]
    assert outbox.settled
    assert outbox._task is None
    gate.open.clear()  # the client stops reading
    for seq in (2, 3):
        assert await outbox.put(output("a", seq))
    assert outbox._task is not None
    assert len(gate.sent) == 1
    gate.open.set()
    await outbox.drained()
    assert await outbox.put(output("a", 4))
    assert [m["params"]["seq"] for m in gate.sent] == [1, 2, 3, 4]
    assert outbox.settled
    assert outbox._task is None


async def test_nothing_is_accepted_while_the_close_is_being_sent():
    """A frame put, or a second close asked for, while the pump sends the close is refused: it
    would never reach the client, so the sender must not count it as delivered."""
    gate = Gate()
    gate.open.set()
    outbox = BridgeOutbox(gate.send, limit=10_000)
    closing = asyncio.Event()
    closes: list[str] = []

    async def close(name: str) -> None:
        closes.append(name)
        await closing.wait()  # the server is still sending the close

    outbox.finish(lambda: close("first"))
    assert closes == ["first"]
    assert not await outbox.put(output("a", 1))
    outbox.finish(lambda: close("second"))
    closing.set()
    await outbox.drained()
    assert closes == ["first"]
    assert gate.sent == []
