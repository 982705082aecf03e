"""Batched admissions against a real Redis: one script call per shard per pass, exact outcomes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import hiredis
import pytest
import redis as redis_sync
from fake_redis import fake_server

from meter import keys
from meter.admission_batcher import AdmissionBatcher
from meter.hot_path_state import PipelinedState
from meter.live_state import (
    AccountConfig,
    Call,
    KeyCall,
    KeyRecord,
    LiveState,
    StateUnavailable,
    admit_arguments,
    parse_admit_reply,
    resolved_flags,
)
from meter.money import Outcome
from meter.redis_pipe import RedisPipe, RedisReplyError
from meter.scripts import ADMIT

DAY = 20_400


def config(**kw: object) -> AccountConfig:
    values: dict[str, object] = dict(
        version=1,
        overage_line=0,
        daily_hard_limit=None,
        daily_notify_threshold=None,
        low_balance_threshold=None,
        suspended=False,
    )
    values.update(kw)
    return AccountConfig(**values)  # type: ignore[arg-type]


def call(account: str, shard: int, price: int = 7, key_id: str = "key_1") -> Call:
    return Call(shard, account, "proj_1", key_id, "chat", price)


async def provision(state: LiveState, shard: int, account: str, balance: int, **kw: object) -> None:
    assert await state.sync_account(shard, account, config(**kw))
    if balance:
        assert (await state.credit(shard, account, f"seed-{account}", balance))[0] == 1


def evalsha_calls(redis_url: str) -> int:
    """EVALSHA calls Redis has run (a plain call: a condition for ``until`` too)."""
    with redis_sync.Redis.from_url(redis_url) as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.fixture
async def pipe(redis_url: str) -> AsyncIterator[RedisPipe]:
    p = RedisPipe(redis_url, timeout=5.0)
    yield p
    await p.close()


@pytest.mark.parametrize(
    ("calls", "shards", "max_batch", "cross_shard", "script_calls"),
    [
        (1, 1, 256, False, 1),
        (200, 1, 256, False, 1),
        (200, 2, 256, False, 2),
        (600, 1, 256, False, 3),
        (10, 3, 2, False, 6),
        (200, 16, 256, False, 16),
        (200, 16, 256, True, 1),
        (600, 16, 256, True, 3),
        (10, 3, 2, True, 5),
    ],
)
async def test_one_script_call_per_shard_per_pass(
    live_state: LiveState,
    pipe: RedisPipe,
    redis_url: str,
    calls: int,
    shards: int,
    max_batch: int,
    cross_shard: bool,
    script_calls: int,
) -> None:
    for shard in range(shards):
        await provision(live_state, shard, f"acct_{shard}", 10**9)
    batcher = AdmissionBatcher(pipe, max_batch=max_batch, cross_shard=cross_shard)
    assert (await batcher.admit(call("acct_0", 0), DAY)).admitted  # the script is loaded
    before = evalsha_calls(redis_url)
    results = await asyncio.gather(
        *(batcher.admit(call(f"acct_{i % shards}", i % shards), DAY) for i in range(calls))
    )
    assert all(r.admitted for r in results)
    assert evalsha_calls(redis_url) - before == script_calls


async def test_calls_on_different_days_go_in_different_scripts(
    live_state: LiveState, pipe: RedisPipe
) -> None:
    await provision(live_state, 0, "acct", 100, daily_hard_limit=10)
    batcher = AdmissionBatcher(pipe)
    today, tomorrow = await asyncio.gather(
        batcher.admit(call("acct", 0, price=10), DAY),
        batcher.admit(call("acct", 0, price=10), DAY + 1),
    )
    assert today.admitted and tomorrow.admitted and tomorrow.limit_remaining == 0


@pytest.mark.parametrize("cross_shard", [False, True])
@pytest.mark.parametrize(
    ("setup", "refusal"),
    [
        (dict(balance=700), Outcome.NO_CREDIT),
        (dict(balance=10_000, daily_hard_limit=700), Outcome.DAILY_LIMIT),
        (dict(balance=350, overage_line=350), Outcome.NO_CREDIT),
    ],
)
async def test_race_admits_exactly_what_the_account_covers(
    live_state: LiveState,
    redis_url: str,
    setup: dict[str, int],
    refusal: Outcome,
    cross_shard: bool,
) -> None:
    """2,000 concurrent calls through two batchers (two gateways) race 100 calls' worth."""
    shard, account = 5, "acct_race"
    limits = {k: v for k, v in setup.items() if k != "balance"}
    balance = setup["balance"]
    await provision(live_state, shard, account, balance, **limits)
    pipes = [RedisPipe(redis_url), RedisPipe(redis_url)]
    batchers = [AdmissionBatcher(p, max_batch=128, cross_shard=cross_shard) for p in pipes]
    try:
        results = await asyncio.gather(
            *(batchers[i % 2].admit(call(account, shard, price=7), DAY) for i in range(2000))
        )
    finally:
        for p in pipes:
            await p.close()
    outcomes = [r.outcome for r in results]
    assert outcomes.count(Outcome.ADMITTED) == 100
    assert outcomes.count(refusal) == 1900
    state = await live_state.read_account(shard, account)
    assert state is not None
    assert state.balance == balance - 700 and state.spent_today == 700
    events = await live_state.redis.xrange(keys.usage_stream(shard))
    debits = [fields for _, fields in events if fields[b"t"] == b"d"]
    assert len(debits) == 100 and all(f[b"m"] == b"7" for f in debits)
    # Each caller's reply is its own: balances after each admission are all distinct.
    admitted_balances = sorted(r.balance for r in results if r.admitted)
    assert admitted_balances == [balance - 700 + 7 * i for i in range(100)]


async def test_race_with_keys_resolved_by_the_script_admits_exactly_what_is_covered(
    live_state: LiveState, redis_url: str
) -> None:
    """As above with a cold key cache: half the callers send only their key's digest."""
    shard, account = 6, "acct_keyrace"
    await provision(live_state, shard, account, 700)
    record = KeyRecord("key_1", "proj_1", account, shard)
    await live_state.put_api_key("ee" * 32, record)
    pipes = [RedisPipe(redis_url), RedisPipe(redis_url)]
    batchers = [AdmissionBatcher(p, max_batch=128, cross_shard=True) for p in pipes]
    known, by_key = call(account, shard, price=7), KeyCall("ee" * 32, "chat", 7)
    try:
        results = await asyncio.gather(
            *(batchers[i % 2].admit(by_key if i % 3 else known, DAY) for i in range(2000))
        )
    finally:
        for p in pipes:
            await p.close()
    assert [r.outcome for r in results].count(Outcome.ADMITTED) == 100
    assert {r.key for i, r in enumerate(results) if i % 3} == {record}
    assert {r.key for i, r in enumerate(results) if not i % 3} == {None}
    assert sorted(r.balance for r in results if r.admitted) == [7 * i for i in range(100)]
    assert await live_state.redis.xlen(keys.usage_stream(shard)) == 100


@pytest.mark.parametrize(("cross_shard", "script_calls"), [(False, 4), (True, 1)])
async def test_each_caller_gets_its_own_admission(
    live_state: LiveState, pipe: RedisPipe, redis_url: str, cross_shard: bool, script_calls: int
) -> None:
    await provision(live_state, 1, "rich", 10_000)
    await provision(live_state, 1, "poor", 5)
    await provision(live_state, 2, "frozen", 10_000, suspended=True)
    await provision(live_state, 2, "limited", 10_000, daily_hard_limit=20)
    await provision(live_state, 3, "revoking", 10_000)
    await live_state.revoke_key(3, "revoking", "key_bad")
    cases = [
        (call("rich", 1, price=100), Outcome.ADMITTED),
        (call("poor", 1, price=100), Outcome.NO_CREDIT),
        (call("frozen", 2, price=1), Outcome.SUSPENDED),
        (call("limited", 2, price=21), Outcome.DAILY_LIMIT),
        (call("limited", 2, price=20), Outcome.ADMITTED),
        (call("revoking", 3, price=1, key_id="key_bad"), Outcome.KEY_REVOKED),
        (call("revoking", 3, price=1, key_id="key_good"), Outcome.ADMITTED),
        (call("ghost", 4, price=1), Outcome.UNKNOWN_ACCOUNT),
    ] * 5
    random.Random(7).shuffle(cases)
    batcher = AdmissionBatcher(pipe, cross_shard=cross_shard)
    await batcher.admit(call("ghost", 4), DAY)  # admit.lua is loaded
    before = evalsha_calls(redis_url)
    results = await asyncio.gather(*(batcher.admit(c, DAY) for c, _ in cases))
    assert evalsha_calls(redis_url) - before == script_calls
    rich_balances = []
    limited_admitted = 0
    for (c, expected), result in zip(cases, results, strict=True):
        if c.account_id == "limited" and c.price == 20:  # only one of the five fits the limit
            assert result.outcome in (Outcome.ADMITTED, Outcome.DAILY_LIMIT)
            limited_admitted += result.admitted
            continue
        assert result.outcome is expected, c
        if c.account_id == "rich":
            rich_balances.append(result.balance)
        if expected is not Outcome.ADMITTED and c.account_id != "limited":
            assert result.event_id == ""
    assert limited_admitted == 1
    assert sorted(rich_balances) == [9_500, 9_600, 9_700, 9_800, 9_900]


async def test_a_failed_script_fails_its_batch_only(live_state: LiveState, pipe: RedisPipe) -> None:
    await provision(live_state, 1, "good", 100)
    await live_state.redis.set(keys.account(2, "broken"), "not a hash")  # HMGET fails
    batcher = AdmissionBatcher(pipe)
    good = batcher.admit(call("good", 1), DAY)
    broken = [batcher.admit(call("broken", 2), DAY) for _ in range(3)]
    assert (await good).admitted
    for fut in broken:
        with pytest.raises(RedisReplyError, match="WRONGTYPE") as info:
            await fut
        assert isinstance(info.value, StateUnavailable)


async def test_admit_many_keeps_the_order_of_the_calls(
    live_state: LiveState, pipe: RedisPipe
) -> None:
    await provision(live_state, 1, "a", 10)
    await provision(live_state, 2, "b", 10)
    batcher = AdmissionBatcher(pipe)
    calls = [call("a", 1, price=4), call("b", 2, price=4)] * 3
    results = await batcher.admit_many(calls, DAY)
    assert [r.outcome for r in results] == [Outcome.ADMITTED] * 4 + [Outcome.NO_CREDIT] * 2
    assert [r.balance for r in results] == [6, 6, 2, 2, 2, 2]


@pytest.mark.parametrize("cross_shard", [False, True])
async def test_the_batcher_agrees_with_live_state(
    live_state: LiveState, pipe: RedisPipe, cross_shard: bool
) -> None:
    """The same random calls, one at a time through LiveState, batched through the pipe."""
    rng = random.Random(3)
    accounts = [(s, f"acct_{s}_{i}") for s in range(3) for i in range(3)]
    for shard, account in accounts:
        balance = rng.randint(0, 300)
        limits = dict(daily_hard_limit=rng.choice([None, 150]), overage_line=rng.choice([0, 40]))
        for copy in ("x", "y"):
            await provision(live_state, shard, account + copy, balance, **limits)
    calls = [(*rng.choice(accounts), rng.choice([0, 5, 30, 90])) for _ in range(300)]
    batcher = AdmissionBatcher(pipe, max_batch=16, cross_shard=cross_shard)
    batched = await asyncio.gather(
        *(batcher.admit(call(a + "y", s, price=p), DAY) for s, a, p in calls)
    )
    one_by_one = [await live_state.admit(call(a + "x", s, price=p), DAY) for s, a, p in calls]
    strip = [(r.outcome, r.balance, r.available, r.limit_remaining, r.signals) for r in one_by_one]
    assert [
        (r.outcome, r.balance, r.available, r.limit_remaining, r.signals) for r in batched
    ] == strip


async def test_an_unreachable_redis_fails_every_caller() -> None:
    from meter.local_servers import free_port

    pipe = RedisPipe(f"redis://127.0.0.1:{free_port()}/0")
    batcher = AdmissionBatcher(pipe)
    try:
        results = await asyncio.gather(
            *(batcher.admit(call("a", i % 3), DAY) for i in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, StateUnavailable) for r in results), results
    finally:
        await pipe.close()


def test_cross_shard_arguments_keep_each_call_on_its_own_shard() -> None:
    calls = [call("a", 1), call("b", 2), call("a", 1), call("c", 2)]
    key_names, args = admit_arguments(calls, DAY, None, keys.admit_batch(None, "b1"))
    assert key_names == [
        keys.admit_batch(None, "b1"),
        keys.usage_stream(1),
        keys.account(1, "a"),
        keys.usage_stream(2),
        keys.account(2, "b"),
        keys.account(2, "c"),
    ]
    groups = [args[4 + 7 * i : 6 + 7 * i] for i in range(4)]  # account index, stream index
    assert groups == [[3, 2], [5, 4], [3, 2], [6, 4]]
    one_shard, _ = admit_arguments(calls[:1] * 2, DAY, 1, keys.admit_batch(1, "b2"))
    assert one_shard == [keys.admit_batch(1, "b2"), keys.usage_stream(1), keys.account(1, "a")]


async def test_a_reply_the_batch_cannot_read_fails_its_callers_not_the_pipe() -> None:
    """The pipe hands admit.lua's reply to the batch inside ``data_received``: a reply
    of the wrong shape fails that batch's callers (503) and the connection goes on."""

    hung_up = asyncio.Event()

    async def short_replies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                commands.feed(data)
                while (command := commands.gets()) is not False:
                    reply = b"+PONG\r\n" if command[0] == b"PING" else b"*2\r\n:1\r\n:2\r\n"
                    writer.write(reply)
        finally:
            writer.close()
            hung_up.set()

    async with fake_server(short_replies) as url:
        pipe = RedisPipe(url, timeout=5.0)
        batcher = AdmissionBatcher(pipe)
        try:
            for _ in range(2):  # the second batch goes over the same connection
                with pytest.raises(RedisReplyError, match=r"unexpected admit\.lua reply"):
                    await asyncio.wait_for(batcher.admit(call("acct", 1), DAY), 5)
            assert await pipe.execute("PING") == b"PONG"
        finally:
            await pipe.close()
            await hung_up.wait()


# -- batch records: what a lost reply leaves to void ---------------------------------------------


async def test_an_answered_batch_record_goes_with_the_next_write(
    live_state: LiveState, pipe: RedisPipe
) -> None:
    await provision(live_state, 3, "acct_rec", 100)
    batcher = AdmissionBatcher(pipe)
    first = keys.admit_batch(3, batcher.batch_ids.prefix + "0")
    second = keys.admit_batch(3, batcher.batch_ids.prefix + "1")
    admission = await batcher.admit(call("acct_rec", 3), DAY)
    assert await live_state.redis.get(first) == admission.event_id.encode()
    ttl = await live_state.redis.ttl(first)
    assert 0 < ttl <= keys.BATCH_RECORD_TTL_SECONDS
    await batcher.admit(call("acct_rec", 3), DAY)  # the next batch deletes it
    assert await live_state.redis.exists(first) == 0
    assert await live_state.redis.exists(second) == 1


async def test_void_names_the_debits_of_a_batch_that_ran(
    live_state: LiveState, pipe: RedisPipe
) -> None:
    await provision(live_state, 4, "acct_void", 10)
    await live_state.put_api_key("ab" * 32, KeyRecord("key_9", "proj_9", "acct_void", 4))
    state = PipelinedState(pipe, cross_shard=True)
    calls: list[Call | KeyCall] = [
        call("acct_void", 4),  # admitted: 7 of 10
        call("acct_void", 4),  # refused: 3 left
        KeyCall("ab" * 32, "chat", 2),  # admitted by its key's hash: 2 of 3
        KeyCall("cd" * 32, "chat", 2),  # no such key
    ]
    key = keys.admit_batch(None, "ran")
    names, args = admit_arguments(calls, DAY, None, key)
    admissions = parse_admit_reply(await pipe.evalsha(ADMIT, names, args), resolved_flags(calls))
    assert [a.outcome for a in admissions] == [
        Outcome.ADMITTED,
        Outcome.NO_CREDIT,
        Outcome.ADMITTED,
        Outcome.UNKNOWN_KEY,
    ]
    debited = await state.void(key, calls)
    assert debited == [
        (calls[0], admissions[0].event_id),
        (Call(4, "acct_void", "proj_9", "key_9", "chat", 2), admissions[2].event_id),
    ]
    assert await state.void(key, calls) == debited  # asked again: the same answer


async def test_a_batch_voided_before_it_runs_never_does(
    live_state: LiveState, pipe: RedisPipe
) -> None:
    await provision(live_state, 5, "acct_late", 100)
    state = PipelinedState(pipe)
    calls: list[Call | KeyCall] = [call("acct_late", 5)]
    key = keys.admit_batch(5, "late")
    assert await state.void(key, calls) == []
    names, args = admit_arguments(calls, DAY, 5, key)
    assert await pipe.evalsha(ADMIT, names, args) == []  # arrived after its void: nothing
    state_after = await live_state.read_account(5, "acct_late")
    assert state_after is not None and state_after.balance == 100
    assert await live_state.redis.xlen(keys.usage_stream(5)) == 0
