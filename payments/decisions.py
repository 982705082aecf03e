"""Pure decisions of paying: amounts, auto-recharge, back-off. No I/O here.

Money is integer micros; Stripe charges whole cents (10,000 micros), so a charge is
always a whole number of cents and a target-balance recharge rounds its gap up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from meter.money import MICROS_PER_CENT, money


def cents(micros: int) -> int:
    if micros % MICROS_PER_CENT:
        raise ValueError(f"{micros} micros is not a whole number of cents")
    return micros // MICROS_PER_CENT


def micros_of_cents(value: int) -> int:
    return value * MICROS_PER_CENT


def round_up_to_cent(micros: int) -> int:
    return -(-micros // MICROS_PER_CENT) * MICROS_PER_CENT


def purchase_amount_error(amount: int, lo: int, hi: int) -> str | None:
    """Why ``amount`` cannot be bought, or None."""
    if amount % MICROS_PER_CENT:
        return "must be a whole number of cents (a multiple of 10000 micros)"
    if not lo <= amount <= hi:
        return f"must be between {money(lo)} and {money(hi)} ({lo} and {hi} micros)"
    return None


@dataclass(frozen=True, slots=True)
class RechargeRule:
    """An account's auto-recharge settings and state (a row of ``auto_recharge``)."""

    enabled: bool
    threshold: int
    amount: int | None
    target_balance: int | None
    max_per_day: int | None
    max_amount_per_day: int | None
    consecutive_failures: int = 0
    retry_at: datetime | None = None
    paused_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    amount: int


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing to do now (and nothing to record): disabled, paused, above threshold..."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """A recharge is due but a cap forbids it: recorded, and an event raised."""

    code: str  # max_per_day | max_amount_per_day
    amount: int
    message: str


Decision = Charge | Skip | Refuse


def recharge_amount(rule: RechargeRule, balance: int, minimum: int) -> int:
    """What one charge adds: the fixed amount, or the whole gap up to the target."""
    if rule.amount is not None:
        return rule.amount
    assert rule.target_balance is not None
    return max(minimum, round_up_to_cent(rule.target_balance - balance))


def decide_recharge(
    rule: RechargeRule,
    *,
    balance: int,
    in_flight: bool,
    charged_today: int,
    amount_today: int,
    now: datetime,
    minimum: int,
) -> Decision:
    """Whether a fall of the balance to ``balance`` starts a recharge.

    ``charged_today`` and ``amount_today`` count today's (UTC) recharges that were
    charged or are in flight; a refused or failed one does not count.
    """
    if not rule.enabled:
        return Skip("disabled")
    if rule.paused_at is not None:
        return Skip("paused")
    if in_flight:
        return Skip("in_flight")  # its credit counts toward the balance already
    if rule.retry_at is not None and now < rule.retry_at:
        return Skip("backing_off")
    if balance >= rule.threshold:
        return Skip("above_threshold")
    amount = recharge_amount(rule, balance, minimum)
    if rule.max_per_day is not None and charged_today + 1 > rule.max_per_day:
        return Refuse(
            "max_per_day",
            amount,
            f"{rule.max_per_day} recharges a day are allowed and {charged_today} were made today",
        )
    if rule.max_amount_per_day is not None and amount_today + amount > rule.max_amount_per_day:
        return Refuse(
            "max_amount_per_day",
            amount,
            f"a recharge of {amount} micros would bring today's recharges to"
            f" {amount_today + amount}, above the cap of {rule.max_amount_per_day}",
        )
    return Charge(amount)


@dataclass(frozen=True, slots=True)
class AfterFailure:
    consecutive_failures: int
    retry_at: datetime
    pause: bool


def after_failure(failures_before: int, now: datetime, *, base: float, limit: int) -> AfterFailure:
    """Back off exponentially from ``base`` seconds; pause at ``limit`` failures in a row."""
    failures = failures_before + 1
    return AfterFailure(
        consecutive_failures=failures,
        retry_at=now + timedelta(seconds=base * 2 ** (failures - 1)),
        pause=failures >= limit,
    )


# The status of a payment from its PaymentIntent's; None: still in progress.
INTENT_OUTCOME = {
    "succeeded": "succeeded",
    "requires_action": "requires_action",
    "requires_payment_method": "failed",
    "canceled": "canceled",
    "processing": None,
    "requires_confirmation": None,
    "requires_capture": None,
}

TERMINAL = frozenset({"succeeded", "failed", "canceled", "refused"})


def next_status(current: str, reported: str) -> str | None:
    """The status a payment moves to when Stripe reports ``reported``; None: no change.

    Succeeded is final and wins over everything: money Stripe took is credited even
    if we had given the payment up (a late webhook after the sweep failed it).
    """
    if current == reported or current == "succeeded":
        return None
    if reported == "succeeded":
        return "succeeded"
    if current in TERMINAL:
        return None
    return reported
