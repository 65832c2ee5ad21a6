"""The revoked-turn set, on the real Redis (shared by gateway processes) and on the embedded
default's in-process fakeredis."""

from __future__ import annotations

import threading
import time

import pytest

from executors.revocation import RevokedSet, revoke_turn, revoked_set
from executors.tasks import prune_revoked_set


@pytest.fixture
def make_set(store_backend):
    def build(capacity: int):
        return RevokedSet(capacity)

    return build


def test_add_and_contains(make_set):
    revoked = make_set(10)
    assert not revoked.contains("t1")
    assert revoked.add("t1", int(time.time()) + 60) == 0
    assert revoked.contains("t1")
    assert not revoked.contains("t2")


def test_prune_drops_expired_and_keeps_live(make_set):
    revoked = make_set(10)
    now = int(time.time())
    revoked.add("old", now - 5)
    revoked.add("live", now + 60)
    assert revoked.contains("old")  # membership does not look at exp
    assert revoked.prune() == 1
    assert not revoked.contains("old")
    assert revoked.contains("live")


def test_capacity_evicts_closest_to_expiry_and_reports_live_evictions(make_set):
    revoked = make_set(3)
    now = int(time.time())
    revoked.add("a", now + 100)
    revoked.add("b", now + 200)
    revoked.add("c", now + 300)
    assert revoked.add("d", now + 400) == 1  # "a" was still live
    assert revoked.size() == 3
    assert not revoked.contains("a")
    assert all(revoked.contains(t) for t in ("b", "c", "d"))
    revoked.add("x", now - 1)  # an already-expired entry is the one evicted, not a live one
    assert revoked.size() == 3


def test_re_adding_updates_exp(make_set):
    revoked = make_set(2)
    now = int(time.time())
    revoked.add("a", now + 10)
    revoked.add("b", now + 20)
    revoked.add("a", now + 30)
    revoked.add("c", now + 40)
    assert revoked.contains("a")
    assert not revoked.contains("b")


def test_concurrent_adds_keep_the_bound(make_set):
    revoked = make_set(50)
    now = int(time.time())

    def worker(offset: int) -> None:
        for i in range(40):
            revoked.add(f"t{offset}-{i}", now + 1000 + i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert revoked.size() == 50


def test_redis_set_is_shared_between_instances():
    writer, reader = RevokedSet(10), RevokedSet(10)
    writer.add("shared", int(time.time()) + 60)
    assert reader.contains("shared")


def test_revoke_turn_logs_live_eviction(settings, caplog):
    settings.CXG_REVOKED_SET_CAPACITY = 1
    now = int(time.time())
    revoke_turn("first", now + 100)
    with caplog.at_level("WARNING"):
        revoke_turn("second", now + 200)
    assert "evicted unexpired revocations" in caplog.text
    assert revoked_set().contains("second")


def test_prune_task_removes_expired_entries():
    revoked_set().add("gone", int(time.time()) - 1)
    revoked_set().add("kept", int(time.time()) + 100)
    assert prune_revoked_set.apply().get() == 1
    assert not revoked_set().contains("gone")
    assert revoked_set().contains("kept")
