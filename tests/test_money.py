"""The pure money and limit math: tables of cases, no Redis, no clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meter import money
from meter.money import AccountState, Outcome, Signal, usd

DAY = 20_000
BASE = AccountState(balance=usd(10), day=DAY)


@pytest.mark.parametrize(
    ("state", "price", "outcome", "balance", "spent"),
    [
        (BASE, usd(1), Outcome.ADMITTED, usd(9), usd(1)),
        (BASE, usd(10), Outcome.ADMITTED, 0, usd(10)),
        (BASE, usd(10) + 1, Outcome.NO_CREDIT, usd(10), 0),
        (BASE, 0, Outcome.ADMITTED, usd(10), 0),
        (replace(BASE, overage_line=usd(5)), usd(15), Outcome.ADMITTED, -usd(5), usd(15)),
        (replace(BASE, overage_line=usd(5)), usd(15) + 1, Outcome.NO_CREDIT, usd(10), 0),
        (replace(BASE, daily_hard_limit=usd(2)), usd(2), Outcome.ADMITTED, usd(8), usd(2)),
        (replace(BASE, daily_hard_limit=usd(2)), usd(2) + 1, Outcome.DAILY_LIMIT, usd(10), 0),
        (
            replace(BASE, daily_hard_limit=usd(2), spent_today=usd(2)),
            1,
            Outcome.DAILY_LIMIT,
            usd(10),
            usd(2),
        ),
        (
            replace(BASE, daily_hard_limit=usd(2), spent_today=usd(2)),
            0,
            Outcome.ADMITTED,
            usd(10),
            usd(2),
        ),
        # The limit is checked before the money.
        (replace(BASE, balance=0, daily_hard_limit=0), 1, Outcome.DAILY_LIMIT, 0, 0),
        (replace(BASE, suspended=True), 1, Outcome.SUSPENDED, usd(10), 0),
        # No payment method: refused whatever the money, even a free call.
        (
            replace(BASE, payment_method_required=True),
            0,
            Outcome.PAYMENT_METHOD_REQUIRED,
            usd(10),
            0,
        ),
        (
            replace(BASE, payment_method_required=True, daily_hard_limit=0),
            1,
            Outcome.PAYMENT_METHOD_REQUIRED,
            usd(10),
            0,
        ),
        # Suspended wins: adding a card would not help.
        (
            replace(BASE, suspended=True, payment_method_required=True),
            1,
            Outcome.SUSPENDED,
            usd(10),
            0,
        ),
        (replace(BASE, balance=-usd(1)), 0, Outcome.ADMITTED, -usd(1), 0),
        (replace(BASE, balance=-usd(1)), 1, Outcome.NO_CREDIT, -usd(1), 0),
        # An admin lowered the limit below what was spent: paid calls wait, free ones pass.
        (replace(BASE, daily_hard_limit=1, spent_today=5), 1, Outcome.DAILY_LIMIT, usd(10), 5),
        (replace(BASE, daily_hard_limit=1, spent_today=5), 0, Outcome.ADMITTED, usd(10), 5),
    ],
)
def test_admit_table(
    state: AccountState, price: int, outcome: Outcome, balance: int, spent: int
) -> None:
    decision = money.admit(state, price, DAY)
    assert decision.outcome is outcome
    assert decision.state.balance == balance
    assert decision.state.spent_today == spent


def test_revoked_key_is_refused_before_money() -> None:
    assert money.admit(BASE, 1, DAY, key_revoked=True).outcome is Outcome.KEY_REVOKED


def test_payment_method_required_comes_after_suspended_and_before_the_key() -> None:
    needs_card = replace(BASE, payment_method_required=True)
    decision = money.admit(needs_card, 1, DAY + 1, key_revoked=True)
    assert decision.outcome is Outcome.PAYMENT_METHOD_REQUIRED
    assert decision.state == needs_card  # not even the day rolls
    assert decision.signals is Signal.NONE
    suspended = replace(needs_card, suspended=True)
    assert money.admit(suspended, 1, DAY, key_revoked=True).outcome is Outcome.SUSPENDED


def test_negative_price_is_a_bug() -> None:
    with pytest.raises(ValueError):
        money.admit(BASE, -1, DAY)


@pytest.mark.parametrize(
    ("stored_day", "spent", "today", "spent_after_roll"),
    [(DAY, 5, DAY, 5), (DAY, 5, DAY + 1, 0), (DAY, 5, DAY - 1, 5), (DAY, 5, DAY + 30, 0)],
)
def test_day_roll(stored_day: int, spent: int, today: int, spent_after_roll: int) -> None:
    state = money.rolled(replace(BASE, day=stored_day, spent_today=spent), today)
    assert state.spent_today == spent_after_roll
    assert state.day == max(stored_day, today)


def test_limit_resets_on_a_new_day() -> None:
    state = replace(BASE, daily_hard_limit=usd(1), spent_today=usd(1))
    assert money.admit(state, 1, DAY).outcome is Outcome.DAILY_LIMIT
    assert money.admit(state, 1, DAY + 1).outcome is Outcome.ADMITTED


@pytest.mark.parametrize(
    ("state", "price", "signals"),
    [
        (replace(BASE, daily_notify_threshold=usd(1)), usd(1), Signal.NOTIFY_THRESHOLD),
        (replace(BASE, daily_notify_threshold=usd(1)), usd(1) - 1, Signal.NONE),
        (replace(BASE, daily_notify_threshold=usd(1), notify_fired_day=DAY), usd(2), Signal.NONE),
        (
            replace(BASE, daily_notify_threshold=usd(1), notify_fired_day=DAY - 1),
            usd(2),
            Signal.NOTIFY_THRESHOLD,
        ),
        (replace(BASE, daily_hard_limit=usd(1)), usd(1), Signal.HARD_LIMIT),
        (replace(BASE, low_balance_threshold=usd(5)), usd(6), Signal.BALANCE_LOW),
        (replace(BASE, low_balance_threshold=usd(5), low_fired=True), usd(6), Signal.NONE),
        (replace(BASE, overage_line=usd(1)), usd(10) + 1, Signal.OVERAGE_STARTED),
        (replace(BASE, balance=-1, overage_line=usd(1)), 1, Signal.NONE),
        (
            replace(
                BASE,
                daily_notify_threshold=1,
                daily_hard_limit=usd(10),
                low_balance_threshold=usd(1),
                overage_line=1,
            ),
            usd(10),
            Signal.NOTIFY_THRESHOLD | Signal.HARD_LIMIT | Signal.BALANCE_LOW,
        ),
    ],
)
def test_signals(state: AccountState, price: int, signals: Signal) -> None:
    decision = money.admit(state, price, DAY)
    assert decision.admitted
    assert decision.signals == signals


def test_hard_limit_signal_fires_on_first_refusal_only() -> None:
    state = replace(BASE, daily_hard_limit=usd(1), spent_today=usd(1) - 1)
    first = money.admit(state, 2, DAY)
    assert (first.outcome, first.signals) == (Outcome.DAILY_LIMIT, Signal.HARD_LIMIT)
    second = money.admit(first.state, 2, DAY)
    assert (second.outcome, second.signals) == (Outcome.DAILY_LIMIT, Signal.NONE)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (BASE, usd(10)),
        (replace(BASE, overage_line=usd(2)), usd(12)),
        (replace(BASE, overage_line=usd(2), daily_hard_limit=usd(3), spent_today=usd(1)), usd(2)),
        (replace(BASE, balance=-usd(5), overage_line=usd(2)), 0),
        (replace(BASE, daily_hard_limit=usd(1), spent_today=usd(3)), 0),
    ],
)
def test_available(state: AccountState, expected: int) -> None:
    assert money.available(state) == expected


def test_refund_same_day_and_after_midnight() -> None:
    spent = money.admit(BASE, usd(4), DAY).state
    same_day = money.refund(spent, usd(3), admitted_day=DAY)
    assert (same_day.balance, same_day.spent_today) == (usd(9), usd(1))
    next_day = money.rolled(spent, DAY + 1)
    late = money.refund(next_day, usd(3), admitted_day=DAY)
    assert (late.balance, late.spent_today) == (usd(9), 0)


def test_credit_rearms_low_balance() -> None:
    state = replace(BASE, balance=usd(1), low_balance_threshold=usd(5), low_fired=True)
    assert money.credit(state, usd(1)).low_fired
    assert not money.credit(state, usd(4)).low_fired


@pytest.mark.parametrize(
    ("now", "seconds"),
    [
        (0.0, 86_400),
        (86_399.5, 1),
        (86_400.0, 86_400),
        (1_700_000_000.0, 86_400 - 1_700_000_000 % 86_400),
    ],
)
def test_seconds_until_next_day(now: float, seconds: int) -> None:
    assert money.seconds_until_next_day(now) == seconds


@pytest.mark.parametrize(
    ("dollars", "micros"), [(1, 1_000_000), ("0.000001", 1), ("5000", 5_000_000_000)]
)
def test_usd(dollars: object, micros: int) -> None:
    assert usd(dollars) == micros  # type: ignore[arg-type]


def test_usd_refuses_fractions_of_a_micro() -> None:
    with pytest.raises(ValueError):
        usd("0.0000001")
