"""Paying: cards, credit purchases, auto-recharge, the payments list, refunds.

A purchase is made once per (account, ``idempotency_key``): the first answer is
``201`` (or ``402 payment-failed`` for a declined card, with the payment's id), a
replay answers the same payment with ``Idempotent-Replayed: true`` and charges
nothing. A card that needs 3-D Secure answers ``status: requires_action`` with
``next_action.client_secret`` for Stripe.js; the credit lands once whoever learns of
the success first (this API, Stripe's webhook, or the ledger worker's sweep).
Without a Stripe key every route here answers ``503 payments-not-configured``.
"""

from __future__ import annotations

from typing import Any

from admin import models
from admin.access import Permission as P
from admin.declared import NO_STORE, Call, Operation, Reply
from admin.routes_credits import REPLAYED_HEADER
from ledger import history_query
from ledger.errors import BadQuery
from ledger.history_query import page_limit
from meter import entry_kinds
from payments.recharges import RechargeChanges, RechargeView
from payments.records import Payment
from payments.refunds import refund
from payments.service import PaymentRefused, PurchaseResult

A = "/v1/accounts/{account_id}"
PM = A + "/payment-methods/{payment_method_id}"
PAY = "/v1/payments/{payment_id}"


def payment_model(p: Payment, result: PurchaseResult | None = None) -> models.Payment:
    action = None
    if result is not None and result.checkout_url:
        action = models.NextAction(
            type="redirect_to_url", client_secret=None, url=result.checkout_url
        )
    elif result is not None and result.client_secret and p.status == "requires_action":
        action = models.NextAction(
            type="use_stripe_sdk", client_secret=result.client_secret, url=None
        )
    return models.Payment(
        id=p.id,
        account_id=p.account_id,
        purpose=p.purpose,  # type: ignore[arg-type]
        method=p.method,  # type: ignore[arg-type]
        amount=p.amount,
        currency=p.currency,
        status=p.status,  # type: ignore[arg-type]
        payment_method_id=p.payment_method_id,
        card_brand=p.card_brand,
        card_last4=p.card_last4,
        stripe_reference=p.stripe_reference,
        failure_code=p.failure_code,
        failure_message=p.failure_message,
        refunded=p.refunded,
        credit_entry_id=entry_kinds.entry_id(p.ledger_entry_id) if p.ledger_entry_id else None,
        idempotency_key=p.idempotency_key,
        created_at=p.created_at,
        settled_at=p.settled_at,
        next_action=action,
    )


def recharge_model(view: RechargeView) -> models.AutoRecharge:
    s = view.settings
    return models.AutoRecharge(
        enabled=bool(s and s.enabled),
        threshold=s.threshold if s else 0,
        amount=s.amount if s else None,
        target_balance=s.target_balance if s else None,
        max_per_day=s.max_per_day if s else None,
        max_amount_per_day=s.max_amount_per_day if s else None,
        state=view.state,  # type: ignore[arg-type]
        consecutive_failures=s.consecutive_failures if s else 0,
        retry_at=s.retry_at if s else None,
        paused_at=s.paused_at if s else None,
        pause_reason=s.pause_reason if s else None,
        in_flight=payment_model(view.in_flight) if view.in_flight else None,
        last_recharge=payment_model(view.last) if view.last else None,
    )


def _recharge_etag(view: RechargeView) -> dict[str, str]:
    return {"ETag": view.settings.etag if view.settings else '"r0"'}


def _pm_id(call: Call[Any]) -> str:
    return call.request.match_info["payment_method_id"]


# -- cards --------------------------------------------------------------------------------


async def list_payment_methods(call: Call[Any]) -> Reply:
    payments = call.services.payments
    if payments.configured:
        methods = await payments.refresh_methods(call.account)
    else:
        methods = await payments.methods(call.account)
    return Reply(
        models.PaymentMethodList(data=[models.PaymentMethod.model_validate(m) for m in methods])
    )


async def create_setup_intent(call: Call[Any]) -> Reply:
    payments = call.services.payments
    setup_id, secret = await payments.start_setup(call.actor, call.account)
    body = models.SetupIntent(
        id=setup_id, client_secret=secret, publishable_key=payments.publishable_key
    )
    return Reply(body, 201, dict(NO_STORE))


async def add_payment_method(call: Call[models.SetupCompletion]) -> Reply:
    method = await call.services.payments.finish_setup(
        call.actor, call.account, call.body.setup_intent_id
    )
    return Reply(models.PaymentMethod.model_validate(method), 201)


async def set_default_payment_method(call: Call[Any]) -> Reply:
    method = await call.services.payments.set_default(call.actor, call.account, _pm_id(call))
    return Reply(models.PaymentMethod.model_validate(method))


async def delete_payment_method(call: Call[Any]) -> Reply:
    payments = call.services.payments
    method = await payments.method(call.account, _pm_id(call))
    await payments.delete_method(call.actor, call.account, method.id)
    return Reply(models.PaymentMethod.model_validate(method))


# -- purchases and payments ---------------------------------------------------------------


async def create_purchase(call: Call[models.NewPurchase]) -> Reply:
    b = call.body
    result = await call.services.payments.purchase(
        call.actor,
        call.account,
        amount=b.amount,
        idempotency_key=b.idempotency_key,
        payment_method_id=b.payment_method_id,
        method=b.method,
    )
    p = result.payment
    headers = {REPLAYED_HEADER: "true"} if result.replayed else {}
    if p.status == "failed":
        raise PaymentRefused(
            p.failure_message or "the card was declined",
            code=p.failure_code,
            payment_id=p.id,
            replayed=result.replayed,
        )
    status = 200 if result.replayed else 201
    return Reply(payment_model(p, result), status, {**headers, **NO_STORE})


async def list_payments(call: Call[Any]) -> Reply:
    q = call.request.query
    errors: list[tuple[str, str]] = []
    limit = page_limit(
        q, errors, default=history_query.DEFAULT_LIMIT, maximum=history_query.MAX_LIMIT
    )
    cursor = q.get("cursor")
    if cursor is not None and not cursor.startswith("pay_"):
        errors.append(("cursor", "must be the next_cursor of an earlier page"))
    if errors:
        raise BadQuery(errors)
    items, next_cursor = await call.services.payments.payments(
        call.account, limit=limit, before=cursor
    )
    return Reply(
        models.PaymentPage(data=[payment_model(p) for p in items], next_cursor=next_cursor)
    )


async def get_payment(call: Call[Any]) -> Reply:
    payment_id = call.request.match_info["payment_id"]
    result = await call.services.payments.refresh(call.account, payment_id)
    return Reply(payment_model(result.payment, result), headers=dict(NO_STORE))


async def refund_payment(call: Call[models.NewRefund]) -> Reply:
    b = call.body
    r = await refund(
        call.services.payments.ctx,
        call.actor,
        call.request.match_info["payment_id"],
        amount=b.amount,
        force=b.force,
        reason=b.reason,
        idempotency_key=b.idempotency_key,
    )
    return Reply(models.Refund.model_validate(r), 201)


# -- auto-recharge and the payment gate ---------------------------------------------------


async def get_auto_recharge(call: Call[Any]) -> Reply:
    view = await call.services.recharges.view(call.account)
    return Reply(recharge_model(view), headers=_recharge_etag(view))


async def put_auto_recharge(call: Call[models.AutoRechargeIn]) -> Reply:
    b = call.body
    changes = RechargeChanges(
        enabled=b.enabled,
        threshold=b.threshold,
        amount=b.amount,
        target_balance=b.target_balance,
        max_per_day=b.max_per_day,
        max_amount_per_day=b.max_amount_per_day,
    )
    recharges = call.services.recharges
    await recharges.put(call.actor, call.account, changes, call.if_match)
    view = await recharges.view(call.account)
    return Reply(recharge_model(view), headers=_recharge_etag(view))


async def get_payment_settings(call: Call[Any]) -> Reply:
    account = await call.services.provisioning.account(call.account)
    return Reply(_settings(call, account))


async def put_payment_settings(call: Call[models.PaymentSettingsIn]) -> Reply:
    written = await call.services.provisioning.set_require_payment_method(
        call.actor, call.account, call.body.require_payment_method
    )
    return Reply(_settings(call, written.value), live=written.live)


def _settings(call: Call[Any], account: Any) -> models.PaymentSettings:
    return models.PaymentSettings(
        require_payment_method=account.require_payment_method,
        has_payment_method=account.has_payment_method,
        payments_configured=call.services.payments.configured,
    )


PAYMENT = {200: (models.Payment, "The payment.")}
METHOD = {200: (models.PaymentMethod, "The card.")}
RECHARGE = {200: (models.AutoRecharge, "Settings and state (ETag header: their version).")}
SETTINGS = {200: (models.PaymentSettings, "The payment gate.")}
_PAGE = (
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": history_query.MAX_LIMIT},
        "description": "Payments per page.",
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": models.PAYMENT_ID_PATTERN},
        "description": "next_cursor of the page before.",
    },
)


def _refund_op(path: str, op_id: str) -> Operation:
    return Operation(
        "POST",
        path,
        op_id,
        "Refund a payment in whole or part (at most the unspent balance unless forced)",
        refund_payment,
        P.OPERATOR_WRITE,
        "payment_id",
        {201: (models.Refund, "The refund (failed: Stripe refused it; nothing debited).")},
        models.NewRefund,
        errors=(409, 503),
    )


OPERATIONS = [
    Operation(
        "GET",
        A + "/payment-methods",
        "listPaymentMethods",
        "List the account's cards (default first)",
        list_payment_methods,
        P.READ,
        "account_id",
        {200: (models.PaymentMethodList, "The cards.")},
        errors=(503,),
    ),
    Operation(
        "POST",
        A + "/setup-intents",
        "createSetupIntent",
        "Start adding a card: a SetupIntent whose client secret Stripe.js confirms",
        create_setup_intent,
        P.PAYMENTS_WRITE,
        "account_id",
        {201: (models.SetupIntent, "Confirm it with Stripe.js, then add the card.")},
        errors=(409, 503),
    ),
    Operation(
        "POST",
        A + "/payment-methods",
        "addPaymentMethod",
        "Add the card a confirmed SetupIntent attached",
        add_payment_method,
        P.PAYMENTS_WRITE,
        "account_id",
        {201: (models.PaymentMethod, "The card.")},
        models.SetupCompletion,
        errors=(409, 503),
    ),
    Operation(
        "POST",
        PM + "/default",
        "setDefaultPaymentMethod",
        "Make a card the default (what auto-recharge charges)",
        set_default_payment_method,
        P.PAYMENTS_WRITE,
        "account_id",
        METHOD,
        errors=(503,),
    ),
    Operation(
        "DELETE",
        PM,
        "deletePaymentMethod",
        "Remove a card (the default is refused while auto-recharge is on or others remain)",
        delete_payment_method,
        P.PAYMENTS_WRITE,
        "account_id",
        {200: (models.PaymentMethod, "The card removed.")},
        errors=(409, 503),
    ),
    Operation(
        "POST",
        A + "/purchases",
        "createPurchase",
        "Buy credits with a card or crypto, once per idempotency key",
        create_purchase,
        P.PAYMENTS_WRITE,
        "account_id",
        {
            201: (models.Payment, "Charged and credited, or requires_action (3-D Secure)."),
            200: (models.Payment, "Replay: the same payment (Idempotent-Replayed: true)."),
        },
        models.NewPurchase,
        errors=(402, 409, 503),
    ),
    Operation(
        "GET",
        A + "/payments",
        "listPayments",
        "List the account's charges (purchases and recharges), newest first",
        list_payments,
        P.READ,
        "account_id",
        {200: (models.PaymentPage, "One page.")},
        errors=(400,),
        parameters=_PAGE,
    ),
    Operation(
        "GET",
        PAY,
        "getPayment",
        "Read a payment (an unsettled one is asked of Stripe first)",
        get_payment,
        P.READ,
        "payment_id",
        PAYMENT,
    ),
    _refund_op(PAY + "/refunds", "refundPayment"),
    _refund_op("/v1/purchases/{payment_id}/refunds", "refundPurchase"),
    Operation(
        "GET",
        A + "/auto-recharge",
        "getAutoRecharge",
        "Read the auto-recharge settings and what it is doing",
        get_auto_recharge,
        P.READ,
        "account_id",
        RECHARGE,
        etag=True,
    ),
    Operation(
        "PUT",
        A + "/auto-recharge",
        "putAutoRecharge",
        "Set auto-recharge (any change ends a pause)",
        put_auto_recharge,
        P.PAYMENTS_WRITE,
        "account_id",
        RECHARGE,
        models.AutoRechargeIn,
        errors=(409, 503),
        etag=True,
    ),
    Operation(
        "GET",
        A + "/payment-settings",
        "getPaymentSettings",
        "Whether the account must have a card to make calls",
        get_payment_settings,
        P.READ,
        "account_id",
        SETTINGS,
    ),
    Operation(
        "PUT",
        A + "/payment-settings",
        "putPaymentSettings",
        "Require a card on file before the gateway admits the account's calls",
        put_payment_settings,
        P.OPERATOR_WRITE,
        "account_id",
        SETTINGS,
        models.PaymentSettingsIn,
        errors=(409,),
    ),
]
