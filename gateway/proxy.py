"""The hot path: identify -> price -> admit -> forward -> settle -> relay, one call per step.

How money moves for one call:

- ``admit`` debits the route's price (a variable-cost route's maximum) in one
  Redis script call, or the call is refused with what the account has left.
- The call is forwarded only once admitted. Every later outcome is settled
  with at most one ``settle`` script call (the script refuses a second one):
  - the upstream answered 5xx, could not be reached, timed out or sent garbage:
    the whole price back (unless ``refund_upstream_errors`` is off);
  - the request body went over ``max_body_bytes`` while streaming, was not valid
    chunked coding, or the client stopped sending it: the whole price back (the
    upstream never got the whole call);
  - the gateway itself failed before the response head (a bug, answered 500): the
    whole price back;
  - a variable-cost route: the part of the reserve its units did not use.
- Settlement happens when the response head arrives, so ``X-Meter-Charged``
  tells the truth; a body that breaks off later, or a client that goes away
  once the call reached the upstream, is counted, not refunded.
- Except for a variable-cost route whose units come in a trailer or the body
  (``Route.settles_late``): its body is relayed chunk by chunk as it comes,
  read on the way (``UsageMeter``), and the call settled once after its end. A
  body that all came with the head is settled before the answer goes out; else
  the head shows the reserve, and the settled values follow as trailers if the
  client accepts them (``TE: trailers``). A body that breaks off, or whose
  client goes away, settles from the units seen by then; any not seen: the
  reserve is kept (``max_price``).
- A refund Redis cannot take then (away, or too slow) goes to ``RefundRetry``,
  which tries it again until it lands; the answer shows the charge as it stood.

The proxy knows no server layer: it is handed an ``Exchange`` (the request as
plain values, and the way back to the client), which the HTTP/1.1 server
(``raw_server.py``, ``raw_request.py``) implements.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

from gateway import errors, headers
from gateway.admission import Admitter, Started
from gateway.headers import Pairs
from gateway.identity import Identifier
from gateway.metrics import GatewayMetrics
from gateway.price_tables import PriceTables
from gateway.pricing import PriceTable, Reading, Route, RouteCache, Unpriceable, usage_cost
from gateway.refund_retry import RefundRetry
from gateway.upstream import Sent, Upstream, UpstreamResponse
from gateway.usage_meter import UsageMeter
from meter.admission_batcher import Listener
from meter.live_state import Admission, Call, KeyCall, KeyRecord
from meter.money import Outcome, utc_day
from meter.problems import PROBLEM_CONTENT_TYPE, render

log = logging.getLogger("gateway.proxy")

UNPRICED = "-"  # route label of calls refused before they were priced
ADMITTED = Outcome.ADMITTED
_PROBLEM = (b"Content-Type", PROBLEM_CONTENT_TYPE.encode())


class Exchange(Protocol):
    """One request, as plain values, and the way back to its client."""

    method: str
    target: str  # path?query as sent, still percent-encoded; ``Proxy.price`` makes it the
    # target to forward (canonical path, no fragment)
    headers: Pairs  # as received
    api_key: str | None  # identity.presented_key(headers)
    client_ip: str | None
    scheme: bytes  # b"http" or b"https": X-Forwarded-Proto
    content_length: int | None  # declared; None when chunked or absent
    has_body: bool
    early: Early | None  # the admission ``Proxy.begin`` started when the head was parsed
    lane: Lane | None  # sent upstream by ``Proxy.forward_now``: ``handle`` takes it from there

    def body(self) -> AsyncIterator[bytes]:
        """The request body as it arrives (answers ``Expect: 100-continue`` on first read)."""
        ...

    async def respond(
        self,
        status: int,
        reason: str,
        headers: Pairs,
        body: bytes,
        *,
        length: int | None = None,
        close: bool = False,
    ) -> None:
        """A whole response in one write. ``length``: a HEAD's or 304's declared length."""
        ...

    async def start(self, status: int, reason: str, headers: Pairs, length: int | None) -> None:
        """The response head; the body follows by ``write`` (``length`` None: chunked)."""
        ...

    async def write(self, chunk: bytes) -> None:
        """Raises ConnectionError when the client is gone; waits while it is slow."""
        ...

    def accepts_trailers(self) -> bool:
        """Whether a streamed answer (``start`` with no length) can end in trailers."""
        ...

    async def finish(self, trailers: Pairs | None = None) -> None:
        """The end of a streamed answer; ``trailers`` when ``accepts_trailers``."""
        ...

    def abort(self) -> None:
        """Cut the connection: the client sees a truncated body, not a short complete one."""
        ...


class LaneExchange(Exchange, Protocol):
    """An exchange the lane can answer without awaiting (the raw server's ``RawRequest``)."""

    def whole_body(self) -> bytes | None:
        """The body if it has all arrived (``b""``: none), else None; left in place."""
        ...

    def respond_now(
        self,
        status: int,
        reason: str,
        headers: Pairs,
        body: bytes,
        *,
        length: int | None = None,
        close: bool = False,
    ) -> None:
        """``respond`` in one write that does not wait."""
        ...


@dataclass(slots=True)
class Early:
    """An admission on its way: what was sent, for which route, on which day."""

    call: Call
    route: Route
    now: float
    day: int
    started: Started


@dataclass(slots=True)
class Lane:
    """An admitted call ``forward_now`` sent upstream: what was debited, the call in
    flight, and when it was sent."""

    metered: Metered
    sent: Sent
    at: float


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

    def headers(self) -> Pairs:
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
            except errors.MalformedRequest as exc:  # the server layer's parser refused it
                self.failure = exc
                raise
            except Exception as exc:
                self.failure = errors.IncompleteBody(str(exc) or type(exc).__name__)
                raise
            self.received += len(chunk)
            if self.received > self.limit:
                self.failure = errors.BodyTooLarge(limit=self.limit)
                raise self.failure
            yield chunk


def _call(key: KeyRecord, route: Route) -> Call:
    """What is admitted: built for each call (0.4 us). A cache of them per key and route
    was as fast, but its named tuples stayed tracked by Python's collector: with many
    keys, its churn alone set off collections of everything it held (see identity.py)."""
    return Call(key.shard, key.account_id, key.project_id, key.key_id, route.name, route.price)


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
        refund_retry: RefundRetry,
        links: errors.PortalLinks,
        price_tables: PriceTables,
    ) -> None:
        self.identity = identity
        self.prices = prices
        self.price_tables = price_tables  # plans' prices, for settling calls admitted at them
        self.routes = RouteCache(prices)
        self.admitter = admitter
        self.upstream = upstream
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.refund_upstream_errors = refund_upstream_errors
        self.clock = clock
        self.refund_retry = refund_retry  # where a refund goes when Redis is away
        self.links = links  # built once: the 402s' portal links

    async def handle(self, exchange: Exchange) -> None:
        early = exchange.early
        # The overhead metric counts from the admission started with the head, if it was.
        started = perf_counter() if early is None else early.started[1]
        metered: Metered | None = None
        in_flight = self.metrics.in_flight
        in_flight.value += 1
        try:
            lane = exchange.lane
            if lane is not None:  # the lane sent it and handed it over: its answer is not plain
                metered = lane.metered
                upstream, waited = await self.resume(lane)
            else:
                if early is None:
                    self.check_declared_size(exchange.content_length)
                    key = self.identity.cached(exchange.api_key)  # the hot case: no await
                    if key is not None:
                        early = self.start(key, self.price(exchange))
                if early is not None:
                    metered = await self.admitted(early)
                else:
                    metered = await self.admit_unresolved(exchange)
                upstream, waited = await self.forward(exchange, metered)
            try:
                if metered.route.settles_late and not self.refunds_at_head(upstream):
                    await self.relay_settling(exchange, metered, upstream, started, waited)
                else:
                    if self.to_settle(metered, upstream) is not None:
                        await self.settle(metered, upstream)
                    await self.relay(exchange, metered, upstream, started, waited)
            finally:
                upstream.close()
        except errors.Refusal as refusal:
            refusal.drop_frames()
            await self.refuse(exchange, refusal, metered, started)
        except Exception:
            log.exception("gateway failure", extra={"target": exchange.target[:200]})
            await self.refuse(exchange, errors.Internal(), metered, started)
        finally:
            in_flight.value -= 1

    def begin(self, exchange: Exchange, listener: Listener | None = None) -> Early | None:
        """Start the admission of a call as soon as its head is parsed, before the task
        that answers it runs (the raw server calls this): the admissions of one loop pass
        then go to Redis in that same pass, not the next one. Only the hot case starts:
        a key the cache holds, a priced route, a declared size within the limit; for
        anything else (None) ``handle`` does every step itself, refusals included.
        ``listener`` is called as soon as the admission's reply is in."""
        try:
            self.check_declared_size(exchange.content_length)
            route = self.price(exchange)
        except errors.Refusal:
            return None  # handle() refuses it, in its turn
        key = self.identity.cached(exchange.api_key)
        return None if key is None else self.start(key, route, listener)

    # -- the lane: the plain case, answered in callbacks ---------------------------------
    #
    # The raw server runs a call whose admission ``begin`` started through two callbacks
    # instead of its connection's task: ``forward_now`` when the admission's reply is in,
    # ``relay_now`` when the upstream's answer is. Each does its step only in the plain
    # case and otherwise does nothing and returns None / False: the task then runs
    # ``handle``, which goes on from where the lane stopped (``Exchange.lane``). Same steps,
    # same order, same money; no task wake-ups, futures or coroutines in between.

    def forward_now(self, exchange: LaneExchange, then: Callable[[], object]) -> Lane | None:
        """The admission is in: an admitted call whose body has all arrived goes upstream
        now on an idle connection, or waits for one when the pool is full; ``then`` is
        called when its answer (or failure) is in, or when it is the task's to open a new
        connection for. None (nothing done) for anything else."""
        early = exchange.early
        assert early is not None
        admission = self.admitter.arrived(early.started)
        if admission is None or not admission.admitted:
            self.hand_over("refused" if admission is not None else "redis_failed")
            return None
        body = exchange.whole_body()
        if body is None:
            self.hand_over("request_body")
            return None
        metered = self.metered(early.call, early.route, admission, early.now, early.day)
        to_send = self.upstream_headers(exchange, metered)
        at = perf_counter()
        sent = self.upstream.send_now(
            exchange.method, exchange.target, to_send, exchange.content_length, body, then
        )
        self.admitter.replied(early.started)
        self.metrics.in_flight.value += 1
        return Lane(metered, sent, at)

    def relay_now(self, exchange: LaneExchange, lane: Lane) -> bool:
        """The upstream answered a call ``forward_now`` sent: a whole answer below 500 to a
        fixed-price call goes to the client now. False (nothing done) for anything else."""
        self.metrics.in_flight.value -= 1  # handle() counts it again if it takes over
        sent = lane.sent
        upstream: UpstreamResponse | None = sent.response()
        if upstream is None:
            self.hand_over("new_connection" if sent.connecting else "upstream_failed")
            return False
        metered = lane.metered
        why = self.to_settle(metered, upstream)
        if why is not None:
            self.hand_over(why)
            return False
        body = upstream.complete_body()
        if body is None:
            self.hand_over("response_streamed")
            return False
        waited = perf_counter() - lane.at
        self.metrics.upstream_latency.observe(waited)
        out = self.answer(metered, upstream)
        exchange.respond_now(
            upstream.status, upstream.reason, out, body, length=upstream.content_length
        )
        early = exchange.early
        assert early is not None
        self.metrics.overhead.observe(perf_counter() - early.started[1] - waited)
        # Released only here: after a failure above, handle() still has the response.
        upstream.close()
        self.metrics.lane_answered.inc()
        return True

    def hand_over(self, why: str) -> None:
        """The lane declines a call, for ``why``: the connection's task takes it on."""
        self.metrics.lane.labels(why).inc()

    # -- the steps --------------------------------------------------------------------

    def check_declared_size(self, content_length: int | None) -> None:
        if content_length is not None and content_length > self.max_body_bytes:
            raise errors.BodyTooLarge(limit=self.max_body_bytes)

    def price(self, exchange: Exchange) -> Route:
        """The route of the call; its target becomes the one to forward (canonical path,
        no fragment), so that the upstream routes exactly what was priced."""
        try:
            priced = self.routes.lookup(exchange.method, exchange.target)
        except Unpriceable as exc:
            raise errors.BadPath(str(exc)) from None
        exchange.target = priced.target
        if priced.route is None:
            raise errors.NoRoute()
        return priced.route

    def start(self, key: KeyRecord, route: Route, listener: Listener | None = None) -> Early:
        now = self.clock()
        day = utc_day(now)
        call = _call(key, route)
        return Early(call, route, now, day, self.admitter.start(call, day, listener))

    async def admitted(self, early: Early) -> Metered:
        admission = await self.admitter.wait(early.started)
        return self.metered(early.call, early.route, admission, early.now, early.day)

    async def admit_unresolved(self, exchange: Exchange) -> Metered:
        """The admission of a key the cache does not hold: looked up first, or, on a single
        Redis, resolved by the admission script in the same step (no extra round trip)."""
        if not self.admitter.resolves_keys:
            known = await self.identity.identify(exchange.api_key)
            route = self.price(exchange)
            return await self.admitted(self.start(known, route))
        try:
            route = self.price(exchange)
        except errors.Refusal:
            await self.identity.identify(exchange.api_key)  # an unknown caller learns no routes
            raise
        digest = self.identity.unresolved(exchange.api_key)
        now = self.clock()
        day = utc_day(now)
        call = KeyCall(digest, route.name, route.price)
        admission = await self.admitter.wait(self.admitter.start(call, day))
        key = admission.key
        self.identity.learn(digest, key)
        if key is None:
            raise errors.UnknownKey()
        return self.metered(_call(key, route), route, admission, now, day)

    def metered(
        self,
        call: Call,
        route: Route,
        admission: Admission,
        now: float,
        day: int,
    ) -> Metered:
        """The admitted call, or the refusal that says why not and what is left. A call its
        account's price table priced was debited that price (``Admission.price``)."""
        price = admission.price
        if admission.outcome is ADMITTED:
            if price is not None:
                call = call._replace(price=price)
            return Metered(call, route, admission, day)
        # no local holds it: no cycle through this frame
        raise _refusal(admission, route.price if price is None else price, now, self.links)

    async def forward(self, exchange: Exchange, metered: Metered) -> tuple[UpstreamResponse, float]:
        """Send the call upstream; (response with its head read, seconds waited for it)."""
        to_send = self.upstream_headers(exchange, metered)
        body: CountedBody | None = None
        length = exchange.content_length
        if exchange.has_body:
            body = CountedBody(exchange.body(), self.max_body_bytes)
        sent = perf_counter()
        try:
            response = await self.upstream.send(
                exchange.method, exchange.target, to_send, body, length
            )
        except Exception:
            if body is not None and body.failure is not None:
                raise body.failure from None
            raise
        finally:
            waited = perf_counter() - sent
            self.metrics.upstream_latency.observe(waited)
        if body is not None and body.failure is not None:
            response.close()
            raise body.failure
        return response, waited

    def upstream_headers(self, exchange: Exchange, metered: Metered) -> Pairs:
        """The request headers the upstream gets (``forward`` and the lane's ``forward_now``)."""
        return headers.to_upstream(
            exchange.headers,
            client_ip=exchange.client_ip,
            proto=exchange.scheme,
            call=metered.call,
            plain_body=metered.route.reads_body,
        )

    async def resume(self, lane: Lane) -> tuple[UpstreamResponse, float]:
        """``forward`` of a call the lane sent: the response, seconds waited for it."""
        try:
            response = await self.upstream.resume(lane.sent)
        finally:
            waited = perf_counter() - lane.at
            self.metrics.upstream_latency.observe(waited)
        return response, waited

    def to_settle(self, metered: Metered, response: UpstreamResponse) -> str | None:
        """Why this answer may change what the call costs (``settle`` decides), or None:
        a plain answer keeps the price that was debited."""
        if response.status >= 500:
            return "upstream_5xx"
        if metered.route.variable:
            return "variable_cost"
        return None

    def refunds_at_head(self, response: UpstreamResponse) -> bool:
        return response.status >= 500 and self.refund_upstream_errors

    async def settle(self, metered: Metered, response: UpstreamResponse) -> None:
        """Settle at the response head: an upstream error, or units from headers only."""
        route = metered.route
        if self.refunds_at_head(response):
            await self.give_back(metered, metered.call.price, "upstream_5xx")
        elif route.variable:
            usage = UsageMeter(route.units, response.header_pairs())
            await self.settle_units(metered, usage.end([]), usage.source)

    async def settle_units(self, metered: Metered, readings: list[Reading], source: str) -> None:
        """A variable-cost call's settlement: the reserve less what its units cost, back
        (at its account's price table's prices, when they priced it)."""
        route = metered.route
        table = metered.admission.price_table
        if table is not None:
            route = await self.price_tables.route(metered.call.shard, table, route)
        cost, unknown = usage_cost(route, readings)
        if unknown is None:
            self.metrics.settlements.labels(route.name, source).inc()
            for unit, units in zip(route.units, readings, strict=True):
                self.metrics.units.labels(route.name, unit.kind).inc(units)
        else:
            self.metrics.units_missing.labels(route.name, unknown).inc()
            if any(
                isinstance(r, str) and u.source == "header"
                for u, r in zip(route.units, readings, strict=True)
            ):
                self.metrics.units_invalid.labels(route.name).inc()
        await self.give_back(metered, metered.call.price - cost, "variable_cost")

    async def relay(
        self,
        exchange: Exchange,
        metered: Metered,
        upstream: UpstreamResponse,
        started: float,
        waited: float,
    ) -> None:
        """Send the upstream's answer to the client, with the metering headers; record."""
        status = upstream.status
        out = self.answer(metered, upstream)
        try:
            body = upstream.complete_body()
            if body is not None:  # it all came with the head: one write
                await exchange.respond(
                    status, upstream.reason, out, body, length=upstream.content_length
                )
                self.metrics.overhead.observe(perf_counter() - started - waited)
                return
            await exchange.start(status, upstream.reason, out, upstream.content_length)
            self.metrics.overhead.observe(perf_counter() - started - waited)
            async for chunk in upstream.body():
                await exchange.write(chunk)
            await exchange.finish()
        except ConnectionError:
            pass  # the client went away; the server layer closes the connection
        except Exception as exc:
            # The head is out; the only honest signal left is to cut the connection
            # so the client sees a truncated body rather than a short, complete one.
            self.relay_failed(metered, exc)
            exchange.abort()

    async def relay_settling(
        self,
        exchange: Exchange,
        metered: Metered,
        upstream: UpstreamResponse,
        started: float,
        waited: float,
    ) -> None:
        """``relay`` for a call whose units come after the head (a trailer, the body): the
        body goes on as it comes, read on the way; the call is settled once, at its end."""
        usage = UsageMeter(metered.route.units, upstream.header_pairs())
        status = upstream.status
        body = upstream.complete_body()
        if body is not None:  # it all came with the head: settled before the answer
            usage.feed(body)
            await self.settle_units(metered, usage.end(upstream.trailer_pairs()), usage.source)
            out = self.answer(metered, upstream)
            with contextlib.suppress(ConnectionError):
                await exchange.respond(
                    status, upstream.reason, out, body, length=upstream.content_length
                )
            self.metrics.overhead.observe(perf_counter() - started - waited)
            return
        trailing = exchange.accepts_trailers()
        out = headers.to_client(upstream.header_pairs(), metered.headers())
        if trailing:
            out += headers.SETTLED_IN_TRAILER
            out.append(headers.declare_trailers(metered.headers()))
        else:
            out += headers.SETTLED_LATER
        readings: list[Reading] | None = None
        settled = False
        try:
            # With trailers to send, chunked whatever the upstream's framing.
            length = None if trailing else upstream.content_length
            await exchange.start(status, upstream.reason, out, length)
            self.metrics.overhead.observe(perf_counter() - started - waited)
            feed, write = usage.feed, exchange.write
            async for chunk in upstream.body():
                feed(chunk)
                await write(chunk)
            readings = usage.end(upstream.trailer_pairs())
            if trailing:  # the settled values go in the trailers: settle first
                settled = True
                await self.settle_units(metered, readings, usage.source)
                await exchange.finish(metered.headers())
            else:  # the client has it all before the settle call (below)
                await exchange.finish()
        except ConnectionError:
            pass  # the client went away; the server layer closes the connection
        except Exception as exc:
            self.relay_failed(metered, exc)
            exchange.abort()
        finally:
            # Settled here at the end of a body without trailers, or when it broke off
            # (upstream, client): then the units read so far count, the rest keep the reserve.
            if not settled:
                if readings is None:
                    readings = usage.cut()
                await self.settle_units(metered, readings, usage.source)
            self.record_answered(metered, status)

    def relay_failed(self, metered: Metered, exc: Exception) -> None:
        if isinstance(exc, errors.UpstreamAborted):
            self.metrics.upstream_aborted.inc()
            log.warning("upstream body broke off", extra={"route": metered.route.name})
        else:
            log.exception("relay failed", extra={"route": metered.route.name})

    def answer(self, metered: Metered, upstream: UpstreamResponse) -> Pairs:
        """The headers of the answer to the client (the metering ones added); recorded."""
        self.record_answered(metered, upstream.status)
        return headers.to_client(upstream.header_pairs(), metered.headers())

    def record_answered(self, metered: Metered, status: int) -> None:
        outcome = "upstream_failed" if status >= 500 else "forwarded"
        self.record(metered.route.name, outcome, metered.charged)

    async def refuse(
        self,
        exchange: Exchange,
        refusal: errors.Refusal,
        metered: Metered | None,
        started: float,
    ) -> None:
        out = [_PROBLEM, *headers.raw(refusal.headers.items())]
        if metered is not None:
            await self.settle_failed(metered, refusal)
            out += metered.headers()
        self.metrics.refusals.labels(refusal.reason).inc()
        outcome = "upstream_failed" if isinstance(refusal, errors.UpstreamFailure) else "refused"
        route = metered.route.name if metered is not None else UNPRICED
        self.record(route, outcome, metered.charged if metered is not None else 0)
        # Do not read (or wait for) the rest of a body that was refused while streaming.
        close = isinstance(
            refusal, errors.BodyTooLarge | errors.IncompleteBody | errors.MalformedRequest
        )
        with contextlib.suppress(ConnectionError):
            await exchange.respond(refusal.status, "", out, render(refusal), close=close)
        self.metrics.overhead.observe(perf_counter() - started)

    # -- money back -------------------------------------------------------------------

    async def settle_failed(self, metered: Metered, refusal: errors.Refusal) -> None:
        """An admitted call that ended in a refusal: give the price back when that is the rule."""
        if isinstance(refusal, errors.BodyTooLarge):
            await self.give_back(metered, metered.call.price, "body_too_large")
        elif isinstance(refusal, errors.IncompleteBody):
            await self.give_back(metered, metered.call.price, "incomplete_body")
        elif isinstance(refusal, errors.MalformedRequest):  # a broken chunked body
            await self.give_back(metered, metered.call.price, "malformed_body")
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
            # Charged as it stands in this answer; the refund is tried again until applied.
            log.warning(
                "refund deferred",
                extra={"event_id": metered.admission.event_id, "micros": amount, "error": str(exc)},
            )
            self.metrics.refund_errors.inc()
            self.refund_retry.add(metered.call, metered.admission, amount, metered.day, reason)
            return
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


def _refusal(
    admission: Admission, price: int, now: float, links: errors.PortalLinks
) -> errors.Refusal:
    """Why an admission was refused, with what is left for the caller to act on (a revoked
    key learns nothing more)."""
    refusal = errors.for_outcome(admission, price, now, links)
    assert refusal is not None
    if isinstance(refusal, errors.NoCredit | errors.DailyLimitReached):
        refusal.headers.update(
            headers.text(headers.metering(0, admission.available, admission.limit_remaining))
        )
    return refusal
