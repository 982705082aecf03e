"""Payment methods and buying credits: the two pages that run Stripe.js.

A card never touches us: "Add new credit card" (a POST, so no SetupIntent is made
by merely looking) renders Stripe's card element with a SetupIntent's client
secret; ``payments.js`` confirms it in the browser and posts the SetupIntent id
back, and ``finish_setup`` records the card Stripe attached.

A purchase is keyed by a random ``idempotency_key`` put in the form when it is
rendered, so a double submit or a reload of the POST charges once (the service
answers a replay with the first payment). A card that needs 3-D Secure gets the
challenge page: ``payments.js`` runs ``confirmCardPayment`` and posts to the
completion route, which asks Stripe how it ended (``payments.refresh``). Every
outcome is then shown by ``GET /credits?payment=<id>`` (POST-redirect-GET).
"""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from admin.access import Permission as P
from admin.access import require_on
from admin.errors import Conflict, InvalidInput
from meter.money import money
from payments.records import PaymentMethod
from payments.service import NoPaymentMethod, PaymentMethodInUse, PurchaseResult, StripeUnavailable
from portal.context import FORM, SERVICES, STRIPE_JS, VIEWER
from portal.forms import Errors, dollars, service_errors
from portal.rendering import render, see_other

routes = web.RouteTableDef()
RECENT_CHARGES = 10
CRYPTO = "crypto"
STALE_LOOK = "Stripe could not be reached: these are the cards as we last saw them."


def amount_error(micros: int, lo: int, hi: int) -> str | None:
    """Why a typed amount may not be bought, in dollars (the service says it in micros)."""
    if lo <= micros <= hi:
        return None
    return f"Enter an amount between {money(lo)} and {money(hi)}."


def card_label(m: PaymentMethod) -> str:
    return f"{m.brand.title()} •••• {m.last4}" + (" (default)" if m.is_default else "")


def stripe_page(request: web.Request) -> dict[str, Any]:
    """What a page that loads Stripe.js needs; its response gets the relaxed policy."""
    request[STRIPE_JS] = True
    payments = request.app[SERVICES].payments
    return {
        "stripe_js_url": payments.ctx.settings.stripe_js_url,
        "publishable_key": payments.publishable_key,
    }


# -- payment methods ------------------------------------------------------------------


async def _cards_page(
    request: web.Request,
    *,
    setup: tuple[str, str] | None = None,
    status: int = 200,
    flashes: list[tuple[str, str]] | None = None,
) -> web.Response:
    viewer, payments = request[VIEWER], request.app[SERVICES].payments
    shown = list(flashes or [])
    if not payments.configured:
        methods = await payments.methods(viewer.account.id)
    else:
        try:  # Stripe is the source of truth for cards; our copy is what the gateway reads
            methods = await payments.refresh_methods(viewer.account.id)
        except StripeUnavailable:
            methods = await payments.methods(viewer.account.id)
            shown.append(("warning", STALE_LOOK))
    recharge = await request.app[SERVICES].recharges.view(viewer.account.id)
    context: dict[str, Any] = {"setup_secret": setup[1] if setup else None}
    if setup:
        context.update(stripe_page(request))
    return render(
        request,
        "payment_methods.html",
        section="payment_methods",
        status=status,
        flashes=shown,
        configured=payments.configured,
        methods=methods,
        recharge_on=recharge.state != "off",
        **context,
    )


@routes.get("/payment-methods")
async def payment_methods(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    return await _cards_page(request)


@routes.post("/payment-methods/setup")
async def start_card(request: web.Request) -> web.StreamResponse:
    viewer, payments = request[VIEWER], request.app[SERVICES].payments
    require_on(viewer.principal, P.PAYMENTS_WRITE, viewer.account.id, "no account")
    setup = await payments.start_setup(viewer.actor, viewer.account.id)
    return await _cards_page(request, setup=setup)


@routes.post("/payment-methods")
async def add_card(request: web.Request) -> web.StreamResponse:
    viewer, payments, form = request[VIEWER], request.app[SERVICES].payments, request[FORM]
    require_on(viewer.principal, P.PAYMENTS_WRITE, viewer.account.id, "no account")
    setup_id = form.get("setup_intent_id", "").strip()
    if not setup_id:
        return await _cards_page(
            request, status=422, flashes=[("error", "The card was not confirmed; add it again.")]
        )
    try:
        await payments.finish_setup(viewer.actor, viewer.account.id, setup_id)
    except Conflict as exc:
        return await _cards_page(request, status=409, flashes=[("error", exc.detail)])
    return see_other("/payment-methods?done=card_added")


@routes.post("/payment-methods/{pm_id}/default")
async def set_default(request: web.Request) -> web.StreamResponse:
    viewer, payments = request[VIEWER], request.app[SERVICES].payments
    require_on(viewer.principal, P.PAYMENTS_WRITE, viewer.account.id, "no account")
    await payments.set_default(viewer.actor, viewer.account.id, request.match_info["pm_id"])
    return see_other("/payment-methods?done=card_default")


@routes.post("/payment-methods/{pm_id}/delete")
async def delete_card(request: web.Request) -> web.StreamResponse:
    viewer, payments = request[VIEWER], request.app[SERVICES].payments
    require_on(viewer.principal, P.PAYMENTS_WRITE, viewer.account.id, "no account")
    try:
        await payments.delete_method(viewer.actor, viewer.account.id, request.match_info["pm_id"])
    except PaymentMethodInUse as exc:
        return await _cards_page(request, status=409, flashes=[("error", exc.detail)])
    return see_other("/payment-methods?done=card_deleted")


# -- credits --------------------------------------------------------------------------


async def _credits_page(
    request: web.Request,
    *,
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    status: int = 200,
    flashes: list[tuple[str, str]] | None = None,
    authenticate: PurchaseResult | None = None,
    checkout_url: str | None = None,
) -> web.Response:
    viewer, services = request[VIEWER], request.app[SERVICES]
    account_id, payments = viewer.account.id, services.payments
    settings = payments.ctx.settings
    query = request.query
    result = None
    if request.method == "GET" and "payment" in query:
        result = (await payments.refresh(account_id, query["payment"])).payment
    elif request.method == "GET" and "paid" in query:  # back from Stripe's checkout
        result = (await payments.refresh(account_id, query["paid"])).payment
    methods = await payments.methods(account_id)
    default = next((m.id for m in methods if m.is_default), CRYPTO)
    charges, _ = await payments.payments(account_id, limit=RECENT_CHARGES)
    context: dict[str, Any] = {}
    if authenticate is not None:
        context.update(stripe_page(request))
    return render(
        request,
        "credits.html",
        section="credits",
        status=status,
        flashes=flashes,
        configured=payments.configured,
        balance=await services.provisioning.balance(account_id),
        bounds=(settings.credit_purchase_min, settings.credit_purchase_max),
        options=[(m.id, card_label(m)) for m in methods] + [(CRYPTO, "Cryptocurrency")],
        values=values or {"amount": "", "payment_method": default},
        # A fresh key per rendering: the same form posted twice is one purchase.
        idempotency_key=secrets.token_urlsafe(18),
        errors=errors or {},
        result=result,
        checkout_canceled=request.method == "GET" and "canceled" in query,
        charges=charges,
        authenticate=authenticate,
        checkout_url=checkout_url,
        **context,
    )


@routes.get("/credits")
async def credits(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    return await _credits_page(request)


@routes.post("/credits")
async def buy_credits(request: web.Request) -> web.StreamResponse:
    viewer, payments, form = request[VIEWER], request.app[SERVICES].payments, request[FORM]
    account_id = viewer.account.id
    require_on(viewer.principal, P.PAYMENTS_WRITE, account_id, "no account")
    values = {"amount": form.get("amount", ""), "payment_method": form.get("payment_method", "")}
    settings = payments.ctx.settings
    errors: Errors = {}
    amount = dollars(values["amount"])
    if isinstance(amount, str):
        errors["amount"] = amount
    else:
        bound = amount_error(amount, settings.credit_purchase_min, settings.credit_purchase_max)
        if bound:
            errors["amount"] = bound
    choice = values["payment_method"]
    if not choice:
        errors["payment_method"] = "Choose a card, or cryptocurrency."
    key = form.get("idempotency_key", "")
    if not key:
        errors["form"] = "The form was incomplete; nothing was charged. Try again."
    if errors or isinstance(amount, str):
        return await _credits_page(request, values=values, errors=errors, status=422)
    try:
        result = await payments.purchase(
            viewer.actor,
            account_id,
            amount=amount,
            idempotency_key=key,
            payment_method_id=None if choice == CRYPTO else choice,
            method=CRYPTO if choice == CRYPTO else "card",
        )
    except InvalidInput as exc:
        found = service_errors(exc)
        if "payment_method_id" in found:
            found["payment_method"] = found.pop("payment_method_id")
        return await _credits_page(request, values=values, errors=found, status=422)
    except NoPaymentMethod as exc:
        errors = {"payment_method": exc.detail}
        return await _credits_page(request, values=values, errors=errors, status=409)
    except Conflict as exc:  # the key of a purchase with another amount (back, edit, resend)
        flash = (
            "error",
            f"This form was already used for another purchase; nothing more was"
            f" charged. Check the amount and submit again. ({exc.detail})",
        )
        return await _credits_page(request, values=values, status=409, flashes=[flash])
    return await _after_purchase(request, result)


async def _after_purchase(request: web.Request, result: PurchaseResult) -> web.StreamResponse:
    p = result.payment
    if result.checkout_url:
        return await _credits_page(request, checkout_url=result.checkout_url)
    if p.status == "requires_action" and result.client_secret:
        return await _credits_page(request, authenticate=result)
    return see_other(f"/credits?payment={p.id}")


@routes.post("/credits/payments/{payment_id}/complete")
async def complete_payment(request: web.Request) -> web.StreamResponse:
    """After the browser's 3-D Secure step, however it ended: settle from Stripe's word."""
    viewer, payments = request[VIEWER], request.app[SERVICES].payments
    require_on(viewer.principal, P.PAYMENTS_WRITE, viewer.account.id, "no account")
    result = await payments.refresh(viewer.account.id, request.match_info["payment_id"])
    if result.payment.status == "requires_action" and result.client_secret:
        flash = ("warning", "The card's authentication was not completed. Try it again.")
        return await _credits_page(request, authenticate=result, flashes=[flash])
    return see_other(f"/credits?payment={result.payment.id}")
