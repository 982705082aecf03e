"""What a test card does when charged, and the ``card_error`` Stripe answers with.

localstripe declines only a few cards when charged, answers declines as
``invalid_request_error`` without a ``decline_code``, and leaves an off-session
payment that needs authentication in ``requires_action``. Stripe instead raises a
402 ``card_error`` carrying the PaymentIntent, and remembers a card set up for
off-session use (4000002500003155 then needs no authentication off-session).
The table is Stripe's test cards (docs.stripe.com/testing); the wrappers here are
installed on localstripe's classes by ``install``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from localstripe import resources
from localstripe.errors import UserError

from meter.stripe_double.events import send_event


@dataclass(frozen=True, slots=True)
class Decline:
    code: str
    decline_code: str
    message: str


_GENERIC = Decline("card_declined", "generic_decline", "Your card was declined.")
_NO_FUNDS = Decline("card_declined", "insufficient_funds", "Your card has insufficient funds.")

DECLINES: dict[str, Decline] = {
    "4000000000000002": _GENERIC,
    "4000000000000341": _GENERIC,  # attaches, then every charge fails
    "4000000000009995": _NO_FUNDS,
    "4000000000009987": Decline("card_declined", "lost_card", "Your card was declined."),
    "4000000000009979": Decline("card_declined", "stolen_card", "Your card was declined."),
    "4000000000000069": Decline("expired_card", "expired_card", "Your card has expired."),
    "4000000000000127": Decline(
        "incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect."
    ),
    "4000000000000119": Decline(
        "processing_error",
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
    "4242424242424241": Decline(
        "incorrect_number", "incorrect_number", "Your card number is incorrect."
    ),
    "4000008260003178": _NO_FUNDS,  # after authentication
    "4000008400001629": _GENERIC,  # after authentication
}

# Needs authentication unless set up for off-session use first; the other 3-D Secure
# cards localstripe knows need it on every payment.
SETUP_ONCE_CARD = "4000002500003155"

AUTHENTICATION_REQUIRED = Decline(
    "authentication_required",
    "authentication_required",
    "Your card was declined. This transaction requires authentication.",
)

_PI_EXTRA_FIELDS = ("description", "statement_descriptor_suffix", "receipt_email")


def decline_for(pm: Any) -> Decline:
    return DECLINES.get(getattr(pm, "_card_number", ""), _GENERIC)


class CardError(UserError):  # type: ignore[misc]  # localstripe is untyped
    """A 402 ``card_error`` (localstripe's UserError forces ``invalid_request_error``)."""

    def __init__(self, error: dict[str, Any]) -> None:
        Exception.__init__(self)
        self.code = 402
        self.body = {"error": {"type": "card_error", **error}}


def card_error(decline: Decline, pm: Any = None, charge: Any = None, **objects: Any) -> CardError:
    error: dict[str, Any] = {
        "code": decline.code,
        "decline_code": decline.decline_code,
        "message": decline.message,
        "doc_url": f"https://stripe.com/docs/error-codes/{decline.code.replace('_', '-')}",
    }
    if pm is not None:
        error["payment_method"] = pm._export()
    if charge is not None:
        error["charge"] = charge.id
    for name, obj in objects.items():
        error[name] = obj._export()
    return CardError(error)


def _payment_error(decline: Decline, pm: Any, charge: Any = None) -> dict[str, Any]:
    error = {
        "type": "card_error",
        "code": decline.code,
        "decline_code": decline.decline_code,
        "message": decline.message,
        "payment_method": pm._export() if pm is not None else None,
    }
    if charge is not None:
        error["charge"] = charge.id
    return error


@web.middleware
async def shape_card_errors(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    """Innermost: localstripe's 402s become Stripe's ``card_error`` with its objects."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except CardError:
        raise
    except UserError as e:
        if e.code != 402:
            raise
        raise _shaped(request, e.body.get("error", {})) from None


def _shaped(request: web.Request, error: dict[str, Any]) -> CardError:
    store = resources.store
    if charge_id := error.get("charge"):
        charge = store.get("charge:" + charge_id)
        pm = store.get("payment_method:" + str(charge.payment_method))
        pi = store.get("payment_intent:" + str(charge.payment_intent))
        intent = {"payment_intent": pi} if pi is not None else {}
        return card_error(decline_for(pm), pm, charge, **intent)
    route = request.match_info.route.resource
    canonical = route.canonical if route is not None else ""
    obj_id = request.match_info.get("id", "")
    if canonical == "/v1/payment_methods/{id}/attach":
        pm = store.get("payment_method:" + obj_id)
        return card_error(decline_for(pm), pm)
    if canonical == "/v1/setup_intents/{id}/confirm":
        si = store.get("setup_intent:" + obj_id)
        pm = store.get("payment_method:" + str(si.payment_method))
        decline = decline_for(pm)
        # Stripe keeps a SetupIntent whose card failed open for another card.
        si.status, si.payment_method = "requires_payment_method", None
        si.last_setup_error = _payment_error(decline, pm)
        return card_error(decline, pm, setup_intent=si)
    return card_error(_GENERIC)


def install() -> None:
    """Wrap localstripe's PaymentIntent and card methods (once per process)."""
    pi_cls, pm_cls, charge_cls = resources.PaymentIntent, resources.PaymentMethod, resources.Charge
    if getattr(pi_cls, "_double_installed", False):
        return
    pi_cls._double_installed = True

    pi_init = pi_cls.__init__

    def init(self: Any, *args: Any, **data: Any) -> None:
        extra = {name: data.pop(name, None) for name in _PI_EXTRA_FIELDS}
        pi_init(self, *args, **data)
        for name, value in extra.items():
            setattr(self, name, value)

    pi_cls.__init__ = init

    charging_declined = pm_cls._charging_is_declined

    def charging_is_declined(self: Any) -> bool:
        return bool(charging_declined(self)) or (
            self.type == "card" and self._card_number in DECLINES
        )

    pm_cls._charging_is_declined = charging_is_declined

    def set_auth_failure(self: Any) -> None:
        decline = decline_for(resources.PaymentMethod._api_retrieve(self.payment_method))
        self.status = "failed"
        self.failure_code, self.failure_message = decline.code, decline.message
        self.outcome = {"type": "issuer_declined", "reason": decline.decline_code}

    charge_cls._set_auth_failure = set_auth_failure

    last_error = pi_cls.last_payment_error.fget

    def last_payment_error(self: Any) -> dict[str, Any] | None:
        if own := getattr(self, "_double_payment_error", None):
            return own  # type: ignore[no-any-return]
        error: dict[str, Any] | None = last_error(self)
        if error and error.get("charge"):
            charge = self.latest_charge
            pm = resources.store.get("payment_method:" + str(charge.payment_method))
            return _payment_error(decline_for(pm), pm, charge)
        return error

    pi_cls.last_payment_error = property(last_payment_error)

    create = pi_cls._api_create

    def api_create(cls: Any, /, confirm: Any = None, off_session: Any = None, **data: Any) -> Any:
        confirm_b = resources.try_convert_to_bool(confirm)
        off_b = resources.try_convert_to_bool(off_session)
        if not (confirm_b is True and off_b is True):
            return create(confirm=confirm, off_session=off_session, **data)
        obj = create(**data)  # created unconfirmed; confirmed off-session below
        pm = resources.PaymentMethod._api_retrieve(obj.payment_method)
        if pm._requires_authentication() and not (
            pm._card_number == SETUP_ONCE_CARD and getattr(pm, "_double_off_session", False)
        ):
            _fail_authentication(obj, pm)
        obj._create_charge(on_failure_now=obj._report_failure)
        return obj

    pi_cls._api_create = classmethod(api_create)


def _fail_authentication(pi: Any, pm: Any) -> None:
    """Stripe's answer to an off-session payment the bank wants authenticated."""
    pi._double_payment_error = _payment_error(AUTHENTICATION_REQUIRED, pm)
    pi.payment_method = None  # status requires_payment_method: bring the customer back
    send_event("payment_intent.payment_failed", pi)
    raise card_error(AUTHENTICATION_REQUIRED, pm, payment_intent=pi)
