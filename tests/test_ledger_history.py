"""The read side: balance history pages and usage, against real Postgres, and the
pure query parsing as tables. Speed on a large account is checked here at a size
the suite can afford; loadtests/history_bench.py does 10 million events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import date

import asyncpg
import pytest

from ledger import store
from ledger.batching import plan_batch
from ledger.errors import BadCursor, BadQuery, UnknownAccount
from ledger.events import StreamId, UsageEvent
from ledger.history import (
    NO_CURSOR,
    PAGE,
    transactions,
    transactions_response,
    usage,
    usage_response,
)
from ledger.history_query import (
    TransactionsQuery,
    UsageQuery,
    decode_cursor,
    encode_cursor,
    periods,
    routes,
    to_day,
    transactions_query,
    usage_query,
)

TODAY = date(2025, 11, 22)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    await conn.execute("insert into accounts (id, name, shard, balance) values ('a1', 'A', 0, 0)")
    yield conn
    await conn.close()


async def credit(db: asyncpg.Connection, amount: int, n: int) -> None:
    balance = await db.fetchval(
        "update accounts set balance = balance + $1 where id = 'a1' returning balance", amount
    )
    await db.execute(
        "insert into ledger_entries (account_id, amount, balance_after, kind, description)"
        " values ('a1', $1, $2, 'credit', $3)",
        amount,
        balance,
        f"Credit {n}",
    )


def event(
    seq: int, day: date, kind: str = "d", amount: int = 100, route: str = "chat"
) -> UsageEvent:
    ms = to_day(day) * 86_400_000 + 36_000_000 + seq
    return UsageEvent(f"{ms}-0", ms, 0, kind, "a1", "p", "k", route, amount, to_day(day), 0)


async def apply(db: asyncpg.Connection, events: list[UsageEvent]) -> None:
    after = await store.load_offset(db, 0)
    batch = plan_batch(0, after, StreamId.parse(events[-1].id), events, {"a1"})
    await store.ensure_partitions(db, {e.day for e in events})
    await store.apply_batch(db, batch)


# -- pure ----------------------------------------------------------------------------


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    assert decode_cursor(encode_cursor(12345)) == 12345
    assert decode_cursor("t1." + "9" * 19) == 2**63 - 1  # past every bigint: from the newest
    for bad in (
        "",
        "!!",
        "t1.",
        "t2.5",
        "t1.-1",
        "t1.\u00b2",
        "t1.5\n",
        "dDE6NQ",
        "t1." + "1" * 20,
    ):
        with pytest.raises(BadCursor) as info:
            decode_cursor(bad)
        assert info.value.errors == [("cursor", "must be a next_cursor this API returned")]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, TransactionsQuery(50, None)),
        ({"limit": "200"}, TransactionsQuery(200, None)),
        ({"limit": "5", "cursor": encode_cursor(9)}, TransactionsQuery(5, 9)),
    ],
)
def test_transactions_query(params: dict[str, str], expected: TransactionsQuery) -> None:
    assert transactions_query(params) == expected


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"limit": "0"}, ["limit"]),
        ({"limit": "201"}, ["limit"]),
        ({"limit": "-1"}, ["limit"]),
        ({"limit": "x"}, ["limit"]),
        ({"limit": "\u00b2"}, ["limit"]),  # "²".isdigit() is True; int("²") fails
        ({"limit": "\uff15"}, ["limit"]),  # fullwidth 5: int() reads it, the document does not
        ({"limit": " 5"}, ["limit"]),
        ({"limit": "9" * 5000}, ["limit"]),
        ({"limit": ""}, ["limit"]),
        ({"cursor": ""}, ["cursor"]),
        ({"cursor": "%%"}, ["cursor"]),
        ({"limit": "", "cursor": ""}, ["limit", "cursor"]),
    ],
)
def test_bad_transactions_query(params: dict[str, str], fields: list[str]) -> None:
    with pytest.raises(BadQuery) as info:
        transactions_query(params)
    assert info.value.status == 400 and [f for f, _ in info.value.errors] == fields
    assert info.value.body()["errors"] == [{"field": f, "message": m} for f, m in info.value.errors]
    slug = "bad-cursor" if fields == ["cursor"] else "bad-query"
    assert info.value.slug == slug


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, UsageQuery(date(2025, 10, 24), TODAY, "day")),
        ({"group_by": "month"}, UsageQuery(date(2024, 12, 1), TODAY, "month")),
        (
            {"from": "2025-11-01", "to": "2025-11-10", "group_by": "route"},
            UsageQuery(date(2025, 11, 1), date(2025, 11, 10), "route"),
        ),
    ],
)
def test_usage_query(params: dict[str, str], expected: UsageQuery) -> None:
    assert usage_query(params, TODAY) == expected


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"group_by": "week"}, ["group_by"]),
        ({"group_by": ""}, ["group_by"]),
        ({"from": "2025-13-01"}, ["from"]),
        ({"from": "20251101"}, ["from"]),  # date.fromisoformat reads it; RFC 3339 does not
        ({"to": ""}, ["to"]),
        ({"from": ""}, ["from"]),
        ({"to": "1969-12-31"}, ["to"]),
        ({"to": "0001-01-01"}, ["to"]),  # was a 500: the default from fell before year 1
        ({"from": "", "to": "", "group_by": ""}, ["group_by", "to", "from"]),
        ({"from": "2025-11-10", "to": "2025-11-01"}, ["from"]),
        ({"from": "2020-01-01", "to": "2025-01-01"}, ["from"]),
        ({"from": "2020-01-01"}, ["from"]),  # to defaults to today
    ],
)
def test_bad_usage_query(params: dict[str, str], fields: list[str]) -> None:
    with pytest.raises(BadQuery) as info:
        usage_query(params, TODAY)
    assert [f for f, _ in info.value.errors] == fields


def test_usage_range_limit_counts_both_ends() -> None:
    """731 days from..to inclusive (to - from = 730) is the longest range."""
    longest = usage_query({"from": "2023-11-23", "to": "2025-11-22"}, TODAY)
    assert (longest.end - longest.start).days + 1 == 731
    with pytest.raises(BadQuery):
        usage_query({"from": "2023-11-22", "to": "2025-11-22"}, TODAY)
    assert usage_query({"to": "1970-01-01"}, TODAY).start == date(1969, 12, 3)


def test_periods_are_zero_filled_and_fold_into_months() -> None:
    by_day = {to_day(date(2025, 10, 31)): (2, 20), to_day(date(2025, 11, 2)): (1, 5)}
    days = periods(UsageQuery(date(2025, 10, 31), date(2025, 11, 2), "day"), by_day)
    assert days == [
        {"period": "2025-10-31", "calls": 2, "amount": 20},
        {"period": "2025-11-01", "calls": 0, "amount": 0},
        {"period": "2025-11-02", "calls": 1, "amount": 5},
    ]
    months = periods(UsageQuery(date(2025, 10, 31), date(2025, 11, 2), "month"), by_day)
    assert months == [
        {"period": "2025-10", "calls": 2, "amount": 20},
        {"period": "2025-11", "calls": 1, "amount": 5},
    ]
    assert routes([("b", 1, 5), ("a", 9, 5), ("c", 1, 50)]) == [
        {"route": "c", "calls": 1, "amount": 50},
        {"route": "a", "calls": 9, "amount": 5},
        {"route": "b", "calls": 1, "amount": 5},
    ]


# -- against Postgres ----------------------------------------------------------------


async def test_history_pages_newest_first(db: asyncpg.Connection) -> None:
    await credit(db, 1_000, 1)
    await apply(db, [event(0, TODAY), event(1, TODAY, amount=50), event(2, TODAY, "r", amount=30)])
    await credit(db, 500, 2)
    first = await transactions(db, "a1", TransactionsQuery(limit=2))
    body = first.to_dict()
    assert [t["description"] for t in body["data"]] == [
        "Credit 2",
        "Usage 10:00:00, 2 calls, 1 refund",
    ]
    assert [(t["amount"], t["balance_after"], t["kind"]) for t in body["data"]] == [
        (500, 1_380, "credit"),
        (-120, 880, "usage"),
    ]
    assert body["data"][0]["created_at"].endswith("Z")
    assert [t["id"] for t in body["data"]] == [f"le_{t.id}" for t in first.data]
    assert body["next_cursor"] == f"t1.{first.data[-1].id}"
    rest = await transactions_response(db, "a1", {"limit": "2", "cursor": body["next_cursor"]})
    assert [t["description"] for t in rest["data"]] == ["Credit 1"]
    assert rest["next_cursor"] is None


async def test_usage_by_day_month_route_with_today_and_yesterday(db: asyncpg.Connection) -> None:
    yesterday, older = date(2025, 11, 21), date(2025, 10, 30)
    await apply(
        db,
        [
            event(0, older, amount=10),
            event(1, yesterday, amount=200, route="embed"),
            event(2, TODAY, amount=300),
            event(3, TODAY, "r", amount=100),
            event(4, TODAY, amount=7, route="embed"),
        ],
    )
    body = await usage_response(db, "a1", {"from": "2025-11-20", "to": "2025-11-22"}, TODAY)
    assert body == {
        "data": [
            {"period": "2025-11-20", "calls": 0, "amount": 0},
            {"period": "2025-11-21", "calls": 1, "amount": 200},
            {"period": "2025-11-22", "calls": 2, "amount": 207},
        ],
        "today": {"date": "2025-11-22", "calls": 2, "amount": 207},
        "yesterday": {"date": "2025-11-21", "calls": 1, "amount": 200},
    }
    months = await usage(db, "a1", UsageQuery(date(2025, 10, 1), TODAY, "month"), TODAY)
    assert months["data"] == [
        {"period": "2025-10", "calls": 1, "amount": 10},
        {"period": "2025-11", "calls": 3, "amount": 407},
    ]
    by_route = await usage(db, "a1", UsageQuery(date(2025, 10, 1), TODAY, "route"), TODAY)
    assert by_route["data"] == [
        {"route": "chat", "calls": 2, "amount": 210},
        {"route": "embed", "calls": 2, "amount": 207},
    ]


async def test_unknown_account_is_404(db: asyncpg.Connection) -> None:
    with pytest.raises(UnknownAccount) as info:
        await transactions(db, "nobody")
    assert info.value.status == 404
    with pytest.raises(UnknownAccount):
        await usage(db, "nobody", UsageQuery(TODAY, TODAY, "day"), TODAY)
    # An account with no history yet is not an error.
    assert (await transactions(db, "a1")).to_dict() == {"data": [], "next_cursor": None}


async def test_history_stays_fast_on_a_large_account(db: asyncpg.Connection) -> None:
    """120,000 ledger entries and two years of rollups on one account, then 40,000 newer
    entries of 100 others (the order that tempts the planner off the account index): the
    first page, a deep page and a year of usage each take a few milliseconds, and the
    pages walk the account index."""
    await db.execute(
        "insert into accounts (id, name, shard) select 'other' || g, 'O', 0"
        " from generate_series(0, 99) g"
    )
    await db.execute(
        "insert into ledger_entries (account_id, amount, balance_after, kind, description)"
        " select case when g > 120000 then 'other' || g % 100 else 'a1' end, -1, -g, 'usage',"
        " 'Usage'"
        " from generate_series(1, 160000) g"
    )
    await db.execute(
        "insert into usage_rollups (account_id, day, route, calls, amount)"
        " select 'a1', d, 'route' || r, 1000, 5000 from generate_series($1::int - 730, $1::int) d,"
        " generate_series(1, 20) r",
        to_day(TODAY),
    )
    await db.execute("analyze ledger_entries; analyze usage_rollups")

    async def timed(aw: object) -> tuple[float, object]:
        started = time.perf_counter()
        result = await aw  # type: ignore[misc]
        return time.perf_counter() - started, result

    await transactions(db, "a1")  # warm the plan cache
    first_s, page = await timed(transactions(db, "a1", TransactionsQuery(limit=200)))
    deep_s, deep = await timed(
        transactions(db, "a1", TransactionsQuery(limit=200, before_id=1_000))
    )
    year_s, year = await timed(
        usage(db, "a1", UsageQuery(date(2024, 11, 23), TODAY, "month"), TODAY)
    )
    route_s, _ = await timed(usage(db, "a1", UsageQuery(date(2024, 11, 23), TODAY, "route"), TODAY))
    assert len(page.data) == 200 and len(deep.data) == 200  # type: ignore[attr-defined]
    assert year["data"][-1]["calls"] == 22 * 20 * 1000  # type: ignore[index]
    for seconds in (first_s, deep_s, year_s, route_s):
        assert seconds < 0.05, (first_s, deep_s, year_s, route_s)
    for mode in ("force_custom_plan", "force_generic_plan"):
        await db.execute(f"set plan_cache_mode = {mode}")
        for cursor in (NO_CURSOR, 60_000, 1_000):
            plan = "\n".join(r[0] for r in await db.fetch(f"explain {PAGE}", "a1", cursor, 201))
            assert "Index Scan using ledger_entries_account " in plan, plan
            assert "Index Cond: ((account_id = $0) AND (id <" in plan, plan
