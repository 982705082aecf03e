"""The spending order of credit grants: which grant a debit draws on, where a refund
goes back, what a new grant holds when the balance is below zero. Pure: no I/O, no
clock.

How this works
--------------
An account's balance is held by its live grants, and below zero by nobody (overage):
``sum(remaining of live grants) == max(0, balance)`` before and after every step.

- A **debit** (the net usage of a ledger batch, a payment refund) draws on the live
  grants in spending order: the one that expires first, a grant without an expiry
  last, ties by creation then id. What no grant holds is overage.
- A **credit back** (a batch whose refunds exceed its debits) first pays back
  overage; what reaches above zero undoes the last draws, newest first: each grant
  gets back what its last draw took (``taken``), so a refund of a reserve returns to
  the grants the reserve came from. Beyond that it fills the grants drawn on last, up
  to what each was granted. What no live grant can take back (the grant it came from
  has expired) becomes a new grant of kind ``refund`` without an expiry.
- A **new grant** first covers the overage: it holds ``max(0, balance + amount)``
  of its amount, and counts as drawn on when it covered some.
- An **expiry** removes exactly what is left of the grant (the caller writes the
  ``grant_expiry`` entry of that amount).

``drawn`` numbers each account's draws: a debit stamps the grants it draws on with
the next numbers, in the order it drew them, so the grant drawn last has the highest,
and records in ``taken`` what it took from each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

INCLUDED, PROMOTIONAL, PURCHASED, REFUND = "included", "promotional", "purchased", "refund"
KINDS = (INCLUDED, PROMOTIONAL, PURCHASED)  # what a credit may be granted as
ALL_KINDS = (*KINDS, REFUND)


@dataclass(frozen=True, slots=True)
class Grant:
    id: int
    amount: int
    remaining: int
    expires_at: datetime | None
    created_at: datetime
    drawn: int = 0
    taken: int = 0  # what its last draw took, less what came back since

    @property
    def room(self) -> int:
        """What a credit back may return to it."""
        return self.amount - self.remaining


def spending_key(g: Grant) -> tuple[bool, datetime, datetime, int]:
    return (g.expires_at is None, g.expires_at or g.created_at, g.created_at, g.id)


def spending_order(grants: Iterable[Grant]) -> list[Grant]:
    return sorted(grants, key=spending_key)


@dataclass(frozen=True, slots=True)
class Moved:
    """What one step does to an account's live grants."""

    changed: tuple[Grant, ...] = ()  # the new state of each grant it changed
    residual: int = 0  # a credit back no grant could take: a new ``refund`` grant


def _next_drawn(grants: Sequence[Grant]) -> int:
    return max((g.drawn for g in grants), default=0) + 1


def debit(
    grants: Sequence[Grant], amount: int, *, first: int | None = None, top: int | None = None
) -> Moved:
    """Draw ``amount`` (> 0) on the live ``grants`` in spending order; ``first`` (a grant
    id: a payment refund's own purchase) is drawn on before the others. ``top``: the
    account's highest ``drawn`` when ``grants`` are only those the draw needs."""
    order = spending_order(grants)
    order.sort(key=lambda g: g.id != first)  # stable: the rest keep their order
    stamp = _next_drawn(grants) if top is None else top + 1
    left, changed = amount, []
    for g in order:
        if left <= 0:
            break
        take = min(left, g.remaining)
        if take <= 0:
            continue
        changed.append(replace(g, remaining=g.remaining - take, drawn=stamp, taken=take))
        stamp += 1
        left -= take
    return Moved(tuple(changed))


def credit_back(grants: Sequence[Grant], amount: int) -> Moved:
    """Return ``amount`` (> 0, the part above zero) to the grants drawn last first: what
    each one's last draw took, then up to what each was granted."""
    left = amount
    now = {g.id: g for g in grants if g.drawn}
    order = sorted(now, key=lambda i: -now[i].drawn)
    for undo in (True, False):
        for i in order:
            g = now[i]
            give = min(left, g.taken if undo else g.room)
            if give > 0:
                now[i] = replace(
                    g, remaining=g.remaining + give, taken=g.taken - min(give, g.taken)
                )
                left -= give
    changed = tuple(g for g in now.values() if g != _find(grants, g.id))
    return Moved(tuple(sorted(changed, key=lambda g: g.id)), left)


def _find(grants: Sequence[Grant], grant_id: int) -> Grant:
    return next(g for g in grants if g.id == grant_id)


def line(grants: Sequence[Grant], balance_before: int, amount: int) -> Moved:
    """A balance change that is not a new grant (a batch's net usage line, signed as in
    the ledger: negative draws, positive gives back)."""
    if amount < 0:
        return debit(grants, -amount)
    back = max(0, balance_before + amount) - max(0, balance_before)
    return credit_back(grants, back) if back > 0 else Moved()


def opening(grants: Sequence[Grant], balance_before: int, amount: int) -> tuple[int, int, int]:
    """(remaining, drawn, taken) of a new grant of ``amount`` credited at
    ``balance_before``: the overage it covers counts as a draw on it."""
    covered = min(amount, max(0, -balance_before))
    return amount - covered, (_next_drawn(grants) if covered else 0), covered
