"""Checkout Sessions (mode ``payment``), which localstripe lacks, and the page a
session's ``url`` opens.

A session lives in localstripe's store as a ``checkout.session`` object, so resets
and ``expand`` treat it like any other. Paying (the page's "Pay with crypto" or
``POST /_double/checkout/{id}/complete``) makes a PaymentIntent that succeeds at
once with a ``crypto`` payment method and one charge, marks the session
``complete``/``paid`` and sends ``checkout.session.completed``; as on Stripe the
PaymentIntent takes ``payment_intent_data[metadata]``, not the session's metadata.
"Cancel" only returns to ``cancel_url``: the session stays open, as on Stripe.
"""

from __future__ import annotations

import html
import time
from typing import Any

from aiohttp import web
from localstripe import resources
from localstripe.errors import UserError
from localstripe.server import get_post_data, unflatten_data

from meter.stripe_double.events import send_event

SESSION_SECONDS = 24 * 3600
_METHOD_TYPES = ("card", "crypto")


class CheckoutSession(resources.StripeObject):  # type: ignore[misc]  # localstripe is untyped
    object = "checkout.session"
    _id_prefix = "cs_test_"

    def __init__(self, base_url: str, data: dict[str, Any]) -> None:
        items = data.get("line_items")
        if data.get("mode") != "payment":
            raise UserError(400, "The double supports mode=payment only", {"param": "mode"})
        if not isinstance(items, list) or not items:
            raise UserError(400, "Missing required param: line_items.", {"param": "line_items"})
        types = data.get("payment_method_types") or ["card"]
        if not isinstance(types, list) or any(t not in _METHOD_TYPES for t in types):
            raise UserError(400, "Invalid payment_method_types", {"param": "payment_method_types"})
        if not data.get("success_url"):
            raise UserError(400, "Missing required param: success_url.", {"param": "success_url"})
        lines = [_line(i, item) for i, item in enumerate(items)]
        currencies = {line["currency"] for line in lines}
        if len(currencies) != 1:
            raise UserError(400, "All line items must have the same currency")
        customer = data.get("customer")
        if customer is not None:
            resources.Customer._api_retrieve(customer)  # 404 if unknown

        super().__init__()  # every check is above: this stores the session

        self.mode = "payment"
        self.status = "open"
        self.payment_status = "unpaid"
        self.currency = currencies.pop()
        self.amount_subtotal = self.amount_total = sum(line["amount_total"] for line in lines)
        self.customer = customer
        self.customer_email = data.get("customer_email")
        self.client_reference_id = data.get("client_reference_id")
        self.metadata = data.get("metadata") or {}
        self.payment_method_types = types
        self.payment_intent = None
        self.success_url = data["success_url"]
        self.cancel_url = data.get("cancel_url")
        self.expires_at = int(time.time()) + SESSION_SECONDS
        self.url: str | None = f"{base_url}/_double/checkout/{self.id}"
        self._lines = lines
        self._payment_intent_data = data.get("payment_intent_data") or {}

    def _complete(self) -> None:
        if self.status != "open":
            raise UserError(400, f"This Checkout Session is {self.status}, not open.")
        pm = resources.PaymentMethod(
            type="card",
            card={"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        )
        # A crypto payment: localstripe has no such type; a card it charges, relabelled.
        pm.type, pm.crypto = "crypto", {}
        del pm.card
        pi = resources.PaymentIntent(
            amount=self.amount_total,
            currency=self.currency,
            customer=self.customer,
            payment_method=pm.id,
            payment_method_types=["crypto"],
            metadata=dict(self._payment_intent_data.get("metadata") or {}),
            description=self._payment_intent_data.get("description"),
        )
        pi._create_charge(on_failure_now=pi._report_failure)
        self.payment_intent = pi.id
        self.status, self.payment_status, self.url = "complete", "paid", None
        send_event("checkout.session.completed", self)

    def _expire(self) -> None:
        if self.status != "open":
            raise UserError(400, 'Only Checkout Sessions with a status in ["open"] can be expired.')
        self.status, self.url = "expired", None
        send_event("checkout.session.expired", self)

    def _redirect(self, url: str | None) -> str:
        return (url or "/").replace("{CHECKOUT_SESSION_ID}", self.id)


def _line(index: int, item: Any) -> dict[str, Any]:
    price = item.get("price_data") if isinstance(item, dict) else None
    if not isinstance(price, dict):
        raise UserError(
            400, "The double supports line_items[].price_data only", {"param": "line_items"}
        )
    amount = resources.try_convert_to_int(price.get("unit_amount"))
    quantity = resources.try_convert_to_int(item.get("quantity", 1))
    currency = price.get("currency")
    name = (price.get("product_data") or {}).get("name")
    if not isinstance(amount, int) or amount < 0 or not isinstance(quantity, int) or quantity < 1:
        raise UserError(400, f"Invalid line_items[{index}]", {"param": f"line_items[{index}]"})
    if not isinstance(currency, str) or not name:
        raise UserError(400, f"Invalid line_items[{index}]", {"param": f"line_items[{index}]"})
    return {
        "currency": currency.lower(),
        "name": name,
        "quantity": quantity,
        "amount_total": amount * quantity,
    }


def _session(request: web.Request) -> CheckoutSession:
    obj = resources.store.get("checkout.session:" + request.match_info["id"])
    if not isinstance(obj, CheckoutSession):
        raise UserError(404, "No such checkout.session: " + request.match_info["id"])
    return obj


async def create(request: web.Request) -> web.Response:
    data = await get_post_data(request) or {}
    expand = data.pop("expand", None)
    session = CheckoutSession(f"{request.scheme}://{request.host}", data)
    return web.json_response(session._export(expand=expand))


async def retrieve(request: web.Request) -> web.Response:
    expand = unflatten_data(request.query).get("expand")
    return web.json_response(_session(request)._export(expand=expand))


async def expire(request: web.Request) -> web.Response:
    session = _session(request)
    session._expire()
    return web.json_response(session._export())


async def complete(request: web.Request) -> web.Response:
    """Pay without a browser (tests)."""
    session = _session(request)
    session._complete()
    return web.json_response(session._export())


async def page(request: web.Request) -> web.Response:
    session = _session(request)
    amount = f"{session.amount_total / 100:.2f} {session.currency.upper()}"
    lines = "".join(
        f"<li>{html.escape(line['name'])} x {line['quantity']}</li>" for line in session._lines
    )
    body = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Checkout (test double)</title>"
        "</head><body><h1>Pay " + html.escape(amount) + "</h1><ul>" + lines + "</ul>"
        f"<p>Status: <span id='status'>{html.escape(session.status)}</span></p>"
    )
    if session.status == "open":
        base = f"/_double/checkout/{session.id}"
        body += (
            f"<form method='post' action='{base}/pay'><button>Pay with crypto</button></form>"
            f"<form method='post' action='{base}/cancel'><button>Cancel</button></form>"
        )
    return web.Response(text=body + "</body></html>", content_type="text/html")


async def pay(request: web.Request) -> web.Response:
    session = _session(request)
    session._complete()
    raise web.HTTPSeeOther(session._redirect(session.success_url))


async def cancel(request: web.Request) -> web.Response:
    session = _session(request)
    raise web.HTTPSeeOther(session._redirect(session.cancel_url))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/checkout/sessions", create)
    app.router.add_get("/v1/checkout/sessions/{id}", retrieve)
    app.router.add_post("/v1/checkout/sessions/{id}/expire", expire)
    app.router.add_get("/_double/checkout/{id}", page)
    app.router.add_post("/_double/checkout/{id}/pay", pay)
    app.router.add_post("/_double/checkout/{id}/cancel", cancel)
    app.router.add_post("/_double/checkout/{id}/complete", complete)
