"""The hot path: identify -> price -> admit -> forward -> settle -> record, one call per step.

How money moves for one call:

- ``admit`` debits the route's price (a variable-cost route's maximum) in one
  Redis script call, or the call is refused with what the account has left.
- The call is forwarded only once admitted. Every later outcome is settled
  with at most one ``settle`` script call (the script refuses a second one):
  - the upstream answered 5xx, could not be reached, timed out or sent garbage:
    the whole price back (unless ``refund_upstream_errors`` is off);
  - the request body went over ``max_body_bytes`` while streaming, or the
    client stopped sending it: the whole price back (the upstream never got the call);
  - the gateway itself failed before the response head (a bug, answered 500): the
    whole price back;
  - a variable-cost route: the part of the reserve its units header did not use.
- Settlement happens when the response head arrives, so ``X-Meter-Charged``
  tells the truth; a body that breaks off later is counted, not refunded.

Only ``handle``, ``forward``, ``relay`` and ``refuse`` know aiohttp; the other
steps take plain values, so another server layer can drive them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from gateway import errors, headers
from gateway.admission import Admitter
from gateway.identity import Identifier
from gateway.metrics import GatewayMetrics
from gateway.pricing import PriceTable, Route, split_path, units_cost
from gateway.upstream import Upstream, UpstreamResponse
from meter.live_state import Admission, Call, KeyRecord
from meter.money import utc_day
from meter.problems import PROBLEM_CONTENT_TYPE, render

log = logging.getLogger("gateway.proxy")

UNPRICED = "-"  # route label of calls refused before they were priced


@dataclass(slots=True)
class Metered:
    """An admitted call: what was debited, what the script said, what was given back."""

    call: Call
    route: Route
    admission: Admission
    day: int
    refunded: int = 0

    @property
    def charged(self) -> int:
        return self.call.price - self.refunded

    def headers(self) -> headers.Pairs:
        # A refund raises both the money and (same day) what is left of the limit.
        left = self.admission.limit_remaining
        return headers.metering(
            self.charged,
            self.admission.available + self.refunded,
            None if left is None else left + self.refunded,
        )


class CountedBody:
    """The request body as it arrives, refused once it passes ``limit`` bytes."""

    def __init__(self, chunks: AsyncIterator[bytes], limit: int) -> None:
        self.chunks = chunks
        self.limit = limit
        self.received = 0
        self.failure: errors.Refusal | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await anext(self.chunks)
            except StopAsyncIteration:
                return
            except Exception as exc:
                self.failure = errors.IncompleteBody(type(exc).__name__)
                raise
            self.received += len(chunk)
            if self.received > self.limit:
                self.failure = errors.BodyTooLarge(limit=self.limit)
                raise self.failure
            yield chunk


class Proxy:
    def __init__(
        self,
        *,
        identity: Identifier,
        prices: PriceTable,
        admitter: Admitter,
        upstream: Upstream,
        metrics: GatewayMetrics,
        max_body_bytes: int,
        refund_upstream_errors: bool,
        clock: Callable[[], float],
    ) -> None:
        self.identity = identity
        self.prices = prices
        self.admitter = admitter
        self.upstream = upstream
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.refund_upstream_errors = refund_upstream_errors
        self.clock = clock

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        metered: Metered | None = None
        self.metrics.in_flight.inc()
        try:
            self.check_declared_size(request.content_length)
            key = await self.identity.identify(request.headers)
            route = self.price(request.method, request.raw_path)
            metered = await self.admit(key, route)
            upstream, waited = await self.forward(request, metered)
            try:
                await self.settle(metered, upstream)
                return await self.relay(request, metered, upstream, started, waited)
            finally:
                upstream.close()
        except errors.Refusal as refusal:
            return await self.refuse(refusal, metered, started)
        except Exception:
            log.exception("gateway failure", extra={"path": request.path})
            return await self.refuse(errors.Internal(), metered, started)
        finally:
            self.metrics.in_flight.dec()

    # -- the steps --------------------------------------------------------------------

    def check_declared_size(self, content_length: int | None) -> None:
        if content_length is not None and content_length > self.max_body_bytes:
            raise errors.BodyTooLarge(limit=self.max_body_bytes)

    def price(self, method: str, target: str) -> Route:
        if not target.startswith("/"):
            raise errors.BadPath()
        path = split_path(target.partition("?")[0])
        if path is None:
            raise errors.BadPath()
        route = self.prices.match(method, path)
        if route is None:
            raise errors.NoRoute()
        return route

    async def admit(self, key: KeyRecord, route: Route) -> Metered:
        now = self.clock()
        day = utc_day(now)
        call = Call(key.shard, key.account_id, key.project_id, key.key_id, route.name, route.price)
        admission = await self.admitter.admit(call, day)
        refusal = errors.for_outcome(admission, route.price, now)
        if isinstance(refusal, errors.NoCredit | errors.DailyLimitReached):
            # What is left, for the caller to act on; a revoked key learns nothing more.
            refusal.headers.update(
                headers.metering(0, admission.available, admission.limit_remaining)
            )
        if refusal is not None:
            raise refusal
        return Metered(call, route, admission, day)

    async def forward(
        self, request: web.Request, metered: Metered
    ) -> tuple[UpstreamResponse, float]:
        """Send the call upstream; (response with its head read, seconds waited for it)."""
        to_send = headers.to_upstream(
            request.headers.items(),
            client_ip=request.remote,
            proto=request.scheme,
            host=request.headers.get("Host"),
            call=metered.call,
        )
        body = None
        if request.body_exists:
            body = CountedBody(request.content.iter_any().__aiter__(), self.max_body_bytes)
        sent = time.perf_counter()
        try:
            response = await self.upstream.send(request.method, request.raw_path, to_send, body)
        except errors.UpstreamFailure:
            if body is not None and body.failure is not None:
                raise body.failure from None
            raise
        finally:
            waited = time.perf_counter() - sent
            self.metrics.upstream_latency.observe(waited)
        if body is not None and body.failure is not None:
            response.close()
            raise body.failure
        return response, waited

    async def settle(self, metered: Metered, response: UpstreamResponse) -> None:
        route = metered.route
        if response.status >= 500 and self.refund_upstream_errors:
            await self.give_back(metered, metered.call.price, "upstream_5xx")
        elif route.unit_price is not None:
            assert route.units_header is not None
            cost, valid = units_cost(route, response.header(route.units_header))
            if not valid:
                self.metrics.units_invalid.labels(route.name).inc()
            await self.give_back(metered, metered.call.price - cost, "variable_cost")

    async def relay(
        self,
        request: web.Request,
        metered: Metered,
        upstream: UpstreamResponse,
        started: float,
        waited: float,
    ) -> web.StreamResponse:
        """Stream the upstream's answer to the client, with the metering headers; record."""
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason or None,
            headers=CIMultiDict(headers.to_client(upstream.header_pairs(), metered.headers())),
        )
        outcome = "upstream_failed" if upstream.status >= 500 else "forwarded"
        self.record(metered.route.name, outcome, metered.charged)
        try:
            await response.prepare(request)
            self.metrics.overhead.observe(time.perf_counter() - started - waited)
            async for chunk in upstream.body():
                await response.write(chunk)
        except ConnectionError:
            pass  # the client went away; aiohttp closes the connection
        except Exception as exc:
            # The head is out; the only honest signal left is to cut the connection
            # so the client sees a truncated body rather than a short, complete one.
            if isinstance(exc, errors.UpstreamAborted):
                self.metrics.upstream_aborted.inc()
                log.warning("upstream body broke off", extra={"route": metered.route.name})
            else:
                log.exception("relay failed", extra={"route": metered.route.name})
            if request.transport is not None:
                request.transport.close()
        return response

    async def refuse(
        self, refusal: errors.Refusal, metered: Metered | None, started: float
    ) -> web.Response:
        if metered is not None:
            await self.settle_failed(metered, refusal)
            refusal.headers.update(metered.headers())
        self.metrics.refusals.labels(refusal.reason).inc()
        outcome = "upstream_failed" if isinstance(refusal, errors.UpstreamFailure) else "refused"
        route = metered.route.name if metered is not None else UNPRICED
        self.record(route, outcome, metered.charged if metered is not None else 0)
        response = web.Response(
            status=refusal.status,
            body=render(refusal),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=refusal.headers,
        )
        if isinstance(refusal, errors.BodyTooLarge | errors.IncompleteBody):
            response.force_close()  # do not read (or wait for) the rest of the body
        self.metrics.overhead.observe(time.perf_counter() - started)
        return response

    # -- money back -------------------------------------------------------------------

    async def settle_failed(self, metered: Metered, refusal: errors.Refusal) -> None:
        """An admitted call that ended in a refusal: give the price back when that is the rule."""
        if isinstance(refusal, errors.BodyTooLarge):
            await self.give_back(metered, metered.call.price, "body_too_large")
        elif isinstance(refusal, errors.IncompleteBody):
            await self.give_back(metered, metered.call.price, "incomplete_body")
        elif isinstance(refusal, errors.Internal):
            await self.give_back(metered, metered.call.price, "internal")
        elif isinstance(refusal, errors.UpstreamFailure) and self.refund_upstream_errors:
            await self.give_back(metered, metered.call.price, "upstream_failure")

    async def give_back(self, metered: Metered, amount: int, reason: str) -> None:
        if amount <= 0:
            return
        try:
            applied = await self.admitter.settle(
                metered.call, metered.admission, amount, metered.day
            )
        except errors.StateUnavailable as exc:
            applied = False
            log.error(
                "refund not applied",
                extra={"event_id": metered.admission.event_id, "micros": amount, "error": str(exc)},
            )
        if not applied:
            self.metrics.refund_errors.inc()
            return
        metered.refunded += amount
        self.metrics.refunds.labels(reason).inc()
        self.metrics.refunded_micros.inc(amount)

    def record(self, route: str, outcome: str, charged: int) -> None:
        self.metrics.calls.labels(route, outcome).inc()
        if charged:
            self.metrics.charged_micros.labels(route).inc(charged)
