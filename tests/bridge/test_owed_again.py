"""Events the session driver handed out for a bridge that never reached it (its link to another
process discarded them, its socket closed under the send): ``Multiplexer.not_delivered`` owes
them again, so the session's next resume reads them from the executor instead of skipping them."""

from __future__ import annotations

from bridge.multiplexer import OUTPUT_LOST, ToBridge, ToExecutor
from tests.bridge.test_multiplexer import (
    chunk,
    closed,
    exited,
    only,
    output,
    read_result,
    reads,
    ready_rig,
    recovery_read,
    to_bridge,
)


def test_discarded_output_is_read_again_when_the_session_resumes():
    rig = ready_rig()
    vsid = rig.attach("A")
    pid = rig.start("A", "p1")
    for seq in (1, 2, 3):
        rig.deliver(output(pid, seq), "A", output("p1", seq))
    assert rig.mux.not_delivered("A", [output("p1", 2), output("p1", 3), {"id": 9, "result": {}}, None]) == 2
    rig.mux.bridge_detached("A")

    assert only(to_bridge(rig.initialize("B", resume=vsid), "B"))["result"]["sessionId"] == vsid
    page = only(reads(rig.initialized("B")))
    assert page == recovery_read(page, pid, 1)
    actions = rig.answer(page, read_result([chunk(2), chunk(3)], 4))
    page = only(reads(actions))
    assert actions == [
        ToBridge("B", output("p1", 2)),
        ToBridge("B", output("p1", 3)),
        ToExecutor(recovery_read(page, pid, 3)),
    ]
    assert rig.answer(page, read_result([], 4)) == []
    rig.deliver(output(pid, 4), "B", output("p1", 4))


def test_a_discarded_exit_and_close_are_delivered_again():
    rig = ready_rig()
    vsid = rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    rig.deliver(exited(pid, 2), "A", exited("p1", 2))
    rig.deliver(closed(pid, 3), "A", closed("p1", 3))
    assert rig.mux.not_delivered("A", [exited("p1", 2), closed("p1", 3)]) == 2
    rig.mux.bridge_detached("A")

    rig.initialize("B", resume=vsid)
    page = only(reads(rig.initialized("B")))
    assert page == recovery_read(page, pid, 1)
    result = read_result([], 4, exited=True, exit_code=0, closed=True)
    assert rig.answer(page, result) == [ToBridge("B", exited("p1", 2)), ToBridge("B", closed("p1", 3))]


def test_a_discarded_loss_notice_is_told_again():
    rig = ready_rig()
    vsid = rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    notice = {"method": OUTPUT_LOST, "params": {"processId": "p1", "fromSeq": 2, "toSeq": 3}}
    rig.mux.bridge_detached("A")
    rig.push(output(pid, 2))  # dropped while detached
    rig.initialize("C", resume=vsid)
    page = only(reads(rig.initialized("C")))
    # Retention lost 2 and 3: the executor starts at 4.
    actions = rig.answer(page, read_result([chunk(4)], 5))
    assert to_bridge(actions, "C") == [notice, output("p1", 4)]
    assert rig.answer(only(reads(actions)), read_result([], 5)) == []
    assert rig.mux.not_delivered("C", [notice]) == 2
    rig.mux.bridge_detached("C")

    rig.initialize("D", resume=vsid)
    page = only(reads(rig.initialized("D")))
    assert page == recovery_read(page, pid, 1)
    # 4 was delivered: the read answers from 2 on, the executor still starts at 4.
    actions = rig.answer(page, read_result([chunk(4)], 5))
    assert to_bridge(actions, "D") == [notice]


def test_frames_of_a_connection_that_never_had_a_session_owe_nothing():
    rig = ready_rig()
    rig.attach("A")
    pid = rig.start("A", "p1")
    rig.deliver(output(pid, 1), "A", output("p1", 1))
    assert rig.mux.not_delivered("Z", [output("p1", 1)]) == 0
    assert rig.mux.not_delivered("A", [output("p1", 7), output("nope", 1)]) == 0  # never delivered / unknown
