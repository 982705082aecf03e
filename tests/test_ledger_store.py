"""The worker's Postgres adapter against a real Postgres: one batch, one transaction,
all or nothing; replays refused; day partitions and retention; shard locks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ledger import store
from ledger.batching import Batch, plan_batch
from ledger.events import MS_PER_DAY, StreamId, UsageEvent

DAY = 20_414
T0 = DAY * MS_PER_DAY + 3_600_000


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    for account in ("a1", "a2"):
        await conn.execute(
            "insert into accounts (id, name, shard, balance) values ($1, $1, 0, 1000)", account
        )
    await store.ensure_partitions(conn, [DAY - 1, DAY])
    yield conn
    await conn.close()


def ev(
    seq: int, kind: str = "d", account: str = "a1", amount: int = 10, signals: int = 0
) -> UsageEvent:
    ms = T0 + seq
    return UsageEvent(f"{ms}-0", ms, 0, kind, account, "p", "k", "chat", amount, DAY, signals)


async def batch_from_offset(db: asyncpg.Connection, events: list[UsageEvent]) -> Batch:
    after = await store.load_offset(db, 0)
    return plan_batch(0, after, StreamId.parse(events[-1].id), events, {"a1", "a2"})


async def counts(db: asyncpg.Connection) -> tuple[int, ...]:
    return tuple(
        [
            await db.fetchval(f"select count(*) from {table}")
            for table in ("usage_events", "ledger_entries", "usage_rollups", "account_signals")
        ]
    )


async def test_a_batch_writes_everything_with_its_offset(db: asyncpg.Connection) -> None:
    events = [ev(0, amount=100), ev(1, "r", amount=30), ev(2, account="a2", amount=5, signals=12)]
    batch = await batch_from_offset(db, events)
    await store.apply_batch(db, batch)
    assert await counts(db) == (3, 2, 2, 2)
    rows = await db.fetch(
        "select account_id, amount, balance_after, kind, redis_applied from ledger_entries"
        " order by account_id"
    )
    assert [tuple(r) for r in rows] == [
        ("a1", -70, 930, "usage", True),
        ("a2", -5, 995, "usage", True),
    ]
    assert await db.fetchval("select balance from accounts where id = 'a1'") == 930
    assert await store.load_offset(db, 0) == StreamId(T0 + 2, 0)
    assert await db.fetchval("select events_applied from ledger_offsets where shard = 0") == 3
    kinds = {r["kind"] for r in await db.fetch("select kind from account_signals")}
    assert kinds == {"balance_low", "overage_started"}
    # Raw events keep their identity, type and the day of their stream time.
    row = await db.fetchrow("select * from usage_events where stream_ms = $1", T0 + 1)
    assert (row["day"], row["kind"], row["amount"], row["call_day"]) == (DAY, b"r", 30, DAY)


async def test_a_batch_from_a_stale_offset_writes_nothing(db: asyncpg.Connection) -> None:
    first = await batch_from_offset(db, [ev(0)])
    await store.apply_batch(db, first)
    stale = plan_batch(0, StreamId(0, 0), StreamId(T0 + 5, 0), [ev(5)], {"a1"})
    with pytest.raises(store.OffsetMoved):
        await store.apply_batch(db, stale)
    assert await counts(db) == (1, 1, 1, 0)


async def test_a_replayed_event_is_refused_whole(db: asyncpg.Connection) -> None:
    await store.apply_batch(db, await batch_from_offset(db, [ev(0), ev(1)]))
    # Someone rewinds the offset by hand: the events' keys still refuse the replay.
    await db.execute("update ledger_offsets set last_id = '0-0' where shard = 0")
    with pytest.raises(asyncpg.UniqueViolationError):
        await store.apply_batch(db, await batch_from_offset(db, [ev(1), ev(2)]))
    assert await counts(db) == (2, 1, 1, 0)
    assert await db.fetchval("select balance from accounts where id = 'a1'") == 980


@pytest.mark.parametrize("point", ["mid_insert", "before_commit"])
async def test_a_crash_inside_the_transaction_leaves_nothing(
    db: asyncpg.Connection, point: str
) -> None:
    class Crash(Exception):
        pass

    def step(at: str) -> None:
        if at == point:
            raise Crash

    with pytest.raises(Crash):
        await store.apply_batch(
            db, await batch_from_offset(db, [ev(0), ev(1, signals=1)]), step=step
        )
    assert await counts(db) == (0, 0, 0, 0)
    assert await store.load_offset(db, 0) == StreamId(0, 0)
    assert await db.fetchval("select balance from accounts where id = 'a1'") == 1000


async def test_day_partitions_are_made_on_demand_and_dropped_after_retention(
    db: asyncpg.Connection, database_url: str
) -> None:
    other = await asyncpg.connect(database_url)
    try:
        # Two workers making the same partitions at once both succeed.
        await asyncio.gather(
            store.ensure_partitions(db, range(DAY - 5, DAY + 3)),
            store.ensure_partitions(other, range(DAY - 5, DAY + 3)),
        )
    finally:
        await other.close()
    assert await store.existing_partitions(db) == set(range(DAY - 5, DAY + 3))
    old = UsageEvent(
        f"{T0 - 3 * MS_PER_DAY}-0",
        T0 - 3 * MS_PER_DAY,
        0,
        "d",
        "a1",
        "p",
        "k",
        "chat",
        1,
        DAY - 3,
        0,
    )
    await store.apply_batch(db, await batch_from_offset(db, [old, ev(0)]))
    assert await db.fetchval(f"select count(*) from {store.partition_name(DAY - 3)}") == 1
    dropped = await store.drop_partitions_before(db, DAY - 2)
    assert dropped == [store.partition_name(d) for d in range(DAY - 5, DAY - 2)]
    assert await db.fetchval("select count(*) from usage_events") == 1
    # The book itself is untouched by retention: only raw events go.
    assert await db.fetchval("select count(*) from ledger_entries") == 1


@pytest.mark.parametrize(
    ("day", "name"), [(0, "usage_events_p19700101"), (DAY, "usage_events_p20251122")]
)
def test_partition_names_round_trip(day: int, name: str) -> None:
    assert store.partition_name(day) == name
    assert store.partition_day(name) == day
    assert store.partition_day("usage_events") is None


async def test_a_shard_lock_has_one_holder_until_its_connection_dies(database_url: str) -> None:
    a, b = (
        await store.connect(database_url, name="worker-a"),
        await store.connect(database_url, name="worker-b"),
    )
    try:
        assert await store.try_lock_shard(a, 3)
        assert not await store.try_lock_shard(b, 3)
        assert await store.try_lock_shard(b, 4)
        assert await store.register_worker(a, 1) and await store.register_worker(b, 2)
        assert await store.count_workers(a) == 2
        a.terminate()  # as if the process died
        deadline = asyncio.get_running_loop().time() + 10
        while not await store.try_lock_shard(b, 3):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert await store.count_workers(b) == 1
    finally:
        await b.close()
