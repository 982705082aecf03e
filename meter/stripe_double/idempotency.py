"""Stripe's ``Idempotency-Key`` for POSTs, which localstripe ignores.

How it works: a key is scoped by the ``Authorization`` header. The first request
claims it (in flight) and, once the endpoint has begun (``ENDPOINT_BEGAN``, set
innermost, after localstripe's auth), its status and body are saved for 24 hours,
errors and 500s included. A later request with the key gets the saved answer with
``Idempotent-Replayed: true`` if method, path and parameters match, a 400
``idempotency_error`` if not, and a 409 while the first is still in flight.
Answers given before the endpoint began (bad key, a fault's ``error_before``) are
not saved, as Stripe saves nothing for requests that never reached an endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from meter.stripe_double.errors import stripe_error

TTL_SECONDS = 24 * 3600
ENDPOINT_BEGAN = "stripe_double.endpoint_began"

Fingerprint = tuple[str, str, tuple[tuple[str, str], ...] | bytes]


@dataclass(frozen=True, slots=True)
class Saved:
    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class InFlight:
    pass


@dataclass(frozen=True, slots=True)
class Mismatch:
    first: Fingerprint


@dataclass(slots=True)
class _Entry:
    fingerprint: Fingerprint
    at: float
    saved: Saved | None = None  # None while the first request runs


@dataclass(slots=True)
class IdempotencyCache:
    entries: dict[tuple[str, str], _Entry] = field(default_factory=dict)

    def claim(
        self, scope: str, key: str, fingerprint: Fingerprint, now: float
    ) -> Saved | InFlight | Mismatch | None:
        """None: the key is now this request's; else what to answer instead."""
        self._prune(now)
        entry = self.entries.get((scope, key))
        if entry is None:
            self.entries[(scope, key)] = _Entry(fingerprint, now)
            return None
        if entry.fingerprint != fingerprint:
            return Mismatch(entry.fingerprint)
        return entry.saved or InFlight()

    def settle(self, scope: str, key: str, saved: Saved | None) -> None:
        """Save the first answer, or (None) give the key up as if never seen."""
        if saved is None:
            self.entries.pop((scope, key), None)
        elif entry := self.entries.get((scope, key)):  # gone if reset meanwhile
            entry.saved = saved

    def clear(self) -> None:
        self.entries.clear()

    def _prune(self, now: float) -> None:
        # Linear, but the double holds a test run's keys at most.
        for k in [k for k, e in self.entries.items() if now - e.at >= TTL_SECONDS]:
            del self.entries[k]


async def fingerprint(request: web.Request) -> Fingerprint:
    if request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        params: tuple[tuple[str, str], ...] | bytes = tuple(
            sorted((k, str(v)) for k, v in form.items())
        )
    else:
        params = await request.read()
    return (request.method, request.path, params)


def middleware(
    cache: IdempotencyCache, enabled: Callable[[], bool], clock: Callable[[], float] = time.time
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def idempotency(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key or not enabled():
            return await handler(request)
        scope = request.headers.get("Authorization", "")
        mine = await fingerprint(request)
        verdict = cache.claim(scope, key, mine, clock())
        if isinstance(verdict, Saved):
            return web.Response(
                status=verdict.status,
                body=verdict.body,
                content_type=verdict.content_type,
                headers={"Idempotency-Key": key, "Idempotent-Replayed": "true"},
            )
        if isinstance(verdict, InFlight):
            return stripe_error(
                409,
                "idempotency_error",
                "There is currently another in-progress request using this "
                "Idempotency-Key, please try again later.",
            )
        if isinstance(verdict, Mismatch):
            return stripe_error(400, "idempotency_error", _mismatch_message(key, verdict, mine))
        saved: Saved | None = None
        try:
            response = await handler(request)
            if request.get(ENDPOINT_BEGAN) and isinstance(response, web.Response):
                body = response.body if isinstance(response.body, bytes) else b""
                saved = Saved(response.status, body, response.content_type)
            response.headers["Idempotency-Key"] = key
            return response
        finally:
            cache.settle(scope, key, saved)

    return idempotency


def _mismatch_message(key: str, verdict: Mismatch, mine: Fingerprint) -> str:
    first = f"{verdict.first[0]} {verdict.first[1]}"
    if first != f"{mine[0]} {mine[1]}":
        return (
            "Keys for idempotent requests can only be used for the same endpoint they were "
            f"first used for ('{first}' vs '{mine[0]} {mine[1]}'). Try using a key other "
            f"than '{key}' if you meant to execute a different request."
        )
    return (
        "Keys for idempotent requests can only be used with the same parameters they were "
        f"first used with. Try using a key other than '{key}' if you meant to execute a "
        "different request."
    )


@web.middleware
async def mark_endpoint(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Innermost, after localstripe's auth: the endpoint has begun."""
    request[ENDPOINT_BEGAN] = True
    return await handler(request)
