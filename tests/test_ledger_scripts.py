"""The ledger's Lua scripts against a real Redis: each path, and races with admissions."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from ledger import streams
from ledger.events import StreamId, parse_event
from ledger.streams import RepairAccount
from meter import keys
from meter.live_state import AccountConfig, Call, LiveState
from meter.money import Outcome, usd

SHARD = 1
DAY = 20_400


def config(version: int = 1) -> AccountConfig:
    return AccountConfig(version, 0, None, None, None, False)


async def seed(state: LiveState, account: str, balance: int) -> None:
    await state.sync_account(SHARD, account, config())
    await state.credit(SHARD, account, f"seed-{account}", balance)


async def admit(state: LiveState, account: str, price: int) -> str:
    result = await state.admit(Call(SHARD, account, "p", "k", "chat", price), DAY)
    assert result.admitted
    return result.event_id


async def ids(client: aioredis.Redis) -> list[str]:
    return [i.decode() for i, _ in await client.xrange(keys.usage_stream(SHARD))]


def repair_account(account: str, balance: int, **kw: object) -> RepairAccount:
    values: dict[str, object] = dict(
        account_id=account,
        balance=balance,
        spent_today=0,
        version=1,
        overage_line=0,
        daily_hard_limit=-1,
        daily_notify_threshold=-1,
        low_balance_threshold=-1,
        status="a",
        notify_fired_day=-1,
        limit_fired_day=-1,
        credits=(),
        revoked_keys=(),
    )
    values.update(kw)
    return RepairAccount(**values)  # type: ignore[arg-type]


# -- ledger_trim.lua / ledger_hold.lua -----------------------------------------------


async def test_trim_removes_through_the_committed_id_and_no_further(live_state: LiveState) -> None:
    await seed(live_state, "a", usd(1))
    eids = [await admit(live_state, "a", 10) for _ in range(5)]
    client = live_state.redis
    assert await streams.trim(client, SHARD, StreamId.parse(eids[2])) == 3
    assert await ids(client) == eids[3:]
    assert await streams.trimmed_through(client, SHARD) == StreamId.parse(eids[2])
    # An older id never moves the marker back.
    assert await streams.trim(client, SHARD, StreamId.parse(eids[0])) == 0
    assert await streams.trimmed_through(client, SHARD) == StreamId.parse(eids[2])


async def test_a_hold_pauses_trimming_until_released_or_expired(live_state: LiveState) -> None:
    await seed(live_state, "a", usd(1))
    eids = [await admit(live_state, "a", 10) for _ in range(3)]
    client = live_state.redis
    await streams.hold(client, SHARD, "pass-1", 60_000)
    assert await streams.trim(client, SHARD, StreamId.parse(eids[1])) == -1
    assert await ids(client) == eids
    assert await streams.trimmed_through(client, SHARD) == StreamId(0, 0)
    await streams.hold(client, SHARD, "pass-1", 0)
    assert await streams.trim(client, SHARD, StreamId.parse(eids[1])) == 2
    # A pass that died holds only until its TTL.
    await streams.hold(client, SHARD, "dead-pass", 30)
    assert await streams.trim(client, SHARD, StreamId.parse(eids[2])) == -1
    deadline = asyncio.get_running_loop().time() + 5
    while await streams.trim(client, SHARD, StreamId.parse(eids[2])) == -1:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert await ids(client) == []


async def test_trim_never_removes_entries_appended_meanwhile(
    live_state: LiveState, redis_url: str
) -> None:
    await seed(live_state, "a", usd(100))
    other = LiveState.from_url(redis_url)
    try:
        appended: list[str] = []

        async def produce() -> None:
            for _ in range(400):
                appended.append(await admit(other, "a", 1))

        async def trim_behind() -> None:
            while len(appended) < 400:
                if len(appended) > 2:
                    await streams.trim(
                        live_state.redis, SHARD, StreamId.parse(appended[len(appended) // 2])
                    )
                await asyncio.sleep(0)

        await asyncio.gather(produce(), trim_behind())
        committed = await streams.trimmed_through(live_state.redis, SHARD)
        left = await ids(live_state.redis)
        assert left == [e for e in appended if StreamId.parse(e) > committed]
    finally:
        await other.close()


# -- ledger_balances.lua -------------------------------------------------------------


async def test_balances_and_newest_id_and_credit_flags(live_state: LiveState) -> None:
    await seed(live_state, "a", usd(1))
    await live_state.credit(SHARD, "a", "c-applied", 5)
    eid = await admit(live_state, "a", 100)
    read = await streams.read_balances(
        live_state.redis, SHARD, StreamId(0, 0), [("a", ["c-applied", "c-not"]), ("nobody", [])]
    )
    assert read is not None
    assert read.newest == StreamId.parse(eid)
    assert read.balances == {"a": usd(1) + 5 - 100, "nobody": None}
    assert read.applied_credits == {"a": frozenset({"c-applied"}), "nobody": frozenset()}


async def test_balances_are_stale_once_trimmed_past_the_offset(live_state: LiveState) -> None:
    await seed(live_state, "a", usd(1))
    e1, e2 = await admit(live_state, "a", 1), await admit(live_state, "a", 1)
    await streams.trim(live_state.redis, SHARD, StreamId.parse(e2))
    assert (
        await streams.read_balances(live_state.redis, SHARD, StreamId.parse(e1), [("a", [])])
        is None
    )
    assert (
        await streams.read_balances(live_state.redis, SHARD, StreamId.parse(e2), [("a", [])])
        is not None
    )


async def test_balances_match_the_stream_while_calls_race(
    live_state: LiveState, redis_url: str
) -> None:
    """Every snapshot: balance == start - (events up to the newest id it reported)."""
    start = usd(10)
    await seed(live_state, "a", start)
    clients = [LiveState.from_url(redis_url) for _ in range(4)]
    rng = random.Random(3)
    try:
        done = asyncio.Event()

        async def produce(state: LiveState) -> None:
            for _ in range(150):
                await admit(state, "a", rng.randrange(1, 50))

        async def observe() -> int:
            checked = 0
            while not done.is_set():
                read = await streams.read_balances(
                    live_state.redis, SHARD, StreamId(0, 0), [("a", [])]
                )
                assert read is not None
                entries = await streams.read_range(
                    live_state.redis, SHARD, StreamId(0, 0), read.newest
                )
                spent = sum(parse_event(i, f).net_debit for i, f in entries)
                assert read.balances["a"] == start - spent
                checked += 1
            return checked

        watcher = asyncio.create_task(observe())
        await asyncio.gather(*(produce(c) for c in clients))
        done.set()
        assert await watcher > 0
    finally:
        for c in clients:
            await c.close()


# -- ledger_repair.lua ---------------------------------------------------------------


async def test_repair_recreates_a_lost_account(live_state: LiveState) -> None:
    client = live_state.redis
    plan = repair_account(
        "a",
        750,
        spent_today=250,
        version=4,
        overage_line=10,
        daily_hard_limit=1_000,
        daily_notify_threshold=200,
        low_balance_threshold=100,
        status="s",
        notify_fired_day=DAY,
        credits=(("17", 1_000),),
        revoked_keys=("k-old",),
    )
    result = await streams.repair_accounts(
        client, SHARD, StreamId(0, 0), StreamId(0, 0), DAY, [plan]
    )
    assert result == streams.RepairResult(created=1, rebuilt=0)
    state = await live_state.read_account(SHARD, "a")
    assert state is not None
    assert (state.balance, state.overage_line, state.daily_hard_limit) == (750, 10, 1_000)
    assert (state.daily_notify_threshold, state.low_balance_threshold, state.suspended) == (
        200,
        100,
        True,
    )
    assert (state.day, state.spent_today, state.notify_fired_day) == (DAY, 250, DAY)
    assert await client.hget(keys.account(SHARD, "a"), "ver") == b"4"
    assert await client.hget(keys.account(SHARD, "a"), "rk:k-old") == b"1"
    # The credit is remembered as applied: a retry of it credits nothing.
    assert await live_state.credit(SHARD, "a", "17", 1_000) == (0, 750)


async def test_repair_restores_payment_method_required(live_state: LiveState) -> None:
    plan = repair_account("a", 750, status=keys.STATUS_PAYMENT_METHOD_REQUIRED)
    await streams.repair_accounts(
        live_state.redis, SHARD, StreamId(0, 0), StreamId(0, 0), DAY, [plan]
    )
    state = await live_state.read_account(SHARD, "a")
    assert state is not None and state.payment_method_required and not state.suspended
    refused = await live_state.admit(Call(SHARD, "a", "p", "k", "chat", 1), DAY)
    assert refused.outcome is Outcome.PAYMENT_METHOD_REQUIRED


async def test_repair_counts_events_appended_after_the_read(live_state: LiveState) -> None:
    await seed(live_state, "a", usd(1))
    first = await admit(live_state, "a", 100)
    await admit(live_state, "a", 30)  # after the caller's read-through id
    client = live_state.redis
    # The book says 1 USD; the caller counted the first event (through = first).
    plan = repair_account("a", usd(1) - 100)
    result = await streams.repair_accounts(
        client, SHARD, StreamId(0, 0), StreamId.parse(first), DAY, [plan]
    )
    assert result == streams.RepairResult(created=0, rebuilt=1)
    state = await live_state.read_account(SHARD, "a")
    assert state is not None and state.balance == usd(1) - 130
    # Redis still counted today: its spend is kept.
    assert state.spent_today == 130


async def test_repair_keeps_a_newer_config_and_refuses_when_stale(live_state: LiveState) -> None:
    await live_state.sync_account(SHARD, "a", AccountConfig(9, 77, None, None, None, False))
    e1 = await admit(live_state, "a", 0)
    e2 = await admit(live_state, "a", 0)
    client = live_state.redis
    await streams.trim(client, SHARD, StreamId.parse(e2))
    stale = await streams.repair_accounts(
        client, SHARD, StreamId.parse(e1), StreamId.parse(e1), DAY, [repair_account("a", 5)]
    )
    assert stale is None
    assert await client.hget(keys.account(SHARD, "a"), "bal") == b"0"
    ok = await streams.repair_accounts(
        client,
        SHARD,
        StreamId.parse(e2),
        StreamId.parse(e2),
        DAY,
        [repair_account("a", 5, version=3)],
    )
    assert ok is not None
    assert await client.hmget(keys.account(SHARD, "a"), "bal", "ver", "ovl") == [b"5", b"9", b"77"]


async def test_repair_moves_restarted_stream_ids_past_the_offset(live_state: LiveState) -> None:
    client = live_state.redis
    future = StreamId(99_999_999_999_999, 5)  # the book applied ids Redis no longer has
    await streams.repair_accounts(client, SHARD, future, future, DAY, [repair_account("a", 1_000)])
    assert await ids(client) == []
    eid = await admit(live_state, "a", 1)
    assert StreamId.parse(eid) > future


async def test_repair_while_calls_race_loses_no_debit(
    live_state: LiveState, redis_url: str
) -> None:
    start = usd(10)
    await seed(live_state, "a", start)
    client = live_state.redis
    others = [LiveState.from_url(redis_url) for _ in range(3)]
    try:

        async def produce(state: LiveState) -> None:
            for _ in range(150):
                await admit(state, "a", 7)

        async def repair_repeatedly() -> None:
            for _ in range(20):
                entries = await streams.read_range(
                    client, SHARD, StreamId(0, 0), StreamId(2**62, 0)
                )
                through = StreamId.parse(entries[-1][0]) if entries else StreamId(0, 0)
                spent = sum(parse_event(i, f).net_debit for i, f in entries)
                plan = repair_account("a", start - spent, version=1)
                assert await streams.repair_accounts(
                    client, SHARD, StreamId(0, 0), through, DAY, [plan]
                )
                await asyncio.sleep(0)

        await asyncio.gather(repair_repeatedly(), *(produce(s) for s in others))
        state = await live_state.read_account(SHARD, "a")
        assert state is not None and state.balance == start - 7 * 450
    finally:
        for s in others:
            await s.close()


@pytest.mark.parametrize(
    "script", ["ledger_trim", "ledger_hold", "ledger_balances", "ledger_repair"]
)
def test_each_script_documents_keys_argv_and_reply(script: str) -> None:
    from meter.scripts import SCRIPTS

    head = SCRIPTS[script].source.split("\n\n")[0]
    assert "KEYS" in head and "ARGV" in head and "Reply" in head
