"""The Stripe adapter: the calls payments make, in and out as plain values.

It translates only. Amounts cross it in cents (Stripe's unit for USD); our micros are
converted by the callers (``money``). Stripe's errors become three kinds: a card
that was declined or needs authentication (``Declined``, with the PaymentIntent when
Stripe made one), a request Stripe refused (``Rejected``), and Stripe unreachable or
failing (``Unavailable``: the outcome is unknown, so callers leave the payment
pending for the sweep).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import stripe

from meter.settings import Settings

API_VERSION = "2025-08-27.basil"


class StripeFailure(Exception):
    """Base of what the adapter raises."""


class Unavailable(StripeFailure):
    """Stripe could not be reached or failed: whether it acted is unknown."""


class Rejected(StripeFailure):
    """Stripe refused the request (a bad parameter, an object that does not exist)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Intent:
    """A PaymentIntent as far as we use it."""

    id: str
    status: str
    amount: int  # cents
    customer: str | None
    payment_method: str | None
    client_secret: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None


class Declined(StripeFailure):
    """The card was declined or needs the cardholder (``authentication_required``)."""

    def __init__(self, code: str, message: str, intent: Intent | None) -> None:
        super().__init__(message)
        self.code = code
        self.intent = intent


@dataclass(frozen=True, slots=True)
class Card:
    id: str
    customer: str | None
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    name: str | None


@dataclass(frozen=True, slots=True)
class Setup:
    id: str
    status: str
    customer: str | None
    payment_method: str | None
    client_secret: str | None


@dataclass(frozen=True, slots=True)
class Checkout:
    id: str
    url: str | None
    status: str  # open, complete, expired
    payment_status: str  # unpaid, paid, no_payment_required
    payment_intent: str | None
    metadata: dict[str, str] = field(default_factory=dict)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    try:
        value = obj[name]
    except (KeyError, TypeError):
        return default
    return default if value is None else value


def _id(value: Any) -> str | None:
    """An expandable field's id (Stripe sends a string, or the object when expanded)."""
    if value is None or isinstance(value, str):
        return value
    return str(_get(value, "id"))


def _metadata(obj: Any) -> dict[str, str]:
    raw = _get(obj, "metadata", {}) or {}
    # A webhook's event is StripeObjects, which dict() refuses (stripe >= 12); API
    # answers may be plain dicts.
    plain = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
    return {str(k): str(v) for k, v in plain.items()}


def intent_of(obj: Any) -> Intent:
    error = _get(obj, "last_payment_error")
    return Intent(
        id=str(obj["id"]),
        status=str(obj["status"]),
        amount=int(obj["amount"]),
        customer=_id(_get(obj, "customer")),
        payment_method=_id(_get(obj, "payment_method")),
        client_secret=_get(obj, "client_secret"),
        metadata=_metadata(obj),
        error_code=_get(error, "decline_code") or _get(error, "code") if error else None,
        error_message=_get(error, "message") if error else None,
    )


def card_of(obj: Any) -> Card:
    card = _get(obj, "card", {})
    billing = _get(obj, "billing_details", {})
    return Card(
        id=str(obj["id"]),
        customer=_id(_get(obj, "customer")),
        brand=str(_get(card, "brand", "card")),
        last4=str(_get(card, "last4", "????")),
        exp_month=int(_get(card, "exp_month", 0)),
        exp_year=int(_get(card, "exp_year", 0)),
        name=_get(billing, "name"),
    )


def checkout_of(obj: Any) -> Checkout:
    return Checkout(
        id=str(obj["id"]),
        url=_get(obj, "url"),
        status=str(_get(obj, "status", "open")),
        payment_status=str(_get(obj, "payment_status", "unpaid")),
        payment_intent=_id(_get(obj, "payment_intent")),
        metadata=_metadata(obj),
    )


def _translate(exc: stripe.StripeError) -> StripeFailure:
    if isinstance(exc, stripe.CardError):
        error = exc.error.to_dict() if exc.error is not None else None
        intent = _get(error, "payment_intent") if error is not None else None
        code = (
            (_get(error, "decline_code") if error is not None else None)
            or exc.code
            or "card_declined"
        )
        return Declined(
            str(code), exc.user_message or str(exc), intent_of(intent) if intent else None
        )
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        return Unavailable(str(exc))
    status = exc.http_status or 0
    if status >= 500 or status == 409 or isinstance(exc, stripe.APIError):
        return Unavailable(f"Stripe answered {status}: {exc.user_message or exc}")
    return Rejected(exc.user_message or str(exc), exc.code)


class StripeApi:
    """Async calls on one ``StripeClient`` (aiohttp underneath)."""

    def __init__(self, settings: Settings) -> None:
        self.client = stripe.StripeClient(
            settings.stripe_secret_key.reveal(),
            base_addresses={"api": settings.stripe_api_base},
            http_client=stripe.AIOHTTPClient(timeout=settings.stripe_timeout),
            # No blind retries: a POST whose answer was lost may have charged, and only
            # Stripe's idempotency would make its retry safe. The sweep asks first.
            max_network_retries=0,
        )
        self.v1 = self.client.v1

    @staticmethod
    def _options(idempotency_key: str | None) -> Any:
        return {"idempotency_key": idempotency_key} if idempotency_key else None

    async def _call(self, coro: Any) -> Any:
        """Stripe's answer as plain dicts and lists (its objects are not mappings)."""
        try:
            obj = await coro
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return obj.to_dict() if hasattr(obj, "to_dict") else obj

    # -- customers ----------------------------------------------------------------------

    async def create_customer(
        self, account_id: str, details: dict[str, Any], idempotency_key: str
    ) -> str:
        params = {**details, "metadata": {"account_id": account_id}}
        obj = await self._call(
            self.v1.customers.create_async(_any(params), self._options(idempotency_key))
        )
        return str(obj["id"])

    async def find_customer(self, account_id: str) -> str | None:
        found = await self._call(
            self.v1.customers.search_async({"query": f"metadata['account_id']:'{account_id}'"})
        )
        ids = [str(c["id"]) for c in found["data"]]
        return min(ids) if ids else None

    async def update_customer(self, customer_id: str, details: dict[str, Any]) -> None:
        await self._call(self.v1.customers.update_async(customer_id, _any(details)))

    async def add_tax_id(self, customer_id: str, type_: str, value: str) -> None:
        await self._call(
            self.v1.customers.tax_ids.create_async(customer_id, {"type": type_, "value": value})
        )

    async def tax_ids(self, customer_id: str) -> set[tuple[str, str]]:
        found = await self._call(self.v1.customers.tax_ids.list_async(customer_id))
        return {(str(t["type"]), str(t["value"])) for t in found["data"]}

    async def default_payment_method(self, customer_id: str) -> str | None:
        obj = await self._call(self.v1.customers.retrieve_async(customer_id))
        return _id(_get(_get(obj, "invoice_settings", {}), "default_payment_method"))

    async def set_default_payment_method(self, customer_id: str, pm_id: str | None) -> None:
        await self._call(
            self.v1.customers.update_async(
                customer_id, {"invoice_settings": {"default_payment_method": pm_id or ""}}
            )
        )

    # -- cards --------------------------------------------------------------------------

    async def create_setup_intent(self, customer_id: str, account_id: str) -> Setup:
        obj = await self._call(
            self.v1.setup_intents.create_async(
                _any(
                    {
                        "customer": customer_id,
                        "usage": "off_session",
                        "payment_method_types": ["card"],
                        "metadata": {"account_id": account_id},
                    }
                )
            )
        )
        return self._setup(obj)

    async def retrieve_setup_intent(self, setup_id: str) -> Setup:
        return self._setup(await self._call(self.v1.setup_intents.retrieve_async(setup_id)))

    @staticmethod
    def _setup(obj: Any) -> Setup:
        return Setup(
            id=str(obj["id"]),
            status=str(obj["status"]),
            customer=_id(_get(obj, "customer")),
            payment_method=_id(_get(obj, "payment_method")),
            client_secret=_get(obj, "client_secret"),
        )

    async def cards(self, customer_id: str) -> list[Card]:
        cards: list[Card] = []
        params: dict[str, Any] = {"customer": customer_id, "type": "card", "limit": 100}
        while True:
            found = await self._call(self.v1.payment_methods.list_async(_any(params)))
            cards.extend(card_of(pm) for pm in found["data"])
            if not found.get("has_more") or not found["data"]:
                return cards
            params["starting_after"] = found["data"][-1]["id"]

    async def card(self, pm_id: str) -> Card:
        return card_of(await self._call(self.v1.payment_methods.retrieve_async(pm_id)))

    async def detach(self, pm_id: str) -> None:
        await self._call(self.v1.payment_methods.detach_async(pm_id))

    # -- charges ------------------------------------------------------------------------

    async def create_intent(
        self,
        *,
        amount_cents: int,
        customer_id: str,
        payment_method: str,
        metadata: dict[str, str],
        off_session: bool,
        idempotency_key: str,
        description: str,
    ) -> Intent:
        params: dict[str, Any] = {
            "amount": amount_cents,
            "currency": "usd",
            "customer": customer_id,
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "confirm": True,
            "metadata": metadata,
            "description": description,
        }
        if off_session:
            params["off_session"] = True
        obj = await self._call(
            self.v1.payment_intents.create_async(_any(params), self._options(idempotency_key))
        )
        return intent_of(obj)

    async def retrieve_intent(self, intent_id: str) -> Intent:
        return intent_of(await self._call(self.v1.payment_intents.retrieve_async(intent_id)))

    async def find_intent(self, payment_id: str) -> Intent | None:
        """The PaymentIntent our payment made, found by its metadata (a lost answer)."""
        found = await self._call(
            self.v1.payment_intents.search_async(
                {"query": f"metadata['payment_id']:'{payment_id}'"}
            )
        )
        intents = [intent_of(pi) for pi in found["data"]]
        for wanted in ("succeeded", "processing", "requires_action"):
            for intent in intents:
                if intent.status == wanted:
                    return intent
        return intents[0] if intents else None

    async def cancel_intent(self, intent_id: str) -> Intent:
        return intent_of(await self._call(self.v1.payment_intents.cancel_async(intent_id)))

    async def create_checkout(
        self,
        *,
        amount_cents: int,
        customer_id: str,
        metadata: dict[str, str],
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
    ) -> Checkout:
        obj = await self._call(
            self.v1.checkout.sessions.create_async(
                _any(
                    {
                        "mode": "payment",
                        "customer": customer_id,
                        "payment_method_types": ["crypto"],
                        "line_items": [
                            {
                                "price_data": {
                                    "currency": "usd",
                                    "unit_amount": amount_cents,
                                    "product_data": {"name": "Usage credits"},
                                },
                                "quantity": 1,
                            }
                        ],
                        "metadata": metadata,
                        "payment_intent_data": {"metadata": metadata},
                        "success_url": success_url,
                        "cancel_url": cancel_url,
                    }
                ),
                self._options(idempotency_key),
            )
        )
        return checkout_of(obj)

    async def retrieve_checkout(self, session_id: str) -> Checkout:
        return checkout_of(await self._call(self.v1.checkout.sessions.retrieve_async(session_id)))

    async def refund(
        self, intent_id: str, amount_cents: int, metadata: dict[str, str], idempotency_key: str
    ) -> tuple[str, str]:
        obj = await self._call(
            self.v1.refunds.create_async(
                {"payment_intent": intent_id, "amount": amount_cents, "metadata": metadata},
                self._options(idempotency_key),
            )
        )
        return str(obj["id"]), str(obj["status"])

    async def find_refund(self, intent_id: str, refund_id: str) -> tuple[str, str] | None:
        """The refund our ``refund_id`` made of ``intent_id`` (a lost answer): (id, status)."""
        found = await self._call(
            self.v1.refunds.list_async(_any({"payment_intent": intent_id, "limit": 100}))
        )
        for r in found["data"]:
            if (r.get("metadata") or {}).get("refund_id") == refund_id:
                return str(r["id"]), str(r["status"])
        return None

    async def close(self) -> None:
        http: Any = self.client._requestor._client
        if http is not None and hasattr(http, "close_async"):
            await http.close_async()


def _any(params: dict[str, Any]) -> Any:
    """Our parameters as the stripe library's TypedDicts (we build plain dicts)."""
    return params


def construct_event(payload: bytes, signature: str, secret: str) -> dict[str, Any]:
    """A verified event as a plain dict (raises ``stripe.SignatureVerificationError``
    or ``ValueError``)."""
    event: dict[str, Any] = stripe.Webhook.construct_event(payload, signature, secret).to_dict()
    return event
