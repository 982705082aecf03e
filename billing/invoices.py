"""The close of a billing period: one invoice per account and period, from the ledger.

``close_account`` writes an account's invoice for a period in one transaction under
the account's row lock; the unique (account, period) key makes a second close,
whoever runs it, change nothing. Its lines are the usage rollups of the period's UTC
days by route. The amount due is the overage drawn: what the book balance owed below
zero at the period's end, less what earlier unpaid invoices already bill; the part of
it beyond the period's usage is an older debt, the "balance carried forward" line;
what usage cost beyond the overage, prepaid credits covered ("credits applied"). The balance at
the end is today's book balance without what came after: credits entered since, and
the usage of later days (the rollups), so a late call lands in its own period.

``finalize`` turns a draft whose grace ran out into an open (or, with nothing due,
paid) invoice: the next number from ``invoice_counter`` (its row lock makes numbers
gapless), seller and buyer frozen, a due date, the "Applied credit balance to
invoice" entry of zero net effect in the balance history, and ``invoice.finalized``.
``close_period`` walks every account without its invoice once the ledger holds every
usage event of the period. Workers share the walk: it takes each account under ``SKIP
LOCKED``, passing over one another worker is closing, then walks what is left waiting
for the locks, so that when it returns every account has its invoice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from admin import ids
from admin.errors import NotFound
from admin.repository import Conn
from billing import subscriptions
from billing.periods import Period
from ledger.crash import CrashHook
from meter import keys
from meter.live_state import LiveState
from meter.money import MICROS_PER_CENT, money
from meter.settings import Settings
from payments import outbox

log = logging.getLogger("meter.billing")

INVOICE = ids.INVOICE
# Calls admitted before the period's end may reach Redis's stream this much later (by
# its clock): the close waits until every entry before end + skew is booked.
CLOCK_SKEW = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Line:
    position: int
    kind: str  # usage | fee | carried_forward | credits_applied
    description: str
    route: str | None
    calls: int | None
    amount: int


@dataclass(frozen=True, slots=True)
class Invoice:
    id: str
    account_id: str
    period: Period
    status: str
    number: str | None
    currency: str
    usage_amount: int
    fee_amount: int
    credits_applied: int
    amount_due: int
    amount_paid: int
    balance_at_end: int
    seller: dict[str, Any] | None
    buyer: dict[str, Any] | None
    created_at: datetime
    finalize_after: datetime
    finalized_at: datetime | None
    due_at: datetime | None
    paid_at: datetime | None
    lines: tuple[Line, ...]
    payment_attempts: int = 0  # charges tried (an open one with any has failed so far)
    overdue_at: datetime | None = None
    carried_amount: int = 0  # the balance carried forward, billed in full

    @property
    def owed(self) -> int:
        """What is left to pay."""
        return self.amount_due - self.amount_paid

    @property
    def payable(self) -> bool:
        """Open with something left to pay: what a charge of it charges."""
        return self.status == "open" and self.owed > 0

    @classmethod
    def from_rows(cls, row: Mapping[str, Any], lines: list[Mapping[str, Any]]) -> Invoice:
        return cls(
            id=row["id"],
            account_id=row["account_id"],
            period=Period(row["period_start"], row["period_end"]),
            status=row["status"],
            number=row["number"],
            currency=row["currency"],
            usage_amount=row["usage_amount"],
            fee_amount=row["fee_amount"],
            credits_applied=row["credits_applied"],
            amount_due=row["amount_due"],
            amount_paid=row["amount_paid"],
            balance_at_end=row["balance_at_end"],
            carried_amount=row["carried_amount"],
            seller=orjson.loads(row["seller"]) if row["seller"] else None,
            buyer=orjson.loads(row["buyer"]) if row["buyer"] else None,
            created_at=row["created_at"],
            finalize_after=row["finalize_after"],
            finalized_at=row["finalized_at"],
            due_at=row["due_at"],
            paid_at=row["paid_at"],
            lines=tuple(
                Line(
                    r["position"], r["kind"], r["description"], r["route"], r["calls"], r["amount"]
                )
                for r in lines
            ),
            payment_attempts=row["payment_attempts"],
            overdue_at=row["overdue_at"],
        )


@dataclass(frozen=True, slots=True)
class Due:
    """The money of one close. Pure:
    ``amount_due + credits_applied == usage + fee + carried``.

    The plan's fee (whole cents) is paid by the invoice, never from prepaid credits.
    What the balance owes and no unpaid invoice bills yet is due: as far as the
    period's usage goes it is the overage, the usage credits did not cover; beyond
    it, a debt older than the period (a void invoice's, a refund's beyond the unspent
    balance) carried forward. Each is whole cents (what a card can be charged); a
    fraction of a cent stays owed on the balance and is billed with a later period."""

    usage: int
    fee: int
    balance_at_end: int
    already_billed: int

    @property
    def _owed(self) -> int:
        return max(0, -self.balance_at_end - self.already_billed)

    @property
    def overage_due(self) -> int:
        return _whole_cents(min(self._owed, self.usage))

    @property
    def carried(self) -> int:
        return _whole_cents(max(0, self._owed - self.usage))

    @property
    def amount_due(self) -> int:
        return self.overage_due + self.carried + self.fee

    @property
    def credits_applied(self) -> int:
        return self.usage - self.overage_due


def _whole_cents(micros: int) -> int:
    return micros - micros % MICROS_PER_CENT


def credited_share(amount_due: int, fee: int, paid_before: int, paying: int) -> int:
    """What a payment of an invoice gives back to the balance: the overage and the
    balance carried forward (paid first), never the fee, which the balance never owed.
    Pure."""
    overage = amount_due - fee

    def covered(paid: int) -> int:
        return min(max(0, paid), overage)

    return covered(paid_before + paying) - covered(paid_before)


async def load(conn: Conn, invoice_id: str) -> Invoice | None:
    row = await conn.fetchrow("select * from invoices where id = $1", invoice_id)
    if row is None:
        return None
    lines = await conn.fetch(
        "select * from invoice_lines where invoice_id = $1 order by position", invoice_id
    )
    return Invoice.from_rows(row, lines)


CARRIED_FORWARD = "Balance carried forward"


def usage_description(route: str, calls: int) -> str:
    return f"Usage: {route} ({calls:,} call{'' if calls == 1 else 's'})"


@dataclass(frozen=True, slots=True)
class Fee:
    """A plan fee or proration the invoice bills (``charge_id``: its recorded charge;
    None in an estimate of a renewal still to come)."""

    description: str
    amount: int
    charge_id: int | None = None


async def unbilled_fees(conn: Conn, account_id: str, period: Period) -> list[Fee]:
    """The subscription charges the invoice of ``period`` bills."""
    return [
        Fee(c["description"], c["amount"], c["id"])
        for c in await subscriptions.unbilled(conn, account_id, period)
    ]


async def figures(
    conn: Conn, account_id: str, balance: int, period: Period, fees: Sequence[Fee] = ()
) -> tuple[list[Mapping[str, Any]], Due]:
    """The period's usage by route and the money of its invoice, from the book as it is
    now (a period still running: its days so far)."""
    routes = await conn.fetch(
        "select route, sum(calls)::bigint as calls, sum(amount)::bigint as amount"
        " from usage_rollups where account_id = $1 and day >= $2 and day < $3"
        " group by route having sum(calls) <> 0 or sum(amount) <> 0 order by route",
        account_id,
        period.start_day,
        period.end_day,
    )
    later_usage = await conn.fetchval(
        "select coalesce(sum(amount), 0)::bigint from usage_rollups"
        " where account_id = $1 and day >= $2",
        account_id,
        period.end_day,
    )
    # A later period's included credits are later whenever they were entered (the close
    # renews the subscription into the next period before it reads the book).
    later_credits = await conn.fetchval(
        "select coalesce(sum(amount), 0)::bigint from ledger_entries"
        " where account_id = $1 and kind <> 'usage' and (created_at >= $2 or (kind = 'grant'"
        " and idempotency_key like 'included:%' and substr(idempotency_key, 10, 10) >= $3))",
        account_id,
        period.end_at(),
        period.end.isoformat(),
    )
    # Unpaid invoices of other periods (a later one too, when an older period is closed
    # after it: its amount may already bill this period's debt). A void invoice bills
    # nothing, so what it billed is carried forward; one written off as uncollectible
    # keeps its debt and is not billed again.
    billed = await conn.fetchval(
        "select coalesce(sum(greatest(0, amount_due - fee_amount - amount_paid)), 0)::bigint"
        " from invoices where account_id = $1"
        " and status in ('draft', 'open', 'uncollectible') and period_start <> $2",
        account_id,
        period.start,
    )
    due = Due(
        usage=sum(r["amount"] for r in routes),
        fee=sum(f.amount for f in fees),
        balance_at_end=balance - later_credits + later_usage,
        already_billed=billed,
    )
    return list(routes), due


async def close_account(
    conn: Conn,
    account_id: str,
    period: Period,
    *,
    now: datetime,
    grace: float,
    anchor: int = 1,
    crash: CrashHook | None = None,
    skip_locked: bool = False,
) -> Invoice | None:
    """The account's invoice for ``period``, written now or found; in one transaction.
    None: the account did not exist in the period, or (``skip_locked``) another
    transaction holds it: a worker walking every account leaves it to the one closing
    it. Its subscription is renewed into the next period first, so the next period's
    fee is billed on it (in advance)."""
    lock = "for update skip locked" if skip_locked else "for update"
    async with conn.transaction():
        account = await conn.fetchrow(
            f"select id, balance, created_at from accounts where id = $1 {lock}", account_id
        )
        if account is None or account["created_at"] >= period.end_at():
            return None
        found = await conn.fetchval(
            "select id from invoices where account_id = $1 and period_start = $2",
            account_id,
            period.start,
        )
        if found is not None:
            return await load(conn, found)
        # Credits granted here reach Redis through the sync loop; the billing loop renews
        # every subscription before it closes (subscriptions.renew_due), so this is rare.
        await subscriptions.renew(conn, account_id, period.next(anchor), now=now, anchor=anchor)
        fees = await unbilled_fees(conn, account_id, period)
        routes, due = await figures(conn, account_id, account["balance"], period, fees)
        if crash is not None:
            crash("close_after_lines")
        invoice_id = ids.new_id(INVOICE)
        await conn.execute(
            "insert into invoices (id, account_id, period_start, period_end, status,"
            " usage_amount, fee_amount, credits_applied, amount_due, balance_at_end,"
            " carried_amount, finalize_after)"
            " values ($1, $2, $3, $4, 'draft', $5, $6, $7, $8, $9, $10, $11)",
            invoice_id,
            account_id,
            period.start,
            period.end,
            due.usage,
            due.fee,
            due.credits_applied,
            due.amount_due,
            due.balance_at_end,
            due.carried,
            now + timedelta(seconds=grace),
        )
        lines: list[tuple[str, str, str | None, int | None, int, int | None]] = [
            (
                "usage",
                usage_description(r["route"], r["calls"]),
                r["route"],
                r["calls"],
                r["amount"],
                None,
            )
            for r in routes
        ]
        lines += [("fee", f.description, None, None, f.amount, f.charge_id) for f in fees]
        if due.carried:
            lines.append(("carried_forward", CARRIED_FORWARD, None, None, due.carried, None))
        if due.credits_applied:
            lines.append(
                (
                    "credits_applied",
                    "Applied credit balance",
                    None,
                    None,
                    -due.credits_applied,
                    None,
                )
            )
        await conn.executemany(
            "insert into invoice_lines (invoice_id, position, kind, description, route, calls,"
            " amount, charge_id) values ($1, $2, $3, $4, $5, $6, $7, $8)",
            [(invoice_id, i, *line) for i, line in enumerate(lines, 1)],
        )
        if fees:
            await conn.execute(
                "update subscription_charges set invoice_id = $2 where id = any($1::bigint[])",
                [f.charge_id for f in fees],
                invoice_id,
            )
        return await load(conn, invoice_id)


def seller(settings: Settings) -> dict[str, Any]:
    return {
        "name": settings.seller_name,
        "address": [p.strip() for p in settings.seller_address.split(";") if p.strip()],
        "tax_id": settings.seller_tax_id or None,
    }


async def _buyer(conn: Conn, account_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        "select a.name, a.billing_email, p.legal_name, p.address_line1, p.address_line2,"
        " p.city, p.postal_code, p.state, p.country, p.po_number from accounts a"
        " left join billing_profiles p on p.account_id = a.id where a.id = $1",
        account_id,
    )
    taxes = await conn.fetch(
        "select type, country, value from tax_ids where account_id = $1 and deleted_at is null"
        " and status = 'verified' order by created_at",
        account_id,
    )
    return {
        "name": row["legal_name"] or row["name"],
        "email": row["billing_email"],
        "address": [
            v
            for v in (
                row["address_line1"],
                row["address_line2"],
                " ".join(x for x in (row["postal_code"], row["city"]) if x) or None,
                row["state"],
                row["country"],
            )
            if v
        ],
        "po_number": row["po_number"],
        "tax_ids": [dict(t) for t in taxes],
    }


async def finalize(
    conn: Conn,
    invoice_id: str,
    settings: Settings,
    *,
    now: datetime,
    crash: CrashHook | None = None,
) -> Invoice | None:
    """Number, freeze and open (or, nothing due, mark paid) one draft; in one
    transaction. A draft already finalized is returned as it is."""
    async with conn.transaction():
        row = await conn.fetchrow("select * from invoices where id = $1 for update", invoice_id)
        if row is None:
            return None
        if row["status"] != "draft":
            return await load(conn, invoice_id)
        if crash is not None:
            crash("close_before_number")
        n = await conn.fetchval("update invoice_counter set next = next + 1 returning next - 1")
        number = f"{settings.invoice_prefix}{n:06d}"
        if crash is not None:
            crash("close_after_number")
        paid = row["amount_due"] == 0
        await conn.execute(
            "update invoices set status = $2, number = $3, seller = $4::jsonb, buyer = $5::jsonb,"
            " finalized_at = $6, due_at = $7, paid_at = $8, next_charge_at = $9,"
            " row_version = row_version + 1 where id = $1",
            invoice_id,
            "paid" if paid else "open",
            number,
            orjson.dumps(seller(settings)).decode(),
            orjson.dumps(await _buyer(conn, row["account_id"])).decode(),
            now,
            now + timedelta(days=settings.invoice_net_days),
            now if paid else None,
            None if paid else now,  # charged off-session at once (billing.charges)
        )
        if row["credits_applied"]:
            await _credits_applied_entry(conn, row["account_id"], invoice_id, number, row)
        await outbox.raise_event(
            conn,
            "invoice.finalized",
            row["account_id"],
            f"invoice.finalized:{invoice_id}",
            {
                "invoice_id": invoice_id,
                "number": number,
                "period": f"{row['period_start']:%Y-%m}",
                "amount_due": row["amount_due"],
                "usage": row["usage_amount"],
                "credits_applied": row["credits_applied"],
                "carried_forward": row["carried_amount"],
                "due_at": (now + timedelta(days=settings.invoice_net_days)).isoformat(),
            },
        )
        return await load(conn, invoice_id)


async def _credits_applied_entry(
    conn: Conn, account_id: str, invoice_id: str, number: str, row: Mapping[str, Any]
) -> None:
    """The balance history's line of zero net effect: what prepaid credits covered."""
    balance = await conn.fetchval(
        "select balance from accounts where id = $1 for update", account_id
    )
    await conn.execute(
        "insert into ledger_entries (account_id, amount, balance_after, kind, description,"
        " idempotency_key, redis_applied) values ($1, 0, $2, 'credits_applied', $3, $4, true)"
        " on conflict (account_id, idempotency_key) do nothing",
        account_id,
        balance,
        f"Applied credit balance to invoice {number}: {money(row['credits_applied'])}"
        f" of {money(row['usage_amount'] + row['fee_amount'])}",
        f"credits_applied:{invoice_id}",
    )


async def ledger_caught_up(
    pool: asyncpg.Pool, live: LiveState, shards: int, period: Period
) -> bool:
    """Whether every usage event admitted before the period's end is in the ledger: on
    every shard, the first entry past the booked offset (if any) came after the end
    (and the clock skew allowance)."""
    offsets = dict(await pool.fetch("select shard, last_id from ledger_offsets"))
    limit_ms = int((period.end_at() + CLOCK_SKEW).timestamp() * 1000)
    for shard in range(shards):
        after = offsets.get(shard, "0-0")
        found = await live.redis.xrange(keys.usage_stream(shard), f"({after}", "+", count=1)
        if found:
            first_id = found[0][0]
            first = first_id.decode() if isinstance(first_id, bytes) else str(first_id)
            if int(first.split("-")[0]) < limit_ms:
                return False
    return True


@dataclass
class Closer:
    """The period close and finalization, as the ledger worker and the CLI run them."""

    pool: asyncpg.Pool
    live: LiveState
    settings: Settings
    clock: Callable[[], float] = time.time
    crash: CrashHook | None = None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def close_period(self, period: Period, account_id: str | None = None) -> int:
        """Close ``period`` for every account (or one); returns invoices written or found.
        Raises ``NotCaughtUp`` while the ledger still lacks some of its usage."""
        if self.now() < period.end_at():
            raise PeriodOpen(f"the period {period.label} ends at {period.end_at():%Y-%m-%d}")
        if not await ledger_caught_up(self.pool, self.live, self.settings.shards, period):
            raise NotCaughtUp(f"the ledger has not booked all of {period.label}'s usage yet")
        await subscriptions.renew_due(
            self.pool, self.live, self.now(), self.settings.billing_anchor_day
        )
        if account_id is not None:
            async with self.pool.acquire() as conn:
                if await conn.fetchval("select 1 from accounts where id = $1", account_id) is None:
                    raise NotFound(f"no account {account_id!r}")
                return 0 if await self._one(conn, account_id, period) is None else 1
        count = 0
        async with self.pool.acquire() as conn:
            # First every account no other transaction holds (another worker closing it),
            # then, waiting for their locks, whatever is left without its invoice.
            for skip_locked in (True, False):
                after: str | None = ""
                while after is not None:
                    # A page of accounts by id (the primary key's order), then those of it
                    # without their invoice: a plan that stays an index walk whatever the
                    # tables' statistics (an anti-join over every account and invoice, as
                    # Postgres chose for the whole walk, read both tables a page).
                    page = await conn.fetchrow(
                        "with page as (select id, created_at from accounts where id > $1"
                        " order by id limit 200) select (select max(id) from page) as last,"
                        " array(select p.id from page p where p.created_at < $2"
                        " and not exists (select 1 from invoices i where i.account_id = p.id"
                        " and i.period_start = $3) order by p.id) as open",
                        after,
                        period.end_at(),
                        period.start,
                    )
                    for account_id in page["open"]:
                        found = await self._one(conn, account_id, period, skip_locked=skip_locked)
                        count += found is not None
                    after = page["last"]
            await conn.execute(
                "insert into billing_periods (period_start, period_end, invoices)"
                " select $1, $2, (select count(*) from invoices where period_start = $1)"
                " where not exists (select 1 from accounts a where a.created_at < $3"
                " and not exists (select 1 from invoices i where i.account_id = a.id"
                " and i.period_start = $1)) on conflict do nothing",
                period.start,
                period.end,
                period.end_at(),
            )
        return count

    async def _one(
        self, conn: Conn, account_id: str, period: Period, *, skip_locked: bool = False
    ) -> Invoice | None:
        return await close_account(
            conn,
            account_id,
            period,
            now=self.now(),
            grace=self.settings.invoice_grace,
            anchor=self.settings.billing_anchor_day,
            crash=self.crash,
            skip_locked=skip_locked,
        )

    async def finalize_due(self, limit: int | None = None) -> int:
        """Finalize the drafts whose grace ran out (at most ``limit``; None: every one);
        any number of workers (SKIP LOCKED). Returns how many this call finalized."""
        done = 0
        async with self.pool.acquire() as conn:
            while limit is None or done < limit:
                async with conn.transaction():
                    row = await conn.fetchrow(
                        "select id from invoices where status = 'draft' and finalize_after <= $1"
                        " order by finalize_after, id limit 1 for update skip locked",
                        self.now(),
                    )
                    if row is None:
                        return done
                    await finalize(conn, row["id"], self.settings, now=self.now(), crash=self.crash)
                done += 1
        return done


class PeriodOpen(Exception):
    """The period has not ended."""


class NotCaughtUp(Exception):
    """The ledger still lacks usage of the period."""
