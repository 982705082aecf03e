"""The gateway's live state (PipelinedState; LiveState as the redis-py client), against real
Redis, including Redis failing."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis as redis_sync
from test_admission_batcher import evalsha_calls
from test_gateway import TcpRelay
from yarl import URL

from gateway.runtime import open_live_state
from gateway.testing import until
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
        "resolves_keys", "admit", "admit_many", "settle", "void", "get_api_key", "ping", "close"
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


# -- LiveState (METER_REDIS_CLIENT=redis-py) keeps the pipe's promise on lost replies ---------


Lost = list[tuple[str, list[Call | KeyCall], int]]


def recording(state: LiveState) -> Lost:
    """Set ``state.lost`` as the gateway's wiring does; what it is told, in a list."""
    told: Lost = []
    state.lost = lambda key, calls, day: told.append((key, calls, day))
    return told


@contextlib.asynccontextmanager
async def through_relay(
    redis_url: str, *, redis_timeout: float
) -> AsyncIterator[tuple[LiveState, TcpRelay, Lost]]:
    """The gateway's redis-py state (``open_live_state``), reaching Redis through a relay
    the test can make drop requests or replies, with ``lost`` recorded."""
    relay = TcpRelay(URL(redis_url).port or 6379)
    port = await relay.start()
    settings = Settings.from_env(
        {
            "METER_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "METER_REDIS_TIMEOUT": str(redis_timeout),
        }
    )
    state = open_live_state(settings)
    try:
        yield state, relay, recording(state)
    finally:
        await state.close()
        await relay.cut()


async def test_each_admission_keeps_a_record_the_next_one_deletes(
    live_state: LiveState,
) -> None:
    await provision(live_state, 100)
    told = recording(live_state)
    records = [keys.admit_batch(SHARD, f"{live_state.batch_ids.prefix}{n}") for n in range(3)]
    assert (await live_state.admit(call(), DAY)).admitted
    assert await live_state.redis.exists(records[0]) == 1
    assert 0 < await live_state.redis.ttl(records[0]) <= keys.BATCH_RECORD_TTL_SECONDS
    assert (await live_state.admit(call(), DAY)).admitted
    assert [await live_state.redis.exists(r) for r in records[:2]] == [0, 1]
    assert told == []


async def test_an_admission_never_sent_is_not_handed_to_lost() -> None:
    state = LiveState.from_url(f"redis://127.0.0.1:{local_servers.free_port()}/0", timeout=0.3)
    told = recording(state)
    try:
        with pytest.raises(StateUnavailable):
            await state.admit(call(), DAY)
        assert told == []
    finally:
        await state.close()


@pytest.mark.parametrize("how", ["timeout", "cancelled"])
async def test_an_admission_whose_reply_is_lost_goes_to_lost_once_and_is_voided(
    redis_url: str, live_state: LiveState, how: str
) -> None:
    """The gateway's redis-py client: the reply of an admission that ran is lost. The
    caller gets StateUnavailable (or its cancellation), the admission goes to ``lost``,
    it is not sent again (Redis ran it once: a resend would debit twice), and its void
    names its debit."""
    await provision(live_state, 100)
    async with through_relay(redis_url, redis_timeout=0.5) as (state, relay, told):
        assert (await state.admit(call(), DAY)).admitted  # connected, through the relay
        before = evalsha_calls(redis_url)
        relay.replies = False
        admission = asyncio.ensure_future(state.admit(call(), DAY))
        await until(lambda: evalsha_calls(redis_url) == before + 1)  # it ran
        relay.replies = True  # a resend would now get through, and run again
        if how == "cancelled":
            admission.cancel()
            with pytest.raises(asyncio.CancelledError):
                await admission
        else:
            with pytest.raises(StateUnavailable):
                await admission
        assert evalsha_calls(redis_url) == before + 1
        assert [(calls, day) for _, calls, day in told] == [([call()], DAY)]
        debited = await state.void(told[0][0], told[0][1])
        assert [c for c, _ in debited] == [call()]
        stream = await live_state.redis.xrange(keys.usage_stream(SHARD))
        assert debited[0][1] == stream[-1][0].decode()  # the debit it ran
        assert (await state.admit(call(), DAY)).admitted  # on a fresh connection


async def test_records_an_unanswered_admission_was_to_delete_are_deleted_by_the_next(
    redis_url: str, live_state: LiveState
) -> None:
    """An admission carries the records of those answered before it, for Redis to delete.
    When its request is lost, the next one carries them again: none is left to its TTL."""
    await provision(live_state, 100)
    async with through_relay(redis_url, redis_timeout=0.3) as (state, relay, told):
        first = keys.admit_batch(SHARD, f"{state.batch_ids.prefix}0")
        assert (await state.admit(call(), DAY)).admitted
        assert await live_state.redis.exists(first) == 1
        relay.requests = False
        with pytest.raises(StateUnavailable):
            await state.admit(call(), DAY)  # never reached Redis
        relay.requests = True
        assert len(told) == 1 and await live_state.redis.exists(first) == 1
        assert (await state.admit(call(), DAY)).admitted
        assert await live_state.redis.exists(first) == 0
