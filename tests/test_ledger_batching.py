"""The ledger's pure decisions, as tables: event parsing, batch plans, descriptions,
the batch-closing rule, shard ownership and drift arithmetic. No servers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ledger.batching import (
    LedgerLine,
    PendingSignal,
    Rollup,
    batch_closed,
    describe,
    plan_batch,
)
from ledger.book import AccountRecord
from ledger.drift import (
    AccountDrift,
    BookAccount,
    Report,
    account_drift,
    net_debits_by_account,
    spent_by_account,
)
from ledger.events import MalformedEvent, StreamId, UsageEvent, parse_event
from ledger.ownership import fair_share, plan_ownership
from ledger.reconcile import repair_plan

T0 = int(datetime(2025, 11, 22, 10, 0, 0, tzinfo=UTC).timestamp() * 1000)
DAY = T0 // 86_400_000


def ev(
    seq: int,
    kind: str = "d",
    account: str = "a1",
    amount: int = 100,
    route: str = "chat",
    ms: int = T0,
    signals: int = 0,
    call_day: int = DAY,
) -> UsageEvent:
    return UsageEvent(
        f"{ms}-{seq}", ms, seq, kind, account, "p1", "k1", route, amount, call_day, signals
    )


# -- events --------------------------------------------------------------------------


def test_parse_event_reads_every_field() -> None:
    fields = {
        b"t": b"r",
        b"a": b"a1",
        b"p": b"p1",
        b"k": b"k1",
        b"r": b"chat",
        b"m": b"250",
        b"d": b"20414",
        b"o": b"5-1",
    }
    e = parse_event(b"1700000000000-3", fields)
    assert e == UsageEvent(
        "1700000000000-3", 1_700_000_000_000, 3, "r", "a1", "p1", "k1", "chat", 250, 20414, 0, "5-1"
    )
    assert e.net_debit == -250
    assert e.day == 1_700_000_000_000 // 86_400_000


@pytest.mark.parametrize(
    "fields",
    [
        {b"t": b"q", b"a": b"a", b"p": b"p", b"k": b"k", b"r": b"r", b"m": b"1", b"d": b"1"},
        {b"t": b"d", b"a": b"a", b"p": b"p", b"k": b"k", b"r": b"r", b"m": b"-1", b"d": b"1"},
        {b"t": b"d", b"a": b"a", b"p": b"p", b"k": b"k", b"r": b"r", b"m": b"x", b"d": b"1"},
        {b"t": b"d", b"p": b"p", b"k": b"k", b"r": b"r", b"m": b"1", b"d": b"1"},
        {b"repair": b"1"},
    ],
)
def test_malformed_events_are_refused(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(MalformedEvent):
        parse_event(b"1-1", fields)


def test_the_raw_flat_reply_parses_the_same() -> None:
    flat = [
        b"t",
        b"d",
        b"a",
        b"a1",
        b"p",
        b"p1",
        b"k",
        b"k1",
        b"r",
        b"chat",
        b"m",
        b"9",
        b"d",
        b"7",
        b"g",
        b"5",
    ]
    assert parse_event(b"3-4", flat) == UsageEvent(
        "3-4", 3, 4, "d", "a1", "p1", "k1", "chat", 9, 7, 5
    )
    refund = [*flat[:14], b"o", b"1-2"]
    assert parse_event(b"3-5", refund).refund_of == "1-2"
    reordered = flat[2:4] + flat[:2] + flat[4:]  # not the scripts' order: the checked path
    assert parse_event(b"3-4", reordered) == parse_event(b"3-4", flat)
    for bad in (
        [*flat[:13], b"x", *flat[14:]],
        [*flat[:11], b"-1", *flat[12:]],
        [*flat[:1], b"q", *flat[2:]],
    ):
        with pytest.raises(MalformedEvent):
            parse_event(b"3-4", bad)


@pytest.mark.parametrize(
    ("a", "b", "less"),
    [("1-0", "1-1", True), ("1-9", "2-0", True), ("10-0", "9-99", False), ("3-3", "3-3", False)],
)
def test_stream_ids_order_numerically(a: str, b: str, less: bool) -> None:
    assert (StreamId.parse(a) < StreamId.parse(b)) is less
    assert str(StreamId.parse(a)) == a


# -- plans ---------------------------------------------------------------------------


def test_plan_nets_debits_and_refunds_per_account() -> None:
    events = [
        ev(0, amount=100),
        ev(1, amount=300, route="embed"),
        ev(2, "r", amount=40),
        ev(3, account="a2", amount=7, ms=T0 + 1500),
        ev(4, "x", account="a2", amount=0, signals=2, ms=T0 + 1500),
    ]
    batch = plan_batch(1, StreamId(5, 0), StreamId(T0 + 1500, 4), events, {"a1", "a2"})
    assert batch.lines == (
        LedgerLine("a1", -360, "usage", "Usage 10:00:00, 2 calls, 1 refund", f"usage:1:{T0}-0"),
        LedgerLine("a2", -7, "usage", "Usage 10:00:01, 1 call", f"usage:1:{T0 + 1500}-3"),
    )
    assert batch.rollups == (
        Rollup("a1", DAY, "chat", 1, 60),
        Rollup("a1", DAY, "embed", 1, 300),
        Rollup("a2", DAY, "chat", 1, 7),
    )
    assert batch.signals == (PendingSignal("a2", "hard_limit", DAY, f"{T0 + 1500}-4"),)
    assert batch.net_debit == 367
    assert batch.orphans == ()


def test_refund_of_an_earlier_batch_credits_back() -> None:
    batch = plan_batch(
        0, StreamId(0, 0), StreamId(T0, 0), [ev(0, "r", amount=50, call_day=DAY - 1)], {"a1"}
    )
    assert batch.lines == (
        LedgerLine("a1", 50, "usage", "Refunds 10:00:00, 1 refund", f"usage:0:{T0}-0"),
    )
    # The refund comes off the day the call was admitted.
    assert batch.rollups == (Rollup("a1", DAY - 1, "chat", 0, -50),)


@pytest.mark.parametrize(
    ("events", "lines", "rollups"),
    [
        ([ev(0, amount=0)], 0, 1),  # a free call: counted, no money moved
        ([ev(0, amount=10), ev(1, "r", amount=10)], 0, 1),  # fully refunded in the same batch
        ([ev(0, "x", amount=0, signals=1)], 0, 0),  # refused: a signal only
    ],
)
def test_zero_net_writes_no_ledger_line(events: list[UsageEvent], lines: int, rollups: int) -> None:
    batch = plan_batch(0, StreamId(0, 0), StreamId(T0, 9), events, {"a1"})
    assert (len(batch.lines), len(batch.rollups)) == (lines, rollups)


def test_every_signal_bit_is_its_own_row() -> None:
    batch = plan_batch(0, StreamId(0, 0), StreamId(T0, 0), [ev(0, signals=15)], {"a1"})
    assert [s.kind for s in batch.signals] == [
        "notify_threshold",
        "hard_limit",
        "balance_low",
        "overage_started",
    ]


def test_unknown_accounts_are_kept_raw_only() -> None:
    events = [ev(0), ev(1, account="ghost", signals=4)]
    batch = plan_batch(0, StreamId(0, 0), StreamId(T0, 1), events, {"a1"})
    assert batch.orphans == ("ghost",)
    assert len(batch.events) == 2
    assert {x.account_id for x in batch.lines} == {"a1"}
    assert batch.signals == ()


@pytest.mark.parametrize(
    ("first", "last", "calls", "refunds", "text"),
    [
        (T0, T0 + 999, 1_234, 0, "Usage 10:00:00, 1,234 calls"),
        (T0, T0 + 1_000, 2, 0, "Usage 10:00:00-10:00:01, 2 calls"),
        (T0, T0 + 61_000, 1, 3, "Usage 10:00:00-10:01:01, 1 call, 3 refunds"),
        (
            T0 - 36_001_000,
            T0 - 35_999_000,
            5,
            0,
            "Usage 2025-11-21 23:59:59-2025-11-22 00:00:01, 5 calls",
        ),
        (T0, T0, 0, 2, "Refunds 10:00:00, 2 refunds"),
    ],
)
def test_descriptions(first: int, last: int, calls: int, refunds: int, text: str) -> None:
    assert describe(first, last, calls, refunds) == text


@pytest.mark.parametrize(
    ("count", "opened", "now", "closed"),
    [
        (0, 0.0, 100.0, False),  # nothing read: keep waiting
        (10, 1.0, 1.1, False),
        (10, 1.0, 1.25, True),  # max wait passed since the first event
        (500, 1.0, 1.0, True),  # full
    ],
)
def test_batch_closes_when_full_or_old(count: int, opened: float, now: float, closed: bool) -> None:
    assert batch_closed(count, opened, now, size=500, max_wait=0.2) is closed


# -- ownership -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shards", "workers", "share"),
    [(16, 1, 16), (16, 2, 8), (16, 3, 6), (3, 2, 2), (4, 0, 4), (2, 5, 1)],
)
def test_fair_share(shards: int, workers: int, share: int) -> None:
    assert fair_share(shards, workers) == share


def test_a_lone_worker_tries_everything_from_its_start() -> None:
    move = plan_ownership(range(4), frozenset(), 1, 2)
    assert (move.release, move.candidates, move.want) == ((), (2, 3, 0, 1), 4)


def test_a_second_worker_makes_the_first_hand_over() -> None:
    move = plan_ownership(range(4), frozenset(range(4)), 2, 0)
    assert (move.release, move.want) == ((2, 3), 0)


def test_a_dead_workers_shards_are_taken() -> None:
    move = plan_ownership(range(4), frozenset({0, 1}), 1, 0)
    assert (move.release, move.candidates, move.want) == ((), (2, 3), 2)


# -- drift ---------------------------------------------------------------------------


def test_drift_counts_unapplied_events_and_credits() -> None:
    account = BookAccount("a1", 1_000, (("c1", 200), ("c2", 50)))
    # Redis has applied c2 but not c1; 300 of debits are still in the stream.
    d = account_drift(0, account, 300, 1_000 - 300 - 200, frozenset({"c2"}))
    assert (d.expected, d.drift, d.agrees) == (500, 0, True)
    off = account_drift(0, account, 300, 501, frozenset({"c2"}))
    assert (off.drift, off.agrees) == (1, False)
    missing = account_drift(0, BookAccount("a2", 0), 0, None, frozenset())
    assert missing.missing and not missing.agrees


def test_unapplied_and_spent_sums() -> None:
    events = [
        ev(0, amount=10),
        ev(1, "r", amount=4),
        ev(2, "x", amount=0),
        ev(3, amount=5, call_day=DAY - 1),
    ]
    assert net_debits_by_account(events) == {"a1": 11}
    assert spent_by_account(events, DAY) == {"a1": 6}


def test_report_renders_and_sums() -> None:
    d = AccountDrift("a1", 2, 1_000, 100, 0, 950)
    report = Report((0, 2), 10, (d,))
    assert not report.ok and report.total_drift == 50
    assert report.by_shard() == {0: (0, 0), 2: (50, 1)}
    text = report.render()
    assert "a1" in text and "+50" in text and "1 drifting" in text
    assert Report((0,), 3, ()).render() == (
        "checked 3 accounts on 1 shards: 0 drifting (0 missing in Redis), total drift +0 micros"
    )


def test_repair_plan_subtracts_what_the_stream_still_holds() -> None:
    record = AccountRecord(
        "a1", 1_000, 3, 50, 500, None, 10, True, 120, True, False, (("7", 1),), ("k9",)
    )
    events = [ev(0, amount=30), ev(1, "r", amount=5), ev(2, amount=8, call_day=DAY - 1)]
    (plan,) = repair_plan([record], events, DAY)
    assert (plan.balance, plan.spent_today) == (1_000 - 33, 145)
    assert (plan.daily_hard_limit, plan.daily_notify_threshold, plan.status) == (500, -1, "s")
    assert (plan.notify_fired_day, plan.limit_fired_day) == (DAY, -1)
    assert plan.credits == (("7", 1),) and plan.revoked_keys == ("k9",)


@pytest.mark.parametrize(
    ("suspended", "payment_method_required", "status"),
    [(False, False, "a"), (False, True, "p"), (True, True, "s"), (True, False, "s")],
)
def test_repair_plan_restores_the_status(
    suspended: bool, payment_method_required: bool, status: str
) -> None:
    record = AccountRecord(
        "a1", 0, 1, 0, None, None, None, suspended, 0, False, False, (), (),
        payment_method_required=payment_method_required,
    )  # fmt: skip
    (plan,) = repair_plan([record], [], DAY)
    assert plan.status == status
