"""NameResolver: cache, coalesced refreshes, throttling, stale fallback, the model's view."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sdk.resolver import NameResolver, ResolveError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """A fetch function whose answers the test sets; counts calls, can fail or block."""

    def __init__(self, bindings: list[dict[str, Any]]) -> None:
        self.bindings = bindings
        self.calls = 0
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return list(self.bindings)


BOX = {
    "exe_id": "exe_box",
    "name": "box",
    "description": "the box",
    "is_default": True,
    "last_seen_at": "2026-01-01T00:00:00Z",
}
GPU = {"exe_id": "exe_gpu", "name": "gpu", "description": "", "is_default": False}


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_a_fresh_hit_is_served_from_the_cache(clock):
    source = Source([BOX, GPU])
    resolver = NameResolver(source, ttl=10.0, clock=clock)
    assert await resolver.resolve("box") == "exe_box"
    clock.now += 9.9
    assert await resolver.resolve("gpu") == "exe_gpu"
    assert source.calls == 1
    clock.now += 0.2  # now stale: refreshed, and the new answer wins
    source.bindings = [{**BOX, "exe_id": "exe_box2"}]
    assert await resolver.resolve("box") == "exe_box2"
    assert source.calls == 2


async def test_concurrent_refreshes_share_one_fetch(clock):
    source = Source([BOX, GPU])
    source.gate = asyncio.Event()
    resolver = NameResolver(source, clock=clock)
    waiting = [asyncio.ensure_future(resolver.resolve(name)) for name in ("box", "gpu", "box", "nope")]
    await asyncio.sleep(0.01)
    assert source.calls == 1
    source.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert results[:3] == ["exe_box", "exe_gpu", "exe_box"]
    assert isinstance(results[3], ResolveError)
    assert source.calls == 1


async def test_a_caller_giving_up_does_not_cancel_the_shared_fetch(clock):
    source = Source([BOX])
    source.gate = asyncio.Event()
    resolver = NameResolver(source, clock=clock)
    impatient = asyncio.ensure_future(resolver.resolve("box"))
    patient = asyncio.ensure_future(resolver.resolve("box"))
    await asyncio.sleep(0.01)
    impatient.cancel()
    source.gate.set()
    assert await patient == "exe_box"
    assert source.calls == 1


async def test_misses_are_throttled_to_one_fetch_per_ttl(clock):
    source = Source([BOX])
    resolver = NameResolver(source, ttl=10.0, clock=clock)
    for _ in range(3):
        with pytest.raises(ResolveError) as missing:
            await resolver.resolve("gpu")
    assert str(missing.value) == "no environment named 'gpu' (run list_environments to see what's available)"
    assert source.calls == 1
    clock.now += 10.0
    source.bindings = [BOX, GPU]  # it came online: found at the next refresh
    assert await resolver.resolve("gpu") == "exe_gpu"
    assert source.calls == 2


async def test_a_failed_refresh_falls_back_to_the_stale_entry_and_is_throttled_too(clock):
    source = Source([BOX])
    resolver = NameResolver(source, ttl=10.0, clock=clock)
    assert await resolver.resolve("box") == "exe_box"
    clock.now += 11
    source.error = RuntimeError("database down")
    assert await resolver.resolve("box") == "exe_box"
    assert source.calls == 2
    assert await resolver.resolve("box") == "exe_box"
    assert source.calls == 2  # the failure bumped the timestamp: no fetch storm during an outage
    with pytest.raises(ResolveError, match="no environment named 'gpu'"):
        await resolver.resolve("gpu")


async def test_a_failed_first_refresh_says_why(clock):
    source = Source([])
    source.error = RuntimeError("database down")
    resolver = NameResolver(source, clock=clock)
    with pytest.raises(ResolveError, match="environment list unavailable: database down"):
        await resolver.resolve("box")


async def test_an_empty_name_is_refused_without_fetching(clock):
    source = Source([BOX])
    resolver = NameResolver(source, clock=clock)
    with pytest.raises(ResolveError, match="env name required"):
        await resolver.resolve("")
    assert source.calls == 0


async def test_llm_view_always_fetches_and_hides_exe_ids(clock):
    unnamed = {"exe_id": "exe_anon", "name": "", "description": "no name"}
    source = Source([BOX, GPU, unnamed])
    resolver = NameResolver(source, clock=clock)
    view = await resolver.llm_view()
    assert view == [
        {"name": "box", "description": "the box", "is_default": True, "last_seen": "2026-01-01T00:00:00Z"},
        {"name": "gpu"},
    ]
    await resolver.llm_view()
    assert source.calls == 2
    assert await resolver.resolve("gpu") == "exe_gpu"  # the view refreshed the cache
    assert source.calls == 2
    source.error = RuntimeError("boom")
    clock.now += 1
    with pytest.raises(RuntimeError, match="boom"):
        await resolver.llm_view()
