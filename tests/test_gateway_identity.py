"""The key cache (pure, with an injected clock) and the identifier against a real Redis."""

from __future__ import annotations

import asyncio
import gc

import pytest

from gateway import errors
from gateway.identity import Identifier, KeyCache, presented_key
from gateway.metrics import GatewayMetrics
from meter import apikeys
from meter.hot_path_state import PipelinedState
from meter.live_state import KeyRecord, LiveState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(n: int) -> KeyRecord:
    return KeyRecord(f"key_{n}", "proj", "acct", 1)


def test_lru_is_bounded_and_keeps_the_recently_used() -> None:
    cache = KeyCache(2, 1.0)
    cache.put("a", record(1))
    cache.put("b", record(2))
    assert cache.get("a") == record(1)  # a is now the most recent
    cache.put("c", record(3))
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (record(1), None, record(3))
    assert len(cache) == 2


def test_cached_records_cost_the_garbage_collector_nothing() -> None:
    # A full collection scans every tracked object: a million cached named tuples made
    # each one take 0.7 s. The cache keeps plain tuples, which the collector untracks.
    cache = KeyCache(5000, 1.0)
    for n in range(1000):
        cache.put(f"d{n}", KeyRecord(f"gc_probe_{n}", "proj", "acct", 1))
    gc.collect()
    tracked = [
        o
        for o in gc.get_objects()
        if isinstance(o, tuple) and o and isinstance(o[0], str) and o[0].startswith("gc_probe_")
    ]
    assert tracked == []
    found = cache.get("d7")
    assert found == KeyRecord("gc_probe_7", "proj", "acct", 1)
    assert type(found) is KeyRecord


def test_negative_entries_expire() -> None:
    clock = Clock()
    cache = KeyCache(10, 1.0, now=clock)
    cache.put_unknown("x")
    assert cache.known_unknown("x")
    clock.now += 0.999
    assert cache.known_unknown("x")
    clock.now += 0.002
    assert not cache.known_unknown("x")
    assert not cache.known_unknown("never-seen")


def test_negative_entries_are_bounded() -> None:
    cache = KeyCache(10, 5.0, negative_size=2, now=Clock())
    for name in ("x", "y", "z"):
        cache.put_unknown(name)
    assert [cache.known_unknown(n) for n in ("x", "y", "z")] == [False, True, True]


def test_zero_ttl_caches_no_unknown_key() -> None:
    cache = KeyCache(10, 0.0, now=Clock())
    cache.put_unknown("x")
    assert not cache.known_unknown("x")


def test_a_known_key_clears_its_negative_entry() -> None:
    cache = KeyCache(10, 5.0, now=Clock())
    cache.put_unknown("x")
    cache.put("x", record(1))
    assert not cache.known_unknown("x")


class CountingLookup:
    def __init__(self, state: LiveState) -> None:
        self.state = state
        self.calls = 0

    async def get_api_key(self, key_hash_hex: str) -> KeyRecord | None:
        self.calls += 1
        return await self.state.get_api_key(key_hash_hex)


async def test_concurrent_misses_share_one_lookup_then_hit_the_cache(live_state: LiveState) -> None:
    key = apikeys.generate()
    await live_state.put_api_key(apikeys.digest(key), record(7))
    lookup = CountingLookup(live_state)
    identifier = Identifier(lookup, KeyCache(10, 1.0), GatewayMetrics())
    found = await asyncio.gather(*(identifier.identify(key) for _ in range(50)))
    assert found == [record(7)] * 50
    assert lookup.calls == 1
    assert await identifier.identify(key) == record(7)
    assert lookup.calls == 1


async def test_unknown_key_is_looked_up_once_per_ttl(live_state: LiveState) -> None:
    clock = Clock()
    lookup = CountingLookup(live_state)
    identifier = Identifier(lookup, KeyCache(10, 1.0, now=clock), GatewayMetrics())
    key = apikeys.generate()
    for _ in range(3):
        with pytest.raises(errors.UnknownKey):
            await identifier.identify(key)
    assert lookup.calls == 1
    # The key is created (or was just slow to replicate): found once the entry expires.
    await live_state.put_api_key(apikeys.digest(key), record(8))
    clock.now += 1.5
    assert await identifier.identify(key) == record(8)
    assert lookup.calls == 2


@pytest.mark.parametrize(
    ("given", "refusal"),
    [
        ({}, errors.MissingKey),
        ({"X-API-Key": ""}, errors.MissingKey),
        ({"X-API-Key": "mtr_short"}, errors.MalformedKey),
        ({"Authorization": "Bearer not-a-key"}, errors.MalformedKey),
    ],
)
async def test_missing_and_malformed_keys_need_no_lookup(
    live_state: LiveState, given: dict[str, str], refusal: type[errors.Refusal]
) -> None:
    lookup = CountingLookup(live_state)
    identifier = Identifier(lookup, KeyCache(10, 1.0), GatewayMetrics())
    pairs = [(n.encode(), v.encode()) for n, v in given.items()]
    with pytest.raises(refusal):
        await identifier.identify(presented_key(pairs))
    assert lookup.calls == 0


async def test_bad_checksum_is_refused_without_lookup(live_state: LiveState) -> None:
    key = apikeys.generate()
    typo = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    lookup = CountingLookup(live_state)
    identifier = Identifier(lookup, KeyCache(10, 1.0), GatewayMetrics())
    with pytest.raises(errors.MalformedKey):
        await identifier.identify(typo)
    assert lookup.calls == 0


async def test_redis_down_is_a_503_refusal() -> None:
    from meter.local_servers import free_port

    state = LiveState.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    identifier = Identifier(state, KeyCache(10, 1.0), GatewayMetrics())
    try:
        with pytest.raises(errors.StateUnavailable) as info:
            await identifier.identify(apikeys.generate())
        assert info.value.status == 503
    finally:
        await state.close()


async def test_a_cancelled_caller_does_not_cancel_the_lookup_others_wait_for(
    live_state: LiveState, redis_url: str
) -> None:
    key = apikeys.generate()
    await live_state.put_api_key(apikeys.digest(key), record(9))
    state = PipelinedState.from_url(redis_url, timeout=5.0)
    try:
        identifier = Identifier(state, KeyCache(10, 1.0), GatewayMetrics())
        callers = [asyncio.ensure_future(identifier.identify(key)) for _ in range(20)]
        await asyncio.sleep(0)  # one loop pass: each caller runs up to its wait
        assert [len(w) for w in identifier._pending.values()] == [20]  # one lookup, 20 waiting
        for gone in callers[:5]:
            gone.cancel()
        done = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in done[:5])
        assert done[5:] == [record(9)] * 15
        assert identifier.cached(key) == record(9)
    finally:
        await state.close()


async def test_redis_down_fails_every_waiting_caller_with_a_503() -> None:
    from meter.local_servers import free_port

    state = PipelinedState.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        identifier = Identifier(state, KeyCache(10, 1.0), GatewayMetrics())
        key = apikeys.generate()
        done = await asyncio.gather(
            *(identifier.identify(key) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, errors.StateUnavailable) for r in done)
        assert len({id(r) for r in done}) == 3  # each caller its own exception
        assert identifier.cached(key) is None
    finally:
        await state.close()
