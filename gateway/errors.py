"""Why the gateway refuses a call: one exception per answer, each with its status and type.

Every refusal is rendered by one code path (``proxy.Proxy.refuse``) as an
RFC 9457 ``application/problem+json`` body whose ``type`` is
``https://meter.dev/problems/<slug>``; the slug is also the ``reason`` label of
the refusal metric, so both are stable. The 402s link to the billing portal page
where the customer fixes it (``PortalLinks``, built once at start-up).

    meter.problems.Problem
    +-- Refusal
        +-- BadPath ........................ 400 bad-path (a path upstreams may route in
        |                                        more than one way: pricing.canonical_path)
        +-- IncompleteBody ................. 400 incomplete-body (the client stopped sending)
        +-- RepeatedKey .................... 400 repeated-api-key (two Authorization, or two
        |                                        X-API-Key headers: which one pays is unclear)
        +-- Unauthenticated ................ 401
        |   +-- MissingKey ................. 401 missing-api-key
        |   +-- MalformedKey ............... 401 malformed-api-key
        |   +-- UnknownKey ................. 401 unknown-api-key
        +-- NoCredit ....................... 402 insufficient-credits (+ auto_recharge when
        |                                        one is in flight, declined or paused)
        +-- PaymentMethodRequired .......... 402 payment-method-required
        +-- Forbidden ...................... 403
        |   +-- KeyRevoked ................. 403 api-key-revoked
        |   +-- AccountSuspended ........... 403 account-suspended
        +-- NoRoute ........................ 404 no-such-route (the table refuses unmatched)
        +-- BodyTooLarge ................... 413 body-too-large
        +-- DailyLimitReached .............. 429 daily-limit-reached (Retry-After: until 00:00 UTC)
        +-- UpstreamFailure ................ 502
        |   +-- UpstreamUnreachable ........ 502 upstream-unreachable
        |   +-- UpstreamBadResponse ........ 502 upstream-bad-response
        |   +-- UpstreamAborted ............ 502 upstream-aborted (the body broke after the head)
        |   +-- UpstreamTimeout ............ 504 upstream-timeout
        +-- Internal ....................... 500 internal (a bug: logged, the call refunded)
        +-- MalformedRequest ............... 400 malformed-request (raw server: not HTTP/1.1)
        +-- RequestTimeout ................. 408 request-timeout (raw server: head too slow)
        +-- UrlTooLong ..................... 414 url-too-long
        +-- HeadersTooLarge ................ 431 headers-too-large (too many, or too many bytes)
        +-- NotImplementedCoding ........... 501 transfer-coding-not-implemented
        +-- UpgradeNotSupported ............ 501 upgrade-not-supported (WebSocket and other
        |                                        Upgrade requests; an h2c offer is ignored)
        +-- MethodNotSupported ............. 501 method-not-supported (CONNECT, TRACE)
        +-- Unavailable .................... 503
            +-- StateUnavailable ........... 503 state-unavailable (Redis unreachable: fail closed)
            +-- AccountStateMissing ........ 503 account-state-missing (no account hash)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from meter import keys
from meter.live_state import Admission
from meter.money import Outcome, seconds_until_next_day
from meter.problems import Problem


class Refusal(Problem):
    """A call the gateway answers itself. ``reason`` is the metric label (= the slug)."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    @property
    def reason(self) -> str:
        return self.slug

    def drop_frames(self) -> None:
        """Drop the frames this refusal (and what it was raised from) passed through, once
        it is caught to be answered. A refusal set on a future (an upstream timeout, a
        failure the pool decided) and raised by awaiting it holds, through its traceback,
        frames that hold that future, which holds the refusal: a cycle, left to the
        cycle collector with everything the frames held (the call, its admission, its
        connection). The answer needs none of the frames."""
        error: BaseException | None = self
        for _ in range(_CHAIN_LIMIT):
            if error is None:
                return
            error.__traceback__ = None
            error = error.__cause__ or error.__context__


_CHAIN_LIMIT = 8  # errors raised from errors: more than any path of ours chains


class BadPath(Refusal):
    status = 400
    slug = "bad-path"
    title = "The request target is not a path the gateway can price unambiguously"


class IncompleteBody(Refusal):
    status = 400
    slug = "incomplete-body"
    title = "The request body ended early"


class RepeatedKey(Refusal):
    status = 400
    slug = "repeated-api-key"
    title = "More than one Authorization or X-API-Key header: send the API key once"


class Unauthenticated(Refusal):
    status = 401
    slug = "unauthenticated"
    title = "Unauthenticated"

    def __init__(self, detail: str | None = None, **extra: object) -> None:
        super().__init__(detail, **extra)
        self.headers["WWW-Authenticate"] = 'Bearer realm="meter"'


class MissingKey(Unauthenticated):
    slug = "missing-api-key"
    title = "No API key: send Authorization: Bearer <key> or X-API-Key"


class MalformedKey(Unauthenticated):
    slug = "malformed-api-key"
    title = "The API key is not a well-formed key (mistyped?)"


class UnknownKey(Unauthenticated):
    slug = "unknown-api-key"
    title = "Unknown API key"


class NoCredit(Refusal):
    status = 402
    slug = "insufficient-credits"
    title = "Not enough credits for this call"


class PaymentMethodRequired(Refusal):
    status = 402
    slug = "payment-method-required"
    title = "Add a payment method to use the API"


class Forbidden(Refusal):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class KeyRevoked(Forbidden):
    slug = "api-key-revoked"
    title = "The API key has been revoked"


class AccountSuspended(Forbidden):
    slug = "account-suspended"
    title = "The billing account is suspended"


class NoRoute(Refusal):
    status = 404
    slug = "no-such-route"
    title = "No such route"


class BodyTooLarge(Refusal):
    status = 413
    slug = "body-too-large"
    title = "The request body is too large"


class DailyLimitReached(Refusal):
    status = 429
    slug = "daily-limit-reached"
    title = "The daily spending limit is reached; calls resume at 00:00 UTC"

    def __init__(self, retry_after: int, detail: str | None = None, **extra: object) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.headers["Retry-After"] = str(retry_after)


class UpstreamFailure(Refusal):
    status = 502
    slug = "upstream-failure"
    title = "The upstream service failed"


class UpstreamUnreachable(UpstreamFailure):
    slug = "upstream-unreachable"
    title = "The upstream service could not be reached"


class UpstreamBadResponse(UpstreamFailure):
    slug = "upstream-bad-response"
    title = "The upstream service sent a malformed response"


class UpstreamAborted(UpstreamFailure):
    slug = "upstream-aborted"
    title = "The upstream response broke off"


class UpstreamTimeout(UpstreamFailure):
    status = 504
    slug = "upstream-timeout"
    title = "The upstream service did not answer in time"


class Internal(Refusal):
    status = 500
    slug = "internal"
    title = "The gateway failed; the call was not charged"


class MalformedRequest(Refusal):
    status = 400
    slug = "malformed-request"
    title = "The request is not valid HTTP/1.1"


class RequestTimeout(Refusal):
    status = 408
    slug = "request-timeout"
    title = "The request head did not arrive in time"


class UrlTooLong(Refusal):
    status = 414
    slug = "url-too-long"
    title = "The request target is too long"


class HeadersTooLarge(Refusal):
    status = 431
    slug = "headers-too-large"
    title = "The request has too many header fields, or too many header bytes"


class NotImplementedCoding(Refusal):
    status = 501
    slug = "transfer-coding-not-implemented"
    title = "Only the chunked transfer coding is accepted"


class UpgradeNotSupported(Refusal):
    status = 501
    slug = "upgrade-not-supported"
    title = "Protocol upgrades (WebSocket) are not relayed: send plain HTTP/1.1 requests"


class MethodNotSupported(Refusal):
    status = 501
    slug = "method-not-supported"
    title = "CONNECT and TRACE are not relayed"


class Unavailable(Refusal):
    status = 503
    slug = "unavailable"
    title = "Service unavailable"


class StateUnavailable(Unavailable):
    slug = "state-unavailable"
    title = "Account state is unreachable; the call was not admitted"


class AccountStateMissing(Unavailable):
    slug = "account-state-missing"
    title = "The billing account has no live state yet; the call was not admitted"


@dataclass(frozen=True, slots=True)
class PortalLinks:
    """The portal pages a 402 sends the customer to, as customers reach them."""

    add_credits_url: str
    add_payment_method_url: str

    @classmethod
    def under(cls, portal_url: str) -> PortalLinks:
        base = portal_url.rstrip("/")
        return cls(base + "/credits", base + "/payment-methods")


# A no-credit refusal's auto-recharge state (the account's "rch", keys.py): its name in
# the problem and what the customer should do.
_RECHARGE = {
    keys.RECHARGE_IN_FLIGHT: (
        "in_flight",
        "An auto-recharge is in progress; retry in a few seconds.",
    ),
    keys.RECHARGE_DECLINED: (
        "declined",
        "Your last auto-recharge was declined; update your payment method.",
    ),
    keys.RECHARGE_PAUSED: (
        "paused",
        "Auto-recharge is paused after repeated failures; update your payment method or"
        " add credits.",
    ),
}
_NO_RECHARGE_DETAIL = "Add credits to make more calls."


def no_credit(admission: Admission, price: int, links: PortalLinks) -> NoCredit:
    # admit.lua answers NO_CREDIT with the account's auto-recharge state in the slot of the
    # usage event id (a refusal for no credit writes no event).
    recharge = _RECHARGE.get(admission.event_id)
    if recharge is None:
        return NoCredit(
            _NO_RECHARGE_DETAIL,
            price=price,
            available=admission.available,
            add_credits_url=links.add_credits_url,
        )
    name, detail = recharge
    return NoCredit(
        detail,
        price=price,
        available=admission.available,
        auto_recharge=name,
        add_credits_url=links.add_credits_url,
    )


def for_outcome(admission: Admission, price: int, now: float, links: PortalLinks) -> Refusal | None:
    """The refusal for an admission reply, or None when the call was admitted."""
    outcome = admission.outcome
    if outcome is Outcome.ADMITTED:
        return None
    if outcome is Outcome.NO_CREDIT:
        return no_credit(admission, price, links)
    if outcome is Outcome.PAYMENT_METHOD_REQUIRED:
        return PaymentMethodRequired(add_payment_method_url=links.add_payment_method_url)
    if outcome is Outcome.DAILY_LIMIT:
        return DailyLimitReached(
            seconds_until_next_day(now), price=price, limit_remaining=admission.limit_remaining
        )
    if outcome is Outcome.SUSPENDED:
        return AccountSuspended()
    if outcome is Outcome.KEY_REVOKED:
        return KeyRevoked()
    if outcome is Outcome.UNKNOWN_KEY:
        return UnknownKey()
    return AccountStateMissing()
