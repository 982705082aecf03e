"""Auto-recharge: its settings, and one charge per fall of the balance below the threshold.

How a crossing becomes one charge: the admission script flags the call that took the
balance below the account's low-balance threshold (which is the recharge threshold);
the ledger worker records it in ``account_signals`` in the batch's transaction. Here
a worker claims pending signals (``FOR UPDATE SKIP LOCKED``: any number of workers
share them), and in the same transaction numbers the crossing, decides
(``decisions.decide_recharge``) and writes the payment, unique per (account,
crossing); a partial unique index allows one recharge in flight per account. The
charge is sent after the commit; a crash there leaves it to the sweep.

A balance that stays below the threshold raises no new signal, so the sweep's level
check adds one when no recharge is in flight, none is backing off and the balance is
still low (after a recharge that did not close the gap, or a back-off that ended).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from admin import audit, sync
from admin import repository as repo
from admin.audit import Actor
from admin.errors import Conflict, InvalidInput, NotFound
from admin.ids import new_id
from admin.provisioning import check_etag
from ledger.events import StreamId
from meter.live_state import StateUnavailable
from meter.money import MICROS_PER_CENT, money
from payments import decisions, outbox
from payments.records import AutoRecharge, Payment
from payments.service import (
    PAYMENT,
    Context,
    NoPaymentMethod,
    Payments,
    Report,
    card_to_charge,
    publish_recharge_state,
    send,
    settle,
    today_start,
)

log = logging.getLogger("meter.payments")

# The admission script's signals as the events people are told of. Its notify
# threshold is raised by notifications.thresholds in the batch that recorded it.
SIGNAL_EVENTS = {
    "hard_limit": "usage.daily_limit_reached",
    "balance_low": "balance.low",
    "overage_started": "balance.overage_started",
}
DAILY = frozenset({"hard_limit"})
CLAIM = 100


# What a settings change gives: the rule's settings (its state fields keep their
# defaults; ``put`` starts the state afresh).
RechargeChanges = decisions.RechargeRule


@dataclass(frozen=True, slots=True)
class RechargeView:
    """The settings and what auto-recharge is doing (the overview's line)."""

    settings: AutoRecharge | None
    in_flight: Payment | None
    last: Payment | None

    @property
    def state(self) -> str:
        s = self.settings
        if s is None or not s.enabled:
            return "off"
        if s.paused_at is not None:
            return "paused"
        if self.in_flight is not None:
            return "in_flight"
        if s.retry_at is not None:
            return "backing_off"
        return "on"


class Recharges:
    def __init__(self, ctx: Context, payments: Payments) -> None:
        self.ctx = ctx
        self.payments = payments

    # -- settings -----------------------------------------------------------------------

    async def view(self, account_id: str) -> RechargeView:
        async with self.ctx.pool.acquire() as conn:
            if await repo.get_account(conn, account_id) is None:
                raise NotFound(f"no account {account_id!r}")
            row = await conn.fetchrow(
                "select * from auto_recharge where account_id = $1", account_id
            )
            flight = await conn.fetchrow(
                "select * from payments where account_id = $1 and purpose = 'recharge'"
                " and status = 'pending'",
                account_id,
            )
            last = await conn.fetchrow(
                "select * from payments where account_id = $1 and purpose = 'recharge'"
                " and status <> 'pending' order by created_at desc, id desc limit 1",
                account_id,
            )
        return RechargeView(
            AutoRecharge.from_row(row) if row else None,
            Payment.from_row(flight) if flight else None,
            Payment.from_row(last) if last else None,
        )

    def _check(self, c: RechargeChanges) -> None:
        s = self.ctx.settings
        errors: list[tuple[str, str]] = []
        if (c.amount is None) == (c.target_balance is None):
            errors.append(("amount", "give either amount or target_balance, not both"))
        if c.amount is not None:
            why = decisions.purchase_amount_error(
                c.amount, s.credit_purchase_min, s.credit_purchase_max
            )
            if why:
                errors.append(("amount", why))
        if c.target_balance is not None:
            if c.target_balance % MICROS_PER_CENT:
                errors.append(("target_balance", "must be a whole number of cents"))
            if c.target_balance <= c.threshold:
                errors.append(("target_balance", "must be above the threshold"))
            if c.target_balance - c.threshold > s.credit_purchase_max:
                errors.append(
                    (
                        "target_balance",
                        f"may be at most {money(s.credit_purchase_max)} above the threshold",
                    )
                )
        if (
            c.max_amount_per_day is not None
            and c.amount is not None
            and (c.max_amount_per_day < c.amount)
        ):
            errors.append(("max_amount_per_day", "must allow at least one recharge"))
        if errors:
            raise InvalidInput(errors)

    async def put(
        self, actor: Actor, account_id: str, c: RechargeChanges, if_match: str | None = None
    ) -> AutoRecharge:
        """Change the settings; any change ends a pause and the back-off."""
        self.ctx.stripe  # noqa: B018 - 503 when payments are not configured
        self._check(c)
        if c.enabled:
            methods = await self.payments.methods(account_id)
            if not any(m.is_default for m in methods):
                methods = await self.payments.refresh_methods(account_id)
            if not methods:
                raise NoPaymentMethod("auto-recharge charges the default card: add a card first")
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            account = await repo.get_account(conn, account_id, for_update=True)
            if account is None:
                raise NotFound(f"no account {account_id!r}")
            if account.status == "closed":
                raise Conflict(f"account {account_id} is closed")
            before_row = await conn.fetchrow(
                "select * from auto_recharge where account_id = $1 for update", account_id
            )
            before = AutoRecharge.from_row(before_row) if before_row else None
            check_etag(before.etag if before else '"r0"', if_match)
            row = await conn.fetchrow(
                "insert into auto_recharge as r (account_id, enabled, threshold, amount,"
                " target_balance, max_per_day, max_amount_per_day)"
                " values ($1, $2, $3, $4, $5, $6, $7)"
                " on conflict (account_id) do update set enabled = $2, threshold = $3,"
                " amount = $4, target_balance = $5, max_per_day = $6, max_amount_per_day = $7,"
                " consecutive_failures = 0, retry_at = null, paused_at = null,"
                " pause_reason = null, row_version = r.row_version + 1, updated_at = now()"
                " returning *",
                account_id,
                c.enabled,
                c.threshold,
                c.amount,
                c.target_balance,
                c.max_per_day,
                c.max_amount_per_day,
            )
            after = AutoRecharge.from_row(row)
            changed = None
            if c.enabled and account.low_balance_threshold != c.threshold:
                changed = await repo.update_account(
                    conn, account_id, "low_balance_threshold = $2", c.threshold, config=True
                )
            await audit.record(
                conn,
                actor,
                "auto_recharge.update",
                "auto_recharge",
                account_id,
                account_id=account_id,
                before=before,
                after=after,
            )
        if changed is not None:
            await sync.then_redis(
                f"threshold of {account_id}",
                sync.apply_account(self.ctx.pool, self.ctx.live, changed),
            )
        await publish_recharge_state(self.ctx, account_id)
        if c.enabled:
            await self.level_check(account_id)  # already below: recharge now
        return after

    # -- crossings ----------------------------------------------------------------------

    async def process_signals(self) -> int:
        """Claim pending signals, raise their events, start the recharges they call for."""
        started: list[Payment] = []
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            signals = await conn.fetch(
                "select * from account_signals where processed_at is null"
                " order by id limit $1 for update skip locked",
                CLAIM,
            )
            for sig in signals:
                p = await self._signal(conn, sig)
                if p is not None:
                    started.append(p)
            if signals:
                await conn.execute(
                    "update account_signals set processed_at = now() where id = any($1::bigint[])",
                    [s["id"] for s in signals],
                )
        for p in started:
            await self.start(p)
        return len(signals)

    async def _signal(self, conn: asyncpg.Connection, sig: asyncpg.Record) -> Payment | None:
        kind, account_id = sig["kind"], sig["account_id"]
        if kind not in SIGNAL_EVENTS:
            return None
        account = await repo.get_account(conn, account_id)
        if account is None:
            return None
        live = await self._live(account.shard, account_id)
        balance = live.balance if live else account.balance
        data: dict[str, Any] = {
            "day": sig["day"],
            "balance": balance,
            "spent_today": live.spent_today if live else None,
            "daily_notify_threshold": account.daily_notify_threshold,
            "daily_hard_limit": account.daily_hard_limit,
            "low_balance_threshold": account.low_balance_threshold,
        }
        event = SIGNAL_EVENTS[kind]
        key = f"{event}:{account_id}:{sig['day']}" if kind in DAILY else f"{event}:{sig['id']}"
        await outbox.raise_event(conn, event, account_id, key, data)
        if kind != "balance_low" or self.ctx.api is None:
            return None
        return await self._crossing(conn, account_id, balance, _crossed_at(sig), "crossing")

    async def _live(self, shard: int, account_id: str) -> Any:
        try:
            return await self.ctx.live.read_account(shard, account_id)
        except StateUnavailable:
            return None

    async def _crossing(
        self,
        conn: asyncpg.Connection,
        account_id: str,
        balance: int,
        crossed_at: datetime,
        reason: str,
    ) -> Payment | None:
        row = await conn.fetchrow(
            "select * from auto_recharge where account_id = $1 for update", account_id
        )
        if row is None:
            return None
        rule = AutoRecharge.from_row(row)
        now = self.ctx.now()
        in_flight = await conn.fetchval(
            "select exists (select 1 from payments where account_id = $1"
            " and purpose = 'recharge' and status = 'pending')",
            account_id,
        )
        today = await conn.fetchrow(
            "select count(*) as n, coalesce(sum(amount), 0)::bigint as total from payments"
            " where account_id = $1 and purpose = 'recharge'"
            " and status in ('pending', 'succeeded') and created_at >= $2",
            account_id,
            today_start(now),
        )
        decision = decisions.decide_recharge(
            rule.rule,
            balance=balance,
            in_flight=bool(in_flight),
            charged_today=int(today["n"]),
            amount_today=int(today["total"]),
            now=now,
            minimum=self.ctx.settings.credit_purchase_min,
        )
        if isinstance(decision, decisions.Skip):
            return None
        crossing = rule.crossings + 1
        await conn.execute(
            "update auto_recharge set crossings = $2 where account_id = $1", account_id, crossing
        )
        card = await card_to_charge(conn, account_id)
        refused = isinstance(decision, decisions.Refuse)
        p = Payment.from_row(
            await conn.fetchrow(
                "insert into payments (id, account_id, purpose, method, amount, status,"
                " crossing, reason, crossed_at, payment_method_id, card_brand, card_last4,"
                " failure_code, failure_message, lease_until, attempts, settled_at)"
                " values ($1, $2, 'recharge', 'card', $3, $4, $5, $6, $7, $8, $9, $10,"
                " $11, $12, $13, 1, case when $4 = 'refused' then now() end) returning *",
                new_id(PAYMENT),
                account_id,
                decision.amount,
                "refused" if refused else "pending",
                crossing,
                reason,
                crossed_at,
                card.id if card else None,
                card.brand if card else None,
                card.last4 if card else None,
                decision.code if isinstance(decision, decisions.Refuse) else None,
                decision.message if isinstance(decision, decisions.Refuse) else None,
                self.ctx.lease(),
            )
        )
        if isinstance(decision, decisions.Refuse):
            await outbox.raise_event(
                conn,
                "recharge.refused_by_cap",
                account_id,
                f"recharge.refused_by_cap:{p.id}",
                {
                    "payment_id": p.id,
                    "amount": p.amount,
                    "balance": balance,
                    "cap": decision.code,
                    "message": decision.message,
                },
            )
            self.ctx.metrics.payments.labels("recharge", "refused").inc()
            return None
        return p

    async def start(self, p: Payment) -> Payment:
        """Charge a recharge just written (we hold its lease)."""
        await publish_recharge_state(self.ctx, p.account_id)
        if p.payment_method_id is None:
            return await settle(
                self.ctx,
                p.id,
                Report("failed", None, "no_payment_method", "The account has no card on file."),
            )
        customer = await self.payments.customer(p.account_id)
        settled, _ = await send(self.ctx, p, customer)
        return settled

    async def level_check(self, account_id: str | None = None) -> int:
        """Signal a crossing for accounts still below the threshold with nothing under way."""
        now = self.ctx.now()
        args: list[Any] = [now, today_start(now)]
        only = ""
        if account_id is not None:
            only = " and r.account_id = $3"
            args.append(account_id)
        rows = await self.ctx.pool.fetch(
            "select r.account_id, r.threshold, r.crossings, a.shard from auto_recharge r"
            " join accounts a on a.id = r.account_id"
            " where r.enabled and r.paused_at is null and a.status = 'active'"
            " and (r.retry_at is null or r.retry_at <= $1)"
            " and not exists (select 1 from payments p where p.account_id = r.account_id"
            "   and p.purpose = 'recharge' and (p.status = 'pending' or (p.status = 'refused'"
            "   and p.created_at >= greatest($2, r.updated_at))))" + only,
            *args,
        )
        signalled = 0
        for r in rows:
            live = await self._live(r["shard"], r["account_id"])
            if live is None or live.balance >= r["threshold"]:
                continue
            day = int(self.ctx.clock() // 86400)
            added = await self.ctx.pool.fetchval(
                "insert into account_signals (account_id, kind, day, shard, stream_id)"
                " values ($1, 'balance_low', $2, $3, $4) on conflict do nothing returning id",
                r["account_id"],
                day,
                r["shard"],
                f"level:{r['account_id']}:{r['crossings']}",
            )
            signalled += added is not None
        return signalled


def _crossed_at(sig: asyncpg.Record) -> datetime:
    """When the call that crossed was admitted (its stream id's time), else the signal's."""
    try:
        return datetime.fromtimestamp(StreamId.parse(sig["stream_id"]).ms / 1000, UTC)
    except (ValueError, AttributeError):
        return sig["created_at"]  # type: ignore[no-any-return]
