"""The book of a billing period for ``close_bench``, written straight into Postgres (COPY).

``plan`` decides, from a seed, what each account did (pure); ``expected`` says, apart
from ``billing.invoices``, what its invoice must bill; ``write`` copies it into a
migrated database as the admin API and the ledger worker would have left it: the
account (its balance the sum of its entries), a credit entry and its grant, a usage
entry per day and the day's rollups by route, and for some accounts what came after
the period (a credit, the next day's usage) or a plan with a monthly fee.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from billing import periods
from meter import keys
from meter.money import MICROS_PER_CENT

PERIOD = periods.parse("2026-11")
CREATED = datetime(2026, 10, 15, tzinfo=UTC)
CREDITED = datetime(2026, 10, 20, tzinfo=UTC)
USD = 1_000_000
# Micros a call: not whole cents, so the close's rounding to cents is exercised.
PRICES = {"chat": 2_125, "embed": 130, "image": 40_000, "audio": 6_170, "search": 4_990, "ocr": 777}
PLAN_ID, PLAN_NAME = "plan_closebench", "Team"
PLAN_FEE, PLAN_INCLUDED = 20 * USD, 5 * USD
NONE, COVERED, OVERAGE = "no usage", "covered", "overage"


@dataclass(frozen=True, slots=True)
class Seeded:
    id: str
    kind: str  # NONE | COVERED | OVERAGE
    credit: int  # the prepaid credit before the period (0: none)
    usage: tuple[tuple[int, str, int, int], ...]  # (day, route, calls, amount) in the period
    later_usage: int  # usage on the day after the period's end
    later_credit: int  # a credit entered just after the end
    plan: bool

    @property
    def used(self) -> int:
        return sum(u[3] for u in self.usage)

    @property
    def balance(self) -> int:
        return self.credit - self.used - self.later_usage + self.later_credit


def account_id(i: int) -> str:
    return f"acct_closebench{i:08d}"


def plan(n: int, seed: int, plan_share: float = 0.1) -> list[Seeded]:
    """``n`` accounts: a fifth without usage, the rest covered by their credit or past it."""
    rng = random.Random(seed)
    routes = sorted(PRICES)
    out = []
    for i in range(n):
        r = rng.random()
        kind = NONE if r < 0.2 else COVERED if r < 0.6 else OVERAGE
        usage: list[tuple[int, str, int, int]] = []
        if kind != NONE:
            days = rng.sample(range(PERIOD.start_day, PERIOD.end_day), rng.randint(2, 6))
            mine = rng.sample(routes, rng.randint(2, 5))
            for day in sorted(days):
                for route in mine:
                    calls = rng.randint(1, 400)
                    usage.append((day, route, calls, calls * PRICES[route]))
        used = sum(u[3] for u in usage)
        if kind == NONE:
            credit = rng.randint(1, 50) * USD
        elif kind == COVERED:
            credit = (used // USD + rng.randint(1, 20)) * USD
        else:
            credit = rng.randint(0, used * 4 // 5 // USD) * USD  # may be none at all
        tail = rng.random()
        out.append(
            Seeded(
                id=account_id(i),
                kind=kind,
                credit=credit,
                usage=tuple(usage),
                later_usage=rng.randint(1, 5_000_000) if tail < 0.1 else 0,
                later_credit=rng.randint(1, 100) * USD if 0.1 <= tail < 0.15 else 0,
                plan=rng.random() < plan_share,
            )
        )
    return out


def expected(a: Seeded) -> tuple[int, int, int]:
    """(usage, fee, amount due) of the account's invoice: the overage drawn in the period
    (usage past the credit), in whole cents, and the plan's fee of the next period."""
    overage = max(0, a.used - a.credit)
    fee = PLAN_FEE if a.plan else 0
    return a.used, fee, overage // MICROS_PER_CENT * MICROS_PER_CENT + fee


def _at_day(day: int, seconds: int = 0) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day, seconds=seconds)


async def write(conn: asyncpg.Connection, accounts: list[Seeded], shards: int) -> dict[str, int]:
    """Copy the accounts' book into a migrated database; returns the rows written."""
    end = PERIOD.end_at()
    account_rows, entries, rollups, grants, subs = [], [], [], [], []
    for a in accounts:
        line = 0 if a.kind != OVERAGE else 10_000 * USD
        shard = keys.shard_of(a.id, shards)
        account_rows.append((a.id, f"Bench {a.id[-8:]}", shard, a.balance, line, CREATED, CREATED))
        balance = 0
        covered = 0  # what is left of the first grant
        if a.credit:
            balance += a.credit
            covered = a.credit
            entries.append(
                (a.id, a.credit, balance, "credit", "Prepaid credit", "bench:credit", CREDITED)
            )
        by_day: dict[int, int] = {}
        for day, route, calls, amount in a.usage:
            rollups.append((a.id, day, route, calls, amount))
            by_day[day] = by_day.get(day, 0) + amount
        for day, amount in sorted(by_day.items()):
            balance -= amount
            entries.append(
                (
                    a.id,
                    -amount,
                    balance,
                    "usage",
                    "Usage",
                    f"bench:usage:{day}",
                    _at_day(day, 43_200),
                )
            )
        covered = max(0, min(covered, balance))
        if a.later_credit:
            balance += a.later_credit
            at = end + timedelta(seconds=60)
            entries.append((a.id, a.later_credit, balance, "credit", "Credit", "bench:later", at))
        if a.later_usage:
            rollups.append((a.id, PERIOD.end_day, "chat", 1, a.later_usage))
            balance -= a.later_usage
            at = end + timedelta(seconds=90)
            entries.append((a.id, -a.later_usage, balance, "usage", "Usage", "bench:later:u", at))
        assert balance == a.balance
        # The grants hold max(0, balance): the first credit is drawn first.
        covered = min(covered, max(0, balance))
        if a.credit:
            grants.append((a.id, "bench:credit", a.credit, covered, CREDITED))
        if a.later_credit:
            later_left = max(0, balance) - covered
            grants.append((a.id, "bench:later", a.later_credit, later_left, end))
        if a.plan:
            subs.append((a.id, PLAN_ID, "active", CREATED, PERIOD.start))
    await conn.copy_records_to_table(
        "accounts",
        records=account_rows,
        columns=("id", "name", "shard", "balance", "overage_line", "created_at", "updated_at"),
    )
    await conn.copy_records_to_table(
        "ledger_entries",
        records=[(*e, True) for e in entries],
        columns=(
            "account_id",
            "amount",
            "balance_after",
            "kind",
            "description",
            "idempotency_key",
            "created_at",
            "redis_applied",
        ),
    )
    await conn.copy_records_to_table(
        "usage_rollups",
        records=rollups,
        columns=("account_id", "day", "route", "calls", "amount"),
    )
    await conn.execute(
        "create temporary table bench_grants"
        " (account_id text, key text, amount bigint, remaining bigint, at timestamptz)"
    )
    await conn.copy_records_to_table("bench_grants", records=grants)
    await conn.execute(
        "insert into credit_grants (account_id, ledger_entry_id, kind, amount, remaining,"
        " created_at) select g.account_id, e.id, 'purchased', g.amount, g.remaining, g.at"
        " from bench_grants g join ledger_entries e"
        " on e.account_id = g.account_id and e.idempotency_key = g.key"
    )
    await conn.execute(
        "insert into plans (id, name, monthly_fee, included_credits) values ($1, $2, $3, $4)",
        PLAN_ID,
        PLAN_NAME,
        PLAN_FEE,
        PLAN_INCLUDED,
    )
    await conn.copy_records_to_table(
        "subscriptions",
        records=subs,
        columns=("account_id", "plan_id", "status", "started_at", "period_start"),
    )
    await conn.execute("vacuum analyze")
    return {
        "accounts": len(account_rows),
        "ledger_entries": len(entries),
        "usage_rollups": len(rollups),
        "credit_grants": len(grants),
        "subscriptions": len(subs),
    }
