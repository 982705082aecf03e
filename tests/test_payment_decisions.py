"""The pure decisions of paying: amounts, a recharge per crossing, back-off, settlement order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payments import decisions as d

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
USD = 1_000_000


def rule(**kw: object) -> d.RechargeRule:
    base: dict[str, object] = {
        "enabled": True,
        "threshold": 10 * USD,
        "amount": 20 * USD,
        "target_balance": None,
        "max_per_day": None,
        "max_amount_per_day": None,
    }
    base.update(kw)
    return d.RechargeRule(**base)  # type: ignore[arg-type]


def decide(r: d.RechargeRule, balance: int = 5 * USD, **kw: object) -> d.Decision:
    args: dict[str, object] = {
        "balance": balance,
        "in_flight": False,
        "charged_today": 0,
        "amount_today": 0,
        "now": NOW,
        "minimum": 5 * USD,
    }
    args.update(kw)
    return d.decide_recharge(r, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        (5 * USD, None),
        (5_000 * USD, None),
        (5 * USD - 10_000, "between"),
        (5_000 * USD + 10_000, "between"),
        (5 * USD + 1, "cents"),
        (0, "between"),
    ],
)
def test_a_purchase_is_whole_cents_within_the_bounds(amount: int, error: str | None) -> None:
    got = d.purchase_amount_error(amount, 5 * USD, 5_000 * USD)
    assert (got is None) if error is None else (error in (got or ""))


def test_a_fixed_recharge_charges_its_amount_below_the_threshold() -> None:
    assert decide(rule()) == d.Charge(20 * USD)
    assert decide(rule(), balance=10 * USD) == d.Skip("above_threshold")


def test_a_target_recharge_closes_the_whole_gap_rounded_up_to_a_cent() -> None:
    r = rule(amount=None, target_balance=50 * USD)
    assert decide(r, balance=-3 * USD - 1) == d.Charge(53 * USD + 10_000)
    # A small gap still charges at least the purchase minimum.
    assert decide(r, balance=9 * USD + 999_999, minimum=5 * USD) == d.Charge(40 * USD + 10_000)


def test_nothing_starts_while_one_is_in_flight_paused_disabled_or_backing_off() -> None:
    assert decide(rule(), in_flight=True) == d.Skip("in_flight")
    assert decide(rule(paused_at=NOW)) == d.Skip("paused")
    assert decide(rule(enabled=False)) == d.Skip("disabled")
    assert decide(rule(retry_at=NOW + timedelta(seconds=1))) == d.Skip("backing_off")
    assert decide(rule(retry_at=NOW)) == d.Charge(20 * USD)


def test_the_caps_refuse_with_a_reason_instead_of_skipping() -> None:
    by_count = decide(rule(max_per_day=2), charged_today=2)
    assert isinstance(by_count, d.Refuse) and by_count.code == "max_per_day"
    assert by_count.amount == 20 * USD
    by_amount = decide(rule(max_amount_per_day=50 * USD), amount_today=31 * USD)
    assert isinstance(by_amount, d.Refuse) and by_amount.code == "max_amount_per_day"
    assert decide(rule(max_amount_per_day=50 * USD), amount_today=30 * USD) == d.Charge(20 * USD)


def test_failures_back_off_exponentially_from_the_base_and_pause_at_the_limit() -> None:
    first = d.after_failure(0, NOW, base=3600, limit=3)
    assert (first.consecutive_failures, first.retry_at, first.pause) == (
        1,
        NOW + timedelta(hours=1),
        False,
    )
    second = d.after_failure(1, NOW, base=3600, limit=3)
    assert second.retry_at == NOW + timedelta(hours=2) and not second.pause
    assert d.after_failure(2, NOW, base=3600, limit=3).pause


STATUSES = ["pending", "requires_action", "succeeded", "failed", "canceled", "refused"]


@given(st.lists(st.sampled_from(STATUSES[:5]), max_size=12))
def test_settlement_only_moves_forward_and_success_always_wins(reports: list[str]) -> None:
    status = "pending"
    for reported in reports:
        new = d.next_status(status, reported)
        if new is not None:
            assert status != "succeeded"
            status = new
    if "succeeded" in reports:
        assert status == "succeeded"
    else:
        assert status != "succeeded"


def test_cents_refuse_fractions() -> None:
    assert d.cents(5 * USD) == 500
    with pytest.raises(ValueError, match="cents"):
        d.cents(5 * USD + 1)
