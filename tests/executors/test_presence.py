"""Executor presence: newest connection wins, evicted holders cannot clobber, entries expire."""

from __future__ import annotations

import time

import pytest

from executors.presence import Holder, PresenceStore


@pytest.fixture
def make_store(store_backend):
    def build(ttl: float = 30.0):
        return PresenceStore(ttl)

    return build


def holder(connection_id: str) -> Holder:
    return Holder(channel_name=f"chan.{connection_id}", connection_id=connection_id, since=time.time())


def test_claim_get_online(make_store):
    store = make_store()
    assert store.claim("exe_a", holder("c1")) is None
    assert store.get("exe_a").connection_id == "c1"
    assert store.online(["exe_a", "exe_b"]) == {"exe_a"}
    assert store.online([]) == set()
    assert store.all_online() == {"exe_a"}


def test_newest_wins_and_old_holder_cannot_release_or_refresh(make_store):
    store = make_store()
    store.claim("exe_a", holder("old"))
    previous = store.claim("exe_a", holder("new"))
    assert previous is not None
    assert previous.connection_id == "old"
    assert not store.release("exe_a", "old")
    assert not store.refresh("exe_a", "old")
    assert store.get("exe_a").connection_id == "new"
    assert store.release("exe_a", "new")
    assert store.get("exe_a") is None
    assert not store.release("exe_a", "new")


def test_entries_expire_unless_refreshed(make_store):
    store = make_store(ttl=0.3)
    store.claim("exe_a", holder("c1"))
    store.claim("exe_b", holder("c2"))
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        assert store.refresh("exe_a", "c1")
        time.sleep(0.1)
    assert store.online(["exe_a", "exe_b"]) == {"exe_a"}
    assert not store.refresh("exe_b", "c2")


def test_redis_presence_is_visible_to_another_process_view():
    PresenceStore(30).claim("exe_a", holder("c1"))
    other = PresenceStore(30)
    assert other.get("exe_a") == PresenceStore(30).get("exe_a")
    assert other.online(["exe_a"]) == {"exe_a"}


def test_a_vanished_entry_is_put_back_by_its_holder_only(make_store):
    """A restarted Redis loses every entry: the live holder's refresh puts its own back; an
    entry someone else holds is never overwritten."""
    store = make_store()
    mine = holder("c1")
    store.claim("exe_a", mine)
    assert store.release("exe_a", "c1")  # as good as lost
    assert not store.refresh("exe_a", "c1")  # without its entry, a refresh cannot put it back
    assert not store.refresh("exe_a", "c1", holder("c2"))  # nor with someone else's
    assert store.refresh("exe_a", "c1", mine)
    assert store.get("exe_a") == mine
    store.claim("exe_a", holder("c2"))
    assert not store.refresh("exe_a", "c1", mine)
    assert store.get("exe_a").connection_id == "c2"
