"""Customers, cards, purchases and the one settlement every outcome goes through.

How a charge is made exactly once:
1. A ``payments`` row is committed ``pending`` (a purchase keyed by the client's
   idempotency key; a recharge by its crossing), holding a lease.
2. Stripe is called with our payment id as its idempotency key and in the
   PaymentIntent's metadata.
3. ``settle`` records what Stripe said, under the payment's row lock. Success inserts
   the one ledger entry (idempotency key = payment id, unique per account) in the
   same transaction; a second settle (webhook, sweep, retry) finds the payment
   settled and changes nothing. Then the credit is applied to Redis (the admin
   sync loop repairs it if that step is lost).
If the process dies between 1 and 3, the sweep (``sweep``) takes the payment when its
lease runs out and asks Stripe, by id or by metadata, what happened; only a payment
Stripe never saw is sent again (recharges) or failed (purchases, whose buyer is gone).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from admin import audit, ids, sync
from admin import repository as repo
from admin.audit import Actor
from admin.errors import AdminError, Conflict, InvalidInput, NotFound, ServiceUnavailable
from admin.ids import new_id
from admin.records import CLOSED, Account, LedgerEntry
from ledger.crash import CrashHook
from meter.live_state import LiveState, StateUnavailable
from meter.settings import Settings
from payments import decisions, outbox
from payments.metrics import PaymentMetrics
from payments.records import Payment, PaymentMethod
from payments.stripe_api import (
    Card,
    Checkout,
    Declined,
    Intent,
    Rejected,
    StripeApi,
    StripeFailure,
    Unavailable,
)

log = logging.getLogger("meter.payments")

PAYMENT = ids.PAYMENT
REFUND = ids.REFUND
ENTRY_KIND = {"purchase": "purchase", "recharge": "recharge", "invoice": "invoice_payment"}
# Redis's advisory recharge state (explains a 402): in flight, declined, paused.
RECHARGE_IN_FLIGHT, RECHARGE_DECLINED, RECHARGE_PAUSED = "i", "d", "p"


class PaymentsNotConfigured(ServiceUnavailable):
    slug = "payments-not-configured"
    title = "Payments are not configured on this deployment (no Stripe key)"


class StripeUnavailable(ServiceUnavailable):
    slug = "payments-provider-unavailable"
    title = "The payment provider could not be reached; nothing was charged or it will settle"


class PaymentRefused(AdminError):
    status = 402
    slug = "payment-failed"
    title = "The payment failed"


class NoPaymentMethod(Conflict):
    slug = "no-payment-method"
    title = "The account has no payment method; add a card first"


class PaymentMethodInUse(Conflict):
    slug = "payment-method-in-use"
    title = "This payment method cannot be removed now"


@dataclass
class Context:
    """What every payments module works with (one per process)."""

    pool: asyncpg.Pool
    live: LiveState
    settings: Settings
    api: StripeApi | None
    metrics: PaymentMetrics = field(default_factory=PaymentMetrics)
    crash: CrashHook = field(default_factory=CrashHook)
    clock: Callable[[], float] = time.time

    @property
    def stripe(self) -> StripeApi:
        if self.api is None:
            raise PaymentsNotConfigured(
                "set METER_STRIPE_SECRET_KEY (and METER_STRIPE_API_BASE for a test double)"
            )
        return self.api

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def lease(self) -> datetime:
        return self.now() + timedelta(seconds=self.settings.payment_lease)


def open_context(
    pool: asyncpg.Pool,
    live: LiveState,
    settings: Settings,
    *,
    metrics: PaymentMetrics | None = None,
    clock: Callable[[], float] = time.time,
) -> Context:
    api = StripeApi(settings) if settings.stripe_secret_key else None
    return Context(
        pool,
        live,
        settings,
        api,
        metrics or PaymentMetrics(),
        CrashHook.from_settings(settings),
        clock,
    )


def _stripe_failure(exc: StripeFailure) -> AdminError:
    if isinstance(exc, Unavailable):
        return StripeUnavailable(str(exc))
    if isinstance(exc, Declined):
        return PaymentRefused(str(exc), code=exc.code)
    return InvalidInput([("stripe", str(exc))])


async def get_payment(conn: repo.Conn, payment_id: str, *, for_update: bool = False) -> Payment:
    lock = " for update" if for_update else ""
    row = await conn.fetchrow(f"select * from payments where id = $1{lock}", payment_id)
    if row is None:
        raise NotFound(f"no payment {payment_id!r}")
    return Payment.from_row(row)


def describe(payment: Payment, reference: str | None) -> str:
    """The balance history's line: what paid, and Stripe's reference to find it there."""
    card = f" ({payment.card_brand} {payment.card_last4})" if payment.card_last4 else ""
    ref = reference or payment.id
    if payment.purpose == "recharge":
        return f"Auto recharge {ref}{card}"
    if payment.purpose == "invoice":
        return f"Invoice payment {ref}{card}"
    if payment.method == "crypto":
        return f"Crypto payment {ref}"
    return f"Card payment {ref}{card}"


# -- settlement -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """What Stripe said about a payment, in our words."""

    status: str  # succeeded, failed, requires_action, canceled, pending
    intent_id: str | None = None
    code: str | None = None
    message: str | None = None

    @classmethod
    def of_intent(cls, intent: Intent) -> Report:
        status = decisions.INTENT_OUTCOME.get(intent.status) or "pending"
        code, message = intent.error_code, intent.error_message
        if status == "failed" and code is None:
            code, message = "payment_failed", "The payment failed at the card issuer."
        return cls(status, intent.id, code, message)

    @classmethod
    def of_decline(cls, exc: Declined) -> Report:
        return cls("failed", exc.intent.id if exc.intent else None, exc.code, str(exc))


@dataclass(frozen=True, slots=True)
class Settled:
    payment: Payment
    entry: LedgerEntry | None  # the credit this settle made (None: none, or made before)


async def settle(ctx: Context, payment_id: str, report: Report) -> Payment:
    """Record Stripe's word on a payment, once; credit it if it succeeded."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        outcome = await settle_in(ctx, conn, payment_id, report)
    await after_settle(ctx, outcome)
    return outcome.payment


async def settle_in(
    ctx: Context, conn: asyncpg.Connection, payment_id: str, report: Report
) -> Settled:
    """``settle`` in the caller's transaction (a webhook event's, with its dedupe row)."""
    p = await get_payment(conn, payment_id, for_update=True)
    if report.intent_id and p.stripe_payment_intent is None:
        await conn.execute(
            "update payments set stripe_payment_intent = $2, updated_at = now() where id = $1",
            p.id,
            report.intent_id,
        )
    reported = report.status
    if p.off_session and reported == "requires_action":
        reported = "failed"  # off-session: nobody is there to authenticate
    new = decisions.next_status(p.status, reported) if reported != "pending" else None
    if new is None:
        return Settled(await get_payment(conn, p.id), None)
    reference = report.intent_id or p.stripe_payment_intent or p.stripe_checkout_session
    if new == "succeeded":
        if p.status in decisions.TERMINAL:
            log.warning(
                "payment succeeded at Stripe after we recorded it %s; crediting it",
                p.status,
                extra={"payment": p.id},
            )
        entry = await _credit(conn, p, describe(p, reference))
        await conn.execute(
            "update payments set status = 'succeeded', ledger_entry_id = $2, settled_at = now(),"
            " failure_code = null, failure_message = null, updated_at = now() where id = $1",
            p.id,
            entry.id if entry else None,
        )
        data = {"payment_id": p.id, "amount": p.amount, "stripe_reference": reference}
        if p.purpose == "invoice":
            from billing import charges  # billing pays through here: imported when used

            await charges.paid(ctx, conn, p)
            return Settled(await get_payment(conn, p.id), entry)
        await outbox.raise_event(
            conn, f"{p.purpose}.succeeded", p.account_id, f"{p.purpose}.succeeded:{p.id}", data
        )
        await outbox.raise_event(conn, "credits.added", p.account_id, f"credits.added:{p.id}", data)
        if p.purpose == "recharge":
            await conn.execute(
                "update auto_recharge set consecutive_failures = 0, retry_at = null,"
                " paused_at = null, pause_reason = null where account_id = $1",
                p.account_id,
            )
        else:
            # "until someone changes the settings or a payment succeeds"
            await conn.execute(
                "update auto_recharge set consecutive_failures = 0, retry_at = null,"
                " paused_at = null, pause_reason = null"
                " where account_id = $1 and paused_at is not null",
                p.account_id,
            )
        return Settled(await get_payment(conn, p.id), entry)
    await conn.execute(
        "update payments set status = $2, failure_code = $3, failure_message = $4,"
        " settled_at = case when $2 in ('failed', 'canceled') then now() end,"
        " updated_at = now() where id = $1",
        p.id,
        new,
        report.code if new == "failed" else None,
        report.message if new == "failed" else None,
    )
    if new == "failed":
        await _failed(ctx, conn, p, report)
    return Settled(await get_payment(conn, p.id), None)


async def _credit(conn: asyncpg.Connection, p: Payment, description: str) -> LedgerEntry | None:
    account = await repo.get_account(conn, p.account_id, for_update=True)
    assert account is not None  # a foreign key
    entry = await repo.entry_by_idempotency_key(conn, account.id, p.id)
    if entry is not None:
        return None  # credited before (defence in depth: the unique key would refuse it)
    amount = p.amount
    if p.purpose == "invoice":  # the overage it pays goes back to the balance, not the fee
        from billing.invoices import credited_share

        inv = await conn.fetchrow(
            "select amount_due, fee_amount, amount_paid from invoices where id = $1 for update",
            p.invoice_id,
        )
        amount = credited_share(inv["amount_due"], inv["fee_amount"], inv["amount_paid"], amount)
        if amount == 0:
            return None
    return await repo.insert_credit(
        conn,
        account,
        amount=amount,
        kind=ENTRY_KIND[p.purpose],
        description=description,
        idempotency_key=p.id,
    )


async def _failed(ctx: Context, conn: asyncpg.Connection, p: Payment, report: Report) -> None:
    data = {
        "payment_id": p.id,
        "amount": p.amount,
        "code": report.code,
        "message": report.message,
    }
    if p.purpose == "purchase":
        await outbox.raise_event(
            conn, "purchase.failed", p.account_id, f"purchase.failed:{p.id}", data
        )
        return
    if p.purpose == "invoice":
        from billing import charges  # billing pays through here: imported when used

        await charges.failed(ctx, conn, p, report.code, report.message)
        return
    kind = (
        "recharge.requires_action"
        if report.code == "authentication_required"
        else ("recharge.failed")
    )
    await outbox.raise_event(conn, kind, p.account_id, f"{kind}:{p.id}", data)
    row = await conn.fetchrow(
        "select consecutive_failures from auto_recharge where account_id = $1 for update",
        p.account_id,
    )
    if row is None:
        return
    after = decisions.after_failure(
        row["consecutive_failures"],
        ctx.now(),
        base=ctx.settings.recharge_backoff,
        limit=ctx.settings.recharge_max_failures,
    )
    reason = (
        f"{after.consecutive_failures} recharges failed in a row; last: "
        f"{report.message or report.code}"
    )
    await conn.execute(
        "update auto_recharge set consecutive_failures = $2, retry_at = $3,"
        " paused_at = case when $4 then now() else paused_at end,"
        " pause_reason = case when $4 then $5 else pause_reason end where account_id = $1",
        p.account_id,
        after.consecutive_failures,
        after.retry_at,
        after.pause,
        reason,
    )
    if after.pause:
        await outbox.raise_event(
            conn,
            "recharge.paused",
            p.account_id,
            f"recharge.paused:{p.id}",
            {**data, "consecutive_failures": after.consecutive_failures, "reason": reason},
        )


async def after_settle(ctx: Context, outcome: Settled) -> None:
    """After the commit: the credit into Redis, the advisory state, the metrics."""
    p = outcome.payment
    if outcome.entry is not None:
        await sync.then_redis(
            f"credit of {p.id}", sync.apply_credit(ctx.pool, ctx.live, outcome.entry)
        )
        if p.purpose == "recharge" and p.crossed_at is not None:
            ctx.metrics.crossing_to_credit.observe(max(0.0, ctx.clock() - p.crossed_at.timestamp()))
    if p.status in decisions.TERMINAL and (outcome.entry is not None or p.status != "succeeded"):
        ctx.metrics.payments.labels(p.purpose, p.status).inc()
    if p.purpose == "recharge":
        await publish_recharge_state(ctx, p.account_id)


async def publish_recharge_state(ctx: Context, account_id: str) -> None:
    """Tell the gateway (advisory: it only explains a 402) what auto-recharge is doing."""
    row = await ctx.pool.fetchrow(
        "select a.shard, r.enabled, r.paused_at,"
        " exists (select 1 from payments p where p.account_id = a.id"
        "   and p.purpose = 'recharge' and p.status = 'pending') as in_flight,"
        " (select p.status from payments p where p.account_id = a.id and p.purpose = 'recharge'"
        "   and p.status <> 'refused' order by p.created_at desc limit 1) as last"
        " from accounts a left join auto_recharge r on r.account_id = a.id where a.id = $1",
        account_id,
    )
    if row is None:
        return
    state: str | None = None
    if row["enabled"]:
        if row["paused_at"] is not None:
            state = RECHARGE_PAUSED
        elif row["in_flight"]:
            state = RECHARGE_IN_FLIGHT
        elif row["last"] == "failed":
            state = RECHARGE_DECLINED
    try:
        await ctx.live.set_recharge_state(row["shard"], account_id, state)
    except StateUnavailable as exc:
        log.info("recharge state not published: %s", exc)


# -- sending a charge -------------------------------------------------------------------


DESCRIPTIONS = {"purchase": "Usage credits", "recharge": "Auto recharge", "invoice": "Invoice"}


async def send(ctx: Context, p: Payment, customer_id: str) -> tuple[Payment, Intent | None]:
    """Call Stripe for a pending card payment we hold the lease of, and settle it."""
    assert p.payment_method_id is not None
    ctx.crash("payment_before_stripe")
    try:
        intent = await ctx.stripe.create_intent(
            amount_cents=decisions.cents(p.amount),
            customer_id=customer_id,
            payment_method=p.payment_method_id,
            metadata={"payment_id": p.id, "account_id": p.account_id, "purpose": p.purpose},
            off_session=p.off_session,
            idempotency_key=p.id,
            description=DESCRIPTIONS[p.purpose],
        )
    except Declined as exc:
        ctx.crash("payment_after_stripe")
        return await settle(ctx, p.id, Report.of_decline(exc)), exc.intent
    except Rejected as exc:
        ctx.crash("payment_after_stripe")
        report = Report("failed", None, exc.code or "rejected", str(exc))
        return await settle(ctx, p.id, report), None
    except Unavailable as exc:
        log.warning("stripe unavailable; the sweep settles %s: %s", p.id, exc)
        return p, None
    ctx.crash("payment_after_stripe")
    return await settle(ctx, p.id, Report.of_intent(intent)), intent


# -- the service the API and the portal call --------------------------------------------


@dataclass(frozen=True, slots=True)
class PurchaseResult:
    payment: Payment
    replayed: bool
    client_secret: str | None = None  # for the browser when 3-D Secure is needed
    checkout_url: str | None = None


class Payments:
    """Customers, cards, purchases and reads; recharges are in ``payments.recharges``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @property
    def configured(self) -> bool:
        return self.ctx.api is not None

    async def close(self) -> None:
        if self.ctx.api is not None:
            await self.ctx.api.close()

    @property
    def publishable_key(self) -> str:
        return self.ctx.settings.stripe_publishable_key

    async def _account(self, conn: repo.Conn, account_id: str, *, lock: bool = False) -> Account:
        account = await repo.get_account(conn, account_id, for_update=lock)
        if account is None:
            raise NotFound(f"no account {account_id!r}")
        return account

    # -- customers ----------------------------------------------------------------------

    async def customer(self, account_id: str) -> str:
        """The account's Stripe customer, created at most once.

        The row is written first and locked while Stripe is asked, so two requests
        never both create; a crash after Stripe created one leaves the row empty and
        the next call finds that customer by its metadata before creating another.
        """
        existing = await self.ctx.pool.fetchval(
            "select stripe_customer_id from payment_customers where account_id = $1", account_id
        )
        if existing:
            return str(existing)
        api = self.ctx.stripe
        async with self.ctx.pool.acquire() as conn:
            account = await self._account(conn, account_id)
            await conn.execute(
                "insert into payment_customers (account_id) values ($1)"
                " on conflict (account_id) do nothing",
                account.id,
            )
            async with conn.transaction():
                cid = await conn.fetchval(
                    "select stripe_customer_id from payment_customers where account_id = $1"
                    " for update",
                    account.id,
                )
                if cid:
                    return str(cid)
                try:
                    found = await api.find_customer(account.id)
                    details = await self._customer_details(conn, account)
                    cid = found or await api.create_customer(
                        account.id, details, idempotency_key=f"customer-{account.id}"
                    )
                except StripeFailure as exc:
                    raise _stripe_failure(exc) from exc
                await conn.execute(
                    "update payment_customers set stripe_customer_id = $2 where account_id = $1",
                    account.id,
                    cid,
                )
        await self.push_profile(account.id)
        return str(cid)

    async def _customer_details(self, conn: repo.Conn, account: Account) -> dict[str, Any]:
        profile = await conn.fetchrow(
            "select * from billing_profiles where account_id = $1", account.id
        )
        details: dict[str, Any] = {"name": account.name}
        if account.billing_email:  # the profile's invoice email is the account's
            details["email"] = account.billing_email
        if profile is not None:
            if profile["legal_name"]:
                details["name"] = profile["legal_name"]
            address = {
                "line1": profile["address_line1"],
                "line2": profile["address_line2"],
                "city": profile["city"],
                "postal_code": profile["postal_code"],
                "state": profile["state"],
                "country": profile["country"],
            }
            address = {k: v for k, v in address.items() if v}
            if address:
                details["address"] = address
        return details

    async def push_profile(self, account_id: str) -> None:
        """Pass the billing profile and the verified tax ids to the Stripe customer.

        Best effort: the profile is ours and Stripe's copy is for its receipts; a
        failure is logged and tried again on the next change.
        """
        if self.ctx.api is None:
            return
        cid = await self.ctx.pool.fetchval(
            "select stripe_customer_id from payment_customers where account_id = $1", account_id
        )
        if not cid:
            return
        async with self.ctx.pool.acquire() as conn:
            account = await self._account(conn, account_id)
            details = await self._customer_details(conn, account)
            verified = await conn.fetch(
                "select type, value from tax_ids where account_id = $1 and status = 'verified'"
                " and deleted_at is null",
                account_id,
            )
        try:
            await self.ctx.stripe.update_customer(cid, details)
            have = await self.ctx.stripe.tax_ids(cid)
            for row in verified:
                pair = (row["type"], row["value"])
                if pair not in have:
                    await self.ctx.stripe.add_tax_id(cid, *pair)
        except StripeFailure as exc:
            log.warning("billing profile not passed to Stripe: %s", exc)
            return
        await self.ctx.pool.execute(
            "update payment_customers set profile_synced_at = now() where account_id = $1",
            account_id,
        )

    # -- payment methods ----------------------------------------------------------------

    async def start_setup(self, actor: Actor, account_id: str) -> tuple[str, str]:
        """A SetupIntent for a new card: (its id, the client secret for Stripe.js)."""
        async with self.ctx.pool.acquire() as conn:
            _open(await self._account(conn, account_id))
        cid = await self.customer(account_id)
        try:
            setup = await self.ctx.stripe.create_setup_intent(cid, account_id)
        except StripeFailure as exc:
            raise _stripe_failure(exc) from exc
        assert setup.client_secret is not None
        async with self.ctx.pool.acquire() as conn:
            await audit.record(
                conn,
                actor,
                "payment_method.setup",
                "setup_intent",
                setup.id,
                account_id=account_id,
            )
        return setup.id, setup.client_secret

    async def finish_setup(self, actor: Actor, account_id: str, setup_id: str) -> PaymentMethod:
        """Record the card a confirmed SetupIntent attached (called by the browser's page)."""
        cid = await self.customer(account_id)
        # The account exists (the path); a setup intent that is not its own is bad input.
        unknown = InvalidInput(
            [("setup_intent_id", f"{setup_id} is not a SetupIntent of this account")]
        )
        try:
            setup = await self.ctx.stripe.retrieve_setup_intent(setup_id)
        except Rejected as exc:
            raise unknown from exc
        except StripeFailure as exc:
            raise _stripe_failure(exc) from exc
        if setup.customer != cid:
            raise unknown
        if setup.status != "succeeded" or setup.payment_method is None:
            raise Conflict(f"setup intent {setup_id} is {setup.status}, not succeeded")
        methods = await self.refresh_methods(account_id)
        for method in methods:
            if method.id == setup.payment_method:
                async with self.ctx.pool.acquire() as conn:
                    await audit.record(
                        conn,
                        actor,
                        "payment_method.add",
                        "payment_method",
                        method.id,
                        account_id=account_id,
                        after=method,
                    )
                return method
        raise Conflict(f"setup intent {setup_id}'s card is no longer attached")

    async def refresh_methods(self, account_id: str) -> list[PaymentMethod]:
        """Read the cards from Stripe (the source of truth) into our copy; the list.

        An account without a Stripe customer has no cards, and reading makes none.
        """
        cid = await self.ctx.pool.fetchval(
            "select stripe_customer_id from payment_customers where account_id = $1", account_id
        )
        if not cid:
            async with self.ctx.pool.acquire() as conn:
                await self._account(conn, account_id)
            return await self.methods(account_id)
        try:
            cards = await self.ctx.stripe.cards(cid)
            default = await self.ctx.stripe.default_payment_method(cid)
            if default is None and cards:
                # The first card becomes the default, as the portal shows it.
                default = cards[0].id
                await self.ctx.stripe.set_default_payment_method(cid, default)
        except StripeFailure as exc:
            raise _stripe_failure(exc) from exc
        await self._store_methods(account_id, cards, default)
        return await self.methods(account_id)

    async def _store_methods(self, account_id: str, cards: list[Card], default: str | None) -> None:
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            account = await self._account(conn, account_id, lock=True)
            ids = [c.id for c in cards]
            await conn.execute(
                "update payment_methods set detached_at = now(), is_default = false"
                " where account_id = $1 and detached_at is null and not (id = any($2::text[]))",
                account_id,
                ids,
            )
            await conn.execute(
                "update payment_methods set is_default = false"
                " where account_id = $1 and is_default and id is distinct from $2",
                account_id,
                default,
            )
            for c in cards:
                await conn.execute(
                    "insert into payment_methods"
                    " (id, account_id, brand, last4, exp_month, exp_year, name, is_default)"
                    " values ($1, $2, $3, $4, $5, $6, $7, $8)"
                    " on conflict (id) do update set brand = excluded.brand,"
                    " last4 = excluded.last4, exp_month = excluded.exp_month,"
                    " exp_year = excluded.exp_year, name = excluded.name,"
                    " is_default = excluded.is_default, detached_at = null"
                    " where payment_methods.account_id = excluded.account_id",
                    c.id,
                    account_id,
                    c.brand,
                    c.last4,
                    c.exp_month,
                    c.exp_year,
                    c.name,
                    c.id == default,
                )
            changed = await self._set_has_method(conn, account, bool(cards))
        await self._sync_later(changed)

    @staticmethod
    async def _set_has_method(conn: repo.Conn, account: Account, has: bool) -> Account | None:
        """The account to sync to Redis after the commit, when its gate changed."""
        if account.has_payment_method == has:
            return None
        return await repo.update_account(
            conn, account.id, "has_payment_method = $2", has, config=True
        )

    async def _sync_later(self, account: Account | None) -> None:
        if account is None:
            return
        await sync.then_redis(
            f"card gate of {account.id}", sync.apply_account(self.ctx.pool, self.ctx.live, account)
        )

    async def methods(self, account_id: str) -> list[PaymentMethod]:
        rows = await self.ctx.pool.fetch(
            "select * from payment_methods where account_id = $1 and detached_at is null"
            " order by is_default desc, created_at, id",
            account_id,
        )
        return [PaymentMethod.from_row(r) for r in rows]

    async def method(self, account_id: str, pm_id: str) -> PaymentMethod:
        """One card of this account; another account's (or a detached one) is 404."""
        row = await self.ctx.pool.fetchrow(
            "select * from payment_methods where id = $1 and account_id = $2"
            " and detached_at is null",
            pm_id,
            account_id,
        )
        if row is None:
            raise NotFound(f"no payment method {pm_id!r}")
        return PaymentMethod.from_row(row)

    async def set_default(self, actor: Actor, account_id: str, pm_id: str) -> PaymentMethod:
        before = await self.method(account_id, pm_id)
        cid = await self.customer(account_id)
        try:
            await self.ctx.stripe.set_default_payment_method(cid, before.id)
        except StripeFailure as exc:
            raise _stripe_failure(exc) from exc
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            await self._account(conn, account_id, lock=True)
            await conn.execute(
                "update payment_methods set is_default = (id = $2)"
                " where account_id = $1 and detached_at is null",
                account_id,
                pm_id,
            )
            await audit.record(
                conn,
                actor,
                "payment_method.set_default",
                "payment_method",
                pm_id,
                account_id=account_id,
                before=before,
            )
        return await self.method(account_id, pm_id)

    async def delete_method(self, actor: Actor, account_id: str, pm_id: str) -> None:
        method = await self.method(account_id, pm_id)
        if method.is_default:
            enabled = await self.ctx.pool.fetchval(
                "select enabled from auto_recharge where account_id = $1", account_id
            )
            others = len(await self.methods(account_id)) - 1
            if enabled:
                raise PaymentMethodInUse(
                    "this card is the default, which auto-recharge charges: make another card"
                    " the default or turn auto-recharge off first",
                    reason="default-used-by-auto-recharge",
                )
            if others > 0:
                raise PaymentMethodInUse(
                    "this card is the default: make another card the default first",
                    reason="default-with-others",
                )
        try:
            await self.ctx.stripe.detach(pm_id)
        except Rejected as exc:
            log.info("detach of %s refused by Stripe (%s); dropping our copy", pm_id, exc)
        except StripeFailure as exc:
            raise _stripe_failure(exc) from exc
        await self.forget_method(account_id, pm_id, actor=actor)

    async def forget_method(self, account_id: str, pm_id: str, *, actor: Actor | None) -> bool:
        """Mark a card detached (our delete, or Stripe's ``payment_method.detached``)."""
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            account = await self._account(conn, account_id, lock=True)
            gone = await conn.fetchrow(
                "update payment_methods set detached_at = now(), is_default = false"
                " where id = $1 and account_id = $2 and detached_at is null returning *",
                pm_id,
                account_id,
            )
            if gone is None:
                return False
            if actor is not None:
                await audit.record(
                    conn,
                    actor,
                    "payment_method.delete",
                    "payment_method",
                    pm_id,
                    account_id=account_id,
                    before=PaymentMethod.from_row(gone),
                )
            left = await conn.fetchval(
                "select count(*) from payment_methods where account_id = $1"
                " and detached_at is null",
                account_id,
            )
            changed = await self._set_has_method(conn, account, left > 0)
        await self._sync_later(changed)
        return True

    # -- purchases ----------------------------------------------------------------------

    async def purchase(
        self,
        actor: Actor,
        account_id: str,
        *,
        amount: int,
        idempotency_key: str,
        payment_method_id: str | None = None,
        method: str = "card",
        success_url: str | None = None,
        cancel_url: str | None = None,
    ) -> PurchaseResult:
        """Buy credits once per (account, idempotency key); a replay answers the first."""
        self.ctx.stripe  # noqa: B018 - 503 before anything else when not configured
        problem = decisions.purchase_amount_error(
            amount, self.ctx.settings.credit_purchase_min, self.ctx.settings.credit_purchase_max
        )
        if problem:
            raise InvalidInput([("amount", problem)])
        replay = await self._replay(account_id, idempotency_key, amount, payment_method_id, method)
        if replay is not None:
            return replay
        cid = await self.customer(account_id)
        card: PaymentMethod | None = None
        if method == "card":
            card = await self._card_for(account_id, payment_method_id)
        # No account lock here: the unique (account, idempotency key) decides a race,
        # and settling takes payment then account; taking them the other way deadlocks.
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            account = await self._account(conn, account_id)
            _open(account)
            row = await conn.fetchrow(
                "insert into payments (id, account_id, purpose, method, amount, status,"
                " idempotency_key, payment_method_id, card_brand, card_last4, lease_until,"
                " attempts) values ($1, $2, 'purchase', $3, $4, 'pending', $5, $6, $7, $8, $9, 1)"
                " on conflict (account_id, idempotency_key) do nothing returning *",
                new_id(PAYMENT),
                account.id,
                method,
                amount,
                idempotency_key,
                card.id if card else None,
                card.brand if card else None,
                card.last4 if card else None,
                self.ctx.lease(),
            )
            if row is None:  # a concurrent request with the same key won
                pass
            else:
                p = Payment.from_row(row)
                await audit.record(
                    conn, actor, "purchase.create", "payment", p.id, account_id=account.id, after=p
                )
        if row is None:
            replay = await self._replay(
                account_id, idempotency_key, amount, payment_method_id, method
            )
            assert replay is not None
            return replay
        if method == "crypto":
            return await self._checkout(p, cid, success_url, cancel_url)
        settled, intent = await send(self.ctx, p, cid)
        return PurchaseResult(settled, False, _secret_for(settled, intent))

    async def _replay(
        self,
        account_id: str,
        key: str,
        amount: int,
        pm_id: str | None,
        method: str,
    ) -> PurchaseResult | None:
        async with self.ctx.pool.acquire() as conn:
            await self._account(conn, account_id)
            row = await conn.fetchrow(
                "select * from payments where account_id = $1 and idempotency_key = $2",
                account_id,
                key,
            )
        if row is None:
            return None
        p = Payment.from_row(row)
        if (p.amount, p.method) != (amount, method) or (
            pm_id is not None and pm_id != p.payment_method_id
        ):
            raise Conflict(
                f"idempotency key {key!r} was used for {p.id} with a different amount or"
                " payment method",
                payment_id=p.id,
            )
        secret = await self._client_secret(p) if p.status == "requires_action" else None
        return PurchaseResult(p, True, secret)

    async def _card_for(self, account_id: str, pm_id: str | None) -> PaymentMethod:
        if pm_id is not None:
            try:
                return await self.method(account_id, pm_id)
            except NotFound:
                # Perhaps added a moment ago and not yet copied: ask Stripe once.
                await self.refresh_methods(account_id)
                try:
                    return await self.method(account_id, pm_id)
                except NotFound:
                    raise InvalidInput(
                        [("payment_method_id", f"{pm_id} is not a card of this account")]
                    ) from None
        card = await card_to_charge(self.ctx.pool, account_id)
        if card is None and await self.refresh_methods(account_id):
            card = await card_to_charge(self.ctx.pool, account_id)
        if card is None:
            raise NoPaymentMethod("add a card first, or pay with crypto")
        return card

    async def _client_secret(self, p: Payment) -> str | None:
        if p.stripe_payment_intent is None or self.ctx.api is None:
            return None
        try:
            return (await self.ctx.api.retrieve_intent(p.stripe_payment_intent)).client_secret
        except StripeFailure:
            return None

    async def _checkout(
        self, p: Payment, cid: str, success_url: str | None, cancel_url: str | None
    ) -> PurchaseResult:
        base = self.ctx.settings.portal_public_url.rstrip("/")
        try:
            session = await self.ctx.stripe.create_checkout(
                amount_cents=decisions.cents(p.amount),
                customer_id=cid,
                metadata={"payment_id": p.id, "account_id": p.account_id, "purpose": p.purpose},
                success_url=success_url or f"{base}/credits?paid={p.id}",
                cancel_url=cancel_url or f"{base}/credits?canceled={p.id}",
                idempotency_key=p.id,
            )
        except Unavailable:
            return PurchaseResult(p, False)
        except StripeFailure as exc:
            return PurchaseResult(
                await settle(self.ctx, p.id, Report("failed", None, "rejected", str(exc))), False
            )
        await self.ctx.pool.execute(
            "update payments set stripe_checkout_session = $2, updated_at = now() where id = $1",
            p.id,
            session.id,
        )
        async with self.ctx.pool.acquire() as conn:
            p = await get_payment(conn, p.id)
        return PurchaseResult(p, False, checkout_url=session.url)

    async def refresh(self, account_id: str, payment_id: str) -> PurchaseResult:
        """Ask Stripe about an unsettled payment now (the page after 3-D Secure)."""
        p = await self.payment(account_id, payment_id)
        if p.status not in ("pending", "requires_action") or self.ctx.api is None:
            return PurchaseResult(p, True)
        try:
            p = await settle_from_stripe(self.ctx, p)
        except StripeFailure as exc:  # a Problem (503, ...), not a bare exception
            raise _stripe_failure(exc) from exc
        secret = await self._client_secret(p) if p.status == "requires_action" else None
        return PurchaseResult(p, True, secret)

    # -- reading ------------------------------------------------------------------------

    async def payment(self, account_id: str | None, payment_id: str) -> Payment:
        async with self.ctx.pool.acquire() as conn:
            p = await get_payment(conn, payment_id)
        if account_id is not None and p.account_id != account_id:
            raise NotFound(f"no payment {payment_id!r}")
        return p

    async def payments(
        self, account_id: str, *, limit: int, before: str | None = None
    ) -> tuple[list[Payment], str | None]:
        async with self.ctx.pool.acquire() as conn:
            await self._account(conn, account_id)
            args: list[Any] = [account_id, limit + 1]
            where = ""
            if before:
                where = (
                    " and (created_at, id) < (select created_at, id from payments where id = $3)"
                )
                args.append(before)
            rows = await conn.fetch(
                f"select * from payments where account_id = $1{where}"
                " order by created_at desc, id desc limit $2",
                *args,
            )
        items = [Payment.from_row(r) for r in rows[:limit]]
        return items, (items[-1].id if len(rows) > limit else None)


async def card_to_charge(conn: repo.Conn, account_id: str) -> PaymentMethod | None:
    """The card a charge names none uses: the default, else the oldest (as listed)."""
    row = await conn.fetchrow(
        "select * from payment_methods where account_id = $1 and detached_at is null"
        " order by is_default desc, created_at, id limit 1",
        account_id,
    )
    return None if row is None else PaymentMethod.from_row(row)


def _open(account: Account) -> None:
    if account.status == CLOSED:
        raise Conflict(f"account {account.id} is closed")


def _secret_for(p: Payment, intent: Intent | None) -> str | None:
    if p.status == "requires_action" and intent is not None:
        return intent.client_secret
    return None


async def settle_from_stripe(ctx: Context, p: Payment) -> Payment:
    """Stripe's current word on an unsettled payment, settled (the sweep, a refresh)."""
    if p.method == "crypto":
        return await _settle_checkout(ctx, p)
    if p.stripe_payment_intent is not None:
        intent: Intent | None = await ctx.stripe.retrieve_intent(p.stripe_payment_intent)
    else:
        intent = await ctx.stripe.find_intent(p.id)
    if intent is None:
        return p
    return await settle(ctx, p.id, Report.of_intent(intent))


async def _settle_checkout(ctx: Context, p: Payment) -> Payment:
    if p.stripe_checkout_session is None:
        return p
    session: Checkout = await ctx.stripe.retrieve_checkout(p.stripe_checkout_session)
    if session.status == "complete" and session.payment_status == "paid":
        return await settle(ctx, p.id, Report("succeeded", session.payment_intent))
    if session.status == "expired":
        return await settle(ctx, p.id, Report("canceled"))
    return p


async def account_of_customer(ctx: Context, customer_id: str | None) -> str | None:
    if customer_id is None:
        return None
    value = await ctx.pool.fetchval(
        "select account_id from payment_customers where stripe_customer_id = $1", customer_id
    )
    return None if value is None else str(value)


def today_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


__all__ = [
    "Context",
    "Payments",
    "PurchaseResult",
    "Report",
    "after_settle",
    "get_payment",
    "open_context",
    "send",
    "settle",
    "settle_from_stripe",
    "settle_in",
]
