"""The shared virtual-session table after Redis lost it (restart): the owner writes its copy back."""

from __future__ import annotations

import pytest

from bridge import exec_session_store, vsession_store
from bridge.multiplexer import TableChanges
from codexgw import redis as gwredis

pytestmark = pytest.mark.django_db


def changes(**upserts: dict[str, object]) -> TableChanges:
    return TableChanges(upserts=upserts, deletes=[], next_handle=7, urgent=True)


async def test_a_lost_table_is_written_back_by_its_owner_with_the_exec_session():
    redis = gwredis.sync_client()
    assert redis is not None
    await vsession_store.claim("exe_t", "inbox-a")
    await exec_session_store.save("exe_t", exec_session_store.SavedSession("sess-1", {"os": "linux"}))
    assert await vsession_store.write("exe_t", "inbox-a", changes(s1={"prefix": "v1", "processes": {}}))
    redis.delete(gwredis.key("vsessions", "exe_t"), gwredis.key("execsession", "exe_t"))  # Redis restarted

    assert await vsession_store.write("exe_t", "inbox-a", changes(s2={"prefix": "v2", "processes": {}}))
    claimed = await vsession_store.claim("exe_t", "inbox-b")
    assert claimed.previous_owner == "inbox-a"
    assert set(claimed.sessions) == {"s1", "s2"}
    assert claimed.next_handle == 7
    saved = await exec_session_store.load("exe_t")
    assert saved is not None
    assert saved.session_id == "sess-1"


async def test_a_table_another_process_claimed_is_not_overwritten():
    await vsession_store.claim("exe_u", "inbox-a")
    await vsession_store.claim("exe_u", "inbox-b")
    assert not await vsession_store.write("exe_u", "inbox-a", changes(s1={"prefix": "v1", "processes": {}}))
    # Lost after that: the old owner has no copy any more, so it cannot put the table back.
    redis = gwredis.sync_client()
    assert redis is not None
    redis.delete(gwredis.key("vsessions", "exe_u"))
    assert not await vsession_store.write("exe_u", "inbox-a", changes(s1={"prefix": "v1", "processes": {}}))
    assert (await vsession_store.claim("exe_u", "inbox-c")).sessions == {}
