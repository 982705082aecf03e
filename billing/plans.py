"""Plans and what a subscription owes: pure.

A plan has a monthly fee (whole cents) billed in advance and included credits granted
at the start of each period, expiring at its end. Subscribing starts at once: the rest
of the period's fee and credits, prorated by the seconds left. A change to a plan with
a fee at least as high may take effect at once (the difference, prorated; the extra
credits, prorated); a change to a cheaper plan takes effect when the next period
starts, so nothing paid for is taken back. Cancelling ends the subscription when the
period ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from billing.periods import Period
from meter.money import MICROS_PER_CENT, money

NOW, NEXT_PERIOD = "now", "next_period"


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    name: str
    description: str
    monthly_fee: int
    included_credits: int
    daily_budget: int | None
    overage_line: int | None
    active: bool
    row_version: int = 1
    # Its own prices of some of the deployment's routes (gateway.pricing.parse_override's
    # spec, as fitted then); None: the deployment's prices.
    prices: dict[str, dict[str, Any]] | None = None

    def ranks_at_least(self, other: Plan) -> bool:
        """Whether moving from ``other`` to this plan may happen at once: it costs at least
        as much, so the proration is a charge, never a refund."""
        return self.monthly_fee >= other.monthly_fee


@dataclass(frozen=True, slots=True)
class Start:
    """What a start or a change at once costs for the rest of the period."""

    charge: int  # micros, whole cents: billed on this period's invoice
    credits: int  # micros: granted now, expiring at the period's end


def to_cents(micros: int) -> int:
    """Rounded to the nearest cent, half up (a card is charged cents)."""
    return (micros + MICROS_PER_CENT // 2) // MICROS_PER_CENT * MICROS_PER_CENT


def fraction_left(period: Period, at: datetime) -> tuple[int, int]:
    """Seconds left of the period at ``at``, and the period's seconds."""
    total = int((period.end_at() - period.start_at()).total_seconds())
    left = int((period.end_at() - at).total_seconds())
    return max(0, min(total, left)), total


def prorated(amount: int, period: Period, at: datetime) -> int:
    left, total = fraction_left(period, at)
    return amount * left // total


def start(plan: Plan, period: Period, at: datetime) -> Start:
    return Start(
        to_cents(prorated(plan.monthly_fee, period, at)),
        prorated(plan.included_credits, period, at),
    )


def change_now(old: Plan, new: Plan, period: Period, at: datetime) -> Start:
    """From ``old`` to ``new`` at ``at``: the fee's difference for the rest of the period,
    and the included credits the new plan gives beyond the old for the same time."""
    a, b = start(old, period, at), start(new, period, at)
    return Start(max(0, b.charge - a.charge), max(0, b.credits - a.credits))


def effective(old: Plan, new: Plan, asked: str | None) -> str:
    """When a change takes effect: as asked, else at once for an upgrade and at the next
    period for a downgrade. Raises ``ValueError`` for a downgrade asked at once."""
    if asked == NOW and not new.ranks_at_least(old):
        raise ValueError(
            f"{new.name} costs less than {old.name}: the change takes effect when the next"
            " period starts"
        )
    if asked is not None:
        return asked
    return NOW if new.ranks_at_least(old) else NEXT_PERIOD


def span(period: Period, at: datetime | None = None) -> str:
    """The days a fee covers, "Dec 7 to Dec 31, 2026" with an en dash (the end is exclusive)."""
    first = (at or period.start_at()).date()
    last = period.end - timedelta(days=1)
    return f"{first:%b} {first.day} \N{EN DASH} {last:%b} {last.day}, {last.year}"


def fee_description(plan: Plan, period: Period) -> str:
    return f"{plan.name} plan, {span(period)}"


def proration_description(plan: Plan, period: Period, at: datetime, old: Plan | None) -> str:
    what = f"{plan.name} plan" if old is None else f"Change from {old.name} to {plan.name}"
    return f"{what}, {span(period, at)} (prorated)"


def included_description(plan: Plan, period: Period, amount: int) -> str:
    return f"Included credits: {plan.name} plan, {period.label} ({money(amount)})"


def price_lines(plan: Plan) -> list[str]:
    """The plan's own prices, a line per route, for people to read."""
    lines = []
    for route, entry in sorted((plan.prices or {}).items()):
        if "price" in entry:
            lines.append(f"{route}: {money(entry['price'], places=6)} a call")
            continue
        units = ", ".join(
            f"{money(price, places=6)} a unit of {kind}"
            for kind, price in sorted(entry["units"].items())
        )
        lines.append(f"{route}: {units}, at most {money(entry['max_price'], places=6)} a call")
    return lines
