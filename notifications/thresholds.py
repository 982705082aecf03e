"""Spend thresholds: which amounts the day's usage passed, each raised once a UTC day.

An account's thresholds are absolute amounts or percentages of its daily budget (the
daily hard limit), plus the operator's single ``daily_notify_threshold``. The ledger
worker calls ``fire`` in every batch transaction that moved usage rollups, with the
(account, day) pairs it touched, so the per-call path does no work for them; a
settings change calls it too, so a new threshold already below today's spend fires
at once. A passed amount is a ``spend_thresholds_passed`` row keyed by (account, day,
amount), written in the same transaction as its outbox event: a threshold passed
today does not fire again, whoever looks, and tomorrow it fires afresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from admin.repository import Conn
from payments import outbox

EVENT = "usage.daily_threshold_passed"
ABSOLUTE, PERCENT = "absolute", "percent"


@dataclass(frozen=True, slots=True)
class Threshold:
    kind: str  # absolute | percent
    value: int  # micros, or whole percent of the daily budget

    def amount(self, budget: int | None) -> int | None:
        """The amount in micros it stands for (None: a percentage with no budget)."""
        if self.kind == ABSOLUTE:
            return self.value
        return None if budget is None else budget * self.value // 100


@dataclass(frozen=True, slots=True)
class Passed:
    amount: int
    threshold: Threshold


def passed(
    spent: int, budget: int | None, thresholds: Iterable[Threshold], already: Iterable[int]
) -> list[Passed]:
    """The thresholds ``spent`` has reached that have not fired today, lowest first.

    Two thresholds standing for the same amount (80 % of $10 and $8) fire once.
    """
    done = set(already)
    out: dict[int, Passed] = {}
    for t in thresholds:
        amount = t.amount(budget)
        if amount is None or amount <= 0 or amount > spent or amount in done:
            continue
        out.setdefault(amount, Passed(amount, t))
    return [out[a] for a in sorted(out)]


# The candidates: touched (account, day) pairs with spend management on, and those whose
# operator threshold the admission script flagged in this batch; with the day's spend
# and what already fired that day. Driven from spend_settings, so a batch of accounts
# without thresholds costs one hash join.
CANDIDATES = """
with touched as (
    select distinct account_id, day from unnest($1::text[], $2::int[]) as t(account_id, day)
), candidates as (
    select t.account_id, t.day from touched t
    join spend_settings s on s.account_id = t.account_id and s.enabled
    union
    select account_id, day from unnest($3::text[], $4::int[]) as f(account_id, day)
)
select c.account_id, c.day, a.daily_hard_limit, a.daily_notify_threshold,
       coalesce(s.enabled, false) as enabled,
       (select coalesce(sum(u.amount), 0) from usage_rollups u
         where u.account_id = c.account_id and u.day = c.day)::bigint as spent,
       coalesce(th.kinds, '{}') as kinds, coalesce(th.vals, '{}') as vals,
       coalesce((select array_agg(p.amount) from spend_thresholds_passed p
                  where p.account_id = c.account_id and p.day = c.day), '{}') as fired
from candidates c
join accounts a on a.id = c.account_id
left join spend_settings s on s.account_id = c.account_id
left join lateral (
    select array_agg(kind order by id) as kinds, array_agg(value order by id) as vals
    from spend_thresholds where account_id = c.account_id
) th on true
"""


ANY_ENABLED = "select exists (select 1 from spend_settings where enabled)"


async def fire(
    conn: Conn,
    touched: Sequence[tuple[str, int]],
    flagged: Sequence[tuple[str, int]] = (),
) -> int:
    """Raise an event for every threshold passed on the (account, day) pairs ``touched``
    (their thresholds) and ``flagged`` (the admission script saw the operator's threshold
    crossed); in the caller's transaction, in two statements however many pass.
    Returns how many fired."""
    if not touched and not flagged:
        return 0
    if not flagged and not await conn.fetchval(ANY_ENABLED):
        return 0  # nobody has spend management on: skip sending the batch's accounts
    rows = await conn.fetch(
        CANDIDATES,
        [a for a, _ in touched],
        [d for _, d in touched],
        [a for a, _ in flagged],
        [d for _, d in flagged],
    )
    found: list[tuple[str, int, Passed, int, int | None]] = []
    for r in rows:
        mine = [Threshold(k, v) for k, v in zip(r["kinds"], r["vals"], strict=True)]
        thresholds = mine if r["enabled"] else []
        if r["daily_notify_threshold"] is not None:
            thresholds.append(Threshold(ABSOLUTE, r["daily_notify_threshold"]))
        for p in passed(r["spent"], r["daily_hard_limit"], thresholds, r["fired"]):
            found.append((r["account_id"], r["day"], p, r["spent"], r["daily_hard_limit"]))
    return await record(conn, found)


def _key(account_id: str, day: int, amount: int) -> str:
    return f"{EVENT}:{account_id}:{day}:{amount}"


async def record(conn: Conn, found: Sequence[tuple[str, int, Passed, int, int | None]]) -> int:
    """The one place passed thresholds are written and raised: each (account, day,
    amount) once, whoever finds it first. Returns how many were raised now."""
    raised = await outbox.raise_events(
        conn,
        [
            (
                EVENT,
                account_id,
                _key(account_id, day, p.amount),
                {
                    "day": day,
                    "threshold": p.amount,
                    "threshold_kind": p.threshold.kind,
                    "threshold_percent": p.threshold.value if p.threshold.kind == PERCENT else None,
                    "spent": spent,
                    "daily_budget": budget,
                },
            )
            for account_id, day, p, spent, budget in found
        ],
    )
    new = [(a, d, p, s) for a, d, p, s, _ in found if _key(a, d, p.amount) in raised]
    if new:
        await conn.execute(
            "insert into spend_thresholds_passed (account_id, day, amount, spent, event_id)"
            " select * from unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::text[])"
            " on conflict do nothing",
            [a for a, _, _, _ in new],
            [d for _, d, _, _ in new],
            [p.amount for _, _, p, _ in new],
            [s for _, _, _, s in new],
            [raised[_key(a, d, p.amount)] for a, d, p, _ in new],
        )
    return len(new)
