"""The gateway's live state (PipelinedState; LiveState fits the same seam), against real
Redis, including Redis failing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from meter import keys, local_servers
from meter.hot_path_state import HotPathState, PipelinedState
from meter.live_state import (
    AccountConfig,
    Call,
    KeyCall,
    KeyRecord,
    LiveState,
    StateUnavailable,
)
from meter.money import Outcome
from meter.redis_pipe import RedisTimeout
from meter.settings import Settings

DAY = 20_400
SHARD = 3


def call(account: str = "acct", price: int = 7, key_id: str = "key_1") -> Call:
    return Call(SHARD, account, "proj_1", key_id, "chat", price)


async def provision(state: LiveState, balance: int, account: str = "acct", **kw: object) -> None:
    config = AccountConfig(
        version=1,
        overage_line=0,
        daily_hard_limit=kw.get("daily_hard_limit"),  # type: ignore[arg-type]
        daily_notify_threshold=None,
        low_balance_threshold=None,
        suspended=False,
    )
    assert await state.sync_account(SHARD, account, config)
    if balance:
        assert (await state.credit(SHARD, account, f"seed-{account}", balance))[0] == 1


@pytest.fixture
async def fast(redis_url: str) -> AsyncIterator[PipelinedState]:
    state = PipelinedState.from_url(redis_url, timeout=5.0)
    yield state
    await state.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[local_servers.RedisServer]:
    server = local_servers.start_redis(tmp_path / "redis")
    yield server
    server.stop(kill=True)


def test_both_adapters_offer_the_hot_path() -> None:
    wanted = {
        "resolves_keys", "admit", "admit_many", "settle", "void", "get_api_key",
        "get_price_table", "ping", "close"
    }  # fmt: skip
    declared = {name for name in vars(HotPathState) if not name.startswith("_")}
    assert declared == wanted
    for cls in (LiveState, PipelinedState):
        assert all(callable(getattr(cls, name)) for name in wanted - {"resolves_keys"}), cls
        assert hasattr(cls, "resolves_keys"), cls


async def test_from_settings(redis_url: str) -> None:
    settings = Settings.from_env({"METER_REDIS_URL": redis_url, "METER_REDIS_TIMEOUT": "0.5"})
    state = PipelinedState.from_settings(settings)
    try:
        assert state.pipe.timeout == 0.5
        await state.ping()
    finally:
        await state.close()


async def test_admit_settle_and_read_a_key(fast: PipelinedState, live_state: LiveState) -> None:
    await provision(live_state, 1_000_000, daily_hard_limit=1_000_000)
    c = call(price=600_000)
    admitted = await fast.admit(c, DAY)
    assert admitted.admitted and admitted.balance == 400_000 and admitted.event_id
    assert await fast.settle(c, admitted, 400_000, DAY) == 1
    assert await fast.settle(c, admitted, 400_000, DAY) == 0
    assert await fast.settle(c, admitted, 0, DAY) == 0
    state = await live_state.read_account(SHARD, "acct")
    assert state is not None and (state.balance, state.spent_today) == (800_000, 200_000)
    ghost = call(account="ghost")
    assert await fast.settle(ghost, admitted, 5, DAY) == -1

    digest = hashlib.sha256(b"mk_live_example").hexdigest()
    assert await fast.get_api_key(digest) is None
    record = KeyRecord(key_id="key_1", project_id="proj_1", account_id="acct", shard=SHARD)
    await live_state.put_api_key(digest, record)
    assert await fast.get_api_key(digest) == record
    await fast.ping()
    await live_state.ping()


async def test_admissions_survive_a_script_cache_flush(
    fast: PipelinedState, live_state: LiveState, redis_url: str
) -> None:
    await provision(live_state, 700)
    assert (await fast.admit(call(), DAY)).admitted
    with redis_sync.Redis.from_url(redis_url) as client:
        client.script_flush()
    results = await fast.admit_many([call()] * 150, DAY)
    assert [r.outcome for r in results].count(Outcome.ADMITTED) == 99
    assert await live_state.redis.xlen(keys.usage_stream(SHARD)) == 100


async def test_a_paused_redis_times_out_within_the_bound(
    own_redis: local_servers.RedisServer,
) -> None:
    live = LiveState.from_url(own_redis.url)
    fast = PipelinedState.from_url(own_redis.url, timeout=0.25)
    admin = redis_sync.Redis.from_url(own_redis.url)
    try:
        await provision(live, 1000)
        first = await fast.admit(call(), DAY)
        assert first.admitted
        admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            fast.admit(call(), DAY),
            fast.admit(call(), DAY),
            fast.settle(call(), first, 1, DAY),
            return_exceptions=True,
        )
        elapsed = loop.time() - started
        assert all(isinstance(r, RedisTimeout) for r in results), results
        assert 0.2 <= elapsed < 0.25 + 0.4
        admin.execute_command("CLIENT", "UNPAUSE")
        assert (await fast.admit(call(), DAY)).admitted  # on a new connection
    finally:
        admin.close()
        await live.close()
        await fast.close()


async def test_redis_killed_mid_traffic(own_redis: local_servers.RedisServer) -> None:
    """Every call either gets a real admission or StateUnavailable; after a restart, calls work."""
    live = LiveState.from_url(own_redis.url)
    fast = PipelinedState.from_url(own_redis.url, timeout=5)
    admin = redis_sync.Redis.from_url(own_redis.url)
    await provision(live, 10**9)
    await live.close()
    admitted = 0
    enough = asyncio.Event()

    async def worker() -> BaseException:
        nonlocal admitted
        while True:
            try:
                result = await fast.admit(call(price=1), DAY)
            except StateUnavailable as exc:
                return exc
            assert result.admitted
            admitted += 1
            if admitted >= 500:
                enough.set()

    workers = [asyncio.create_task(worker()) for _ in range(64)]
    try:
        await enough.wait()
        # Freeze Redis, read what it really recorded, then kill it: no yielding in between,
        # so every worker has an admission in flight.
        admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        recorded = admin.xlen(keys.usage_stream(SHARD))
        own_redis.stop(kill=True)
        errors = await asyncio.gather(*workers)
        assert all(isinstance(e, StateUnavailable) for e in errors)
        assert 500 <= admitted <= recorded  # never a success Redis did not record

        with pytest.raises(StateUnavailable):
            await fast.admit(call(), DAY)
        restarted = local_servers.start_redis(own_redis.dir, port=own_redis.port)
        own_redis.proc = restarted.proc
        live = LiveState.from_url(own_redis.url)
        await provision(live, 70)
        await live.close()
        results = await fast.admit_many([call()] * 20, DAY)
        assert [r.outcome for r in results].count(Outcome.ADMITTED) == 10
    finally:
        for task in workers:
            task.cancel()
        admin.close()
        await fast.close()


async def test_batches_span_shards_unless_redis_is_a_cluster_node(
    fast: PipelinedState, tmp_path: Path
) -> None:
    assert not fast.batcher.cross_shard and not fast.resolves_keys  # until Redis answered
    assert await fast.choose_batching() is True
    assert fast.batcher.cross_shard and fast.resolves_keys
    # The cluster bus port is given: by default it is the port + 10,000, and Redis
    # refuses to start when a free port above 55,535 was picked.
    cluster = ("--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf"))
    bus = ("--cluster-port", str(local_servers.free_port()))
    node = local_servers.start_redis(tmp_path / "cluster", extra=cluster + bus)
    state = PipelinedState.from_url(node.url, timeout=5.0)
    try:
        assert await state.choose_batching() is False
        assert not state.batcher.cross_shard and not state.resolves_keys
        # a KeyCall handed to it anyway fails closed: the node refuses undeclared keys
        with pytest.raises(StateUnavailable):
            await state.admit(KeyCall("ab" * 32, "chat", 1), 20_400)
    finally:
        await state.close()
        node.stop(kill=True)


async def test_the_batching_choice_waits_for_redis_to_come_back(tmp_path: Path) -> None:
    from gateway.runtime import choose_batching

    port = local_servers.free_port()
    state = PipelinedState.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        deciding = asyncio.ensure_future(choose_batching(state, 0.05))
        with pytest.raises(StateUnavailable):
            await state.ping()  # Redis is away: the choice cannot be made yet
        assert not deciding.done()
        server = local_servers.start_redis(tmp_path / "late", port)
        try:
            assert await asyncio.wait_for(deciding, 10) is True
            assert state.batcher.cross_shard
        finally:
            server.stop(kill=True)
    finally:
        await state.close()
