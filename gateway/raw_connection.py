"""One client connection of the raw server: parse with httptools, queue, answer in order.

See ``raw_server.py`` for how the server layer works as a whole; this module
is the per-connection protocol: httptools callbacks build ``RawRequest``s,
one task answers them in order through the proxy (or ``ops``), limits and
refusals are decided while parsing, deadlines are checked by the server's sweep.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any, cast

import httptools

from gateway import errors, http11, ops
from gateway.headers import Pairs
from gateway.identity import REPEATED_KEY, key_from
from gateway.raw_request import HIGH_WATER, RawRequest

if TYPE_CHECKING:
    from gateway.raw_server import RawServer

log = logging.getLogger("gateway.server")

_MAX_PIPELINE = 16  # requests queued on one connection before reading pauses
_LINGER = 2.0  # seconds a closing connection drops what the client still sends (see close)
_INF = float("inf")
_METHODS = {
    m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "TRACE")
}


_NOT_RELAYED = frozenset({"CONNECT", "TRACE"})


class _Refused(Exception):
    """Raised inside a parser callback; the refusal is on the connection."""


class RawConnection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    # Slots: a thousand connections' state stays compact (measured: fewer cache misses at c1024).
    __slots__ = (
        "authorization",
        "client_ip",
        "content_length",
        "current",
        "drain_waiter",
        "eof",
        "expect",
        "head_deadline",
        "header_bytes",
        "heads",
        "hosts",
        "idle_deadline",
        "in_head",
        "input_closed",
        "io_deadline",
        "lingering",
        "loop",
        "lost",
        "pairs",
        "parser",
        "proxy",
        "queue",
        "read_paused",
        "refusal",
        "refused",
        "repeated_key",
        "server",
        "task",
        "transfer_encoding",
        "transport",
        "unparsed",
        "upgrade",
        "url",
        "wakeup",
        "write_paused",
        "x_api_key",
    )

    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.loop = server.loop
        self.proxy = server.proxy
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = cast(Any, None)
        self.client_ip: str | None = None
        self.queue: collections.deque[RawRequest] = collections.deque()
        self.current: RawRequest | None = None  # the request whose body is being parsed
        self.in_head = False
        self.heads = 0  # request heads begun on this connection
        self.unparsed = 0  # bytes of an unfinished head, as they arrive
        self.url = b""
        self.pairs: Pairs = []
        self.header_bytes = 0
        self.content_length: int | None = None
        self.transfer_encoding: bytes | None = None
        self.upgrade: bytes | None = None
        self.expect = False
        self.authorization: bytes | None = None
        self.x_api_key: bytes | None = None
        self.repeated_key = False  # a second Authorization or X-API-Key header
        self.hosts = 0  # Host header lines of the request head being parsed
        self.refusal: errors.Refusal | None = None
        self.input_closed = False
        self.refused = False  # input was refused: the client may still be sending
        self.eof = False  # the client will send nothing more
        self.lingering = False
        self.lost = False
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None  # answering the queue
        self.wakeup: asyncio.Future[None] | None = None  # the task, waiting for a request
        self.head_deadline = _INF
        self.io_deadline = _INF
        self.idle_deadline = _INF

    # -- connection events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) and peer else None
        server = self.server
        full = len(server.connections) >= server.max_connections
        server.connections.add(self)
        server.metrics.connections.inc()
        self.idle_deadline = server.now + server.client_timeout
        if full:
            server.metrics.http_errors.labels("too_many_connections").inc()
        if full or server.draining:
            self.transport.close()  # connection_lost follows and undoes the counts

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        # The parser holds this protocol's bound methods: a cycle that would leave every
        # closed connection to the cycle collector. Nothing is parsed after the end.
        del self.parser
        server = self.server
        server.connections.discard(self)
        server.metrics.connections.dec()
        if self.current is not None:
            self.current.end_body(ConnectionResetError("the client went away"))
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_exception(ConnectionResetError("the client went away"))
        self._wake()
        if server.draining and not server.connections:
            server.all_closed.set()

    def eof_received(self) -> bool:
        # The client will send nothing more: answer what is queued, then close.
        self.eof = True
        self.input_closed = True
        if self.current is not None:
            self.current.end_body(ConnectionResetError("the client stopped sending"))
            self.current = None
        return bool(self.queue) and not self.lingering

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    async def drained(self) -> None:
        if self.lost:
            raise ConnectionResetError("the client went away")
        self.drain_waiter = self.loop.create_future()
        self.io_deadline = self.server.now + self.server.client_timeout
        try:
            await self.drain_waiter
        finally:
            self.drain_waiter = None
            self.io_deadline = _INF

    def data_received(self, data: bytes) -> None:
        if self.input_closed:
            return
        current = self.current
        if current is not None:
            current.wire += len(data)
        heads = self.heads
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # Only an h2c offer gets here (on_headers_complete refuses other upgrades): it
            # is ignored, and the request and what follows are parsed as HTTP/1.1.
            head = http11.without_upgrade(self.request_line(), self.pairs)
            rest = data[upgrade.args[0] :] if upgrade.args else b""
            self.parser = httptools.HttpRequestParser(self)
            self.data_received(head + rest)
            return
        except httptools.HttpParserError as exc:
            refusal = self.refusal or errors.MalformedRequest(str(exc) or type(exc).__name__)
            self._refuse_input(refusal, "malformed" if self.refusal is None else None)
            return
        if self.in_head:
            # llhttp keeps an unfinished header line itself: count what it holds.
            self.unparsed = self.unparsed + len(data) if heads == self.heads else 0
            if self.unparsed > self.server.max_head:
                self._refuse_input(errors.HeadersTooLarge(), "headers_too_large")
        elif self.current is not None and self.current.wire > self.server.max_wire:
            self._refuse_input(errors.BodyTooLarge(limit=self.server.max_body), None)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.heads += 1
        self.in_head = True
        self.unparsed = 0
        self.url = b""
        self.pairs = []
        self.header_bytes = 0
        self.content_length = None
        self.transfer_encoding = None
        self.upgrade = None
        self.expect = False
        self.authorization = None
        self.x_api_key = None
        self.repeated_key = False
        self.hosts = 0
        self.idle_deadline = _INF
        self.head_deadline = self.server.now + self.server.client_timeout

    def on_url(self, url: bytes) -> None:
        self.url = self.url + url if self.url else url
        if len(self.url) > self.server.max_url:
            self._refuse(errors.UrlTooLong(), "url_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a trailer of a chunked body: dropped (counted in ``wire``)
        pairs = self.pairs
        pairs.append((name, value))
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.server.max_header_bytes:
            self._refuse(errors.HeadersTooLarge(), "headers_too_large")
        if len(pairs) > self.server.max_headers:
            self._refuse(errors.HeadersTooLarge("too many header fields"), "too_many_headers")
        # The few headers this layer or the key lookup needs, noted as they pass.
        size = len(name)
        if size == 4:
            if name.lower() == b"host":
                self.hosts += 1
        elif size == 13:
            if name.lower() == b"authorization":
                self.repeated_key = self.repeated_key or self.authorization is not None
                self.authorization = value
        elif size == 14:
            if name.lower() == b"content-length":
                self.content_length = int(value)  # llhttp has validated it (one, digits only)
        elif size == 9:
            if name.lower() == b"x-api-key":
                self.repeated_key = self.repeated_key or self.x_api_key is not None
                self.x_api_key = value
        elif size == 17:
            if name.lower() == b"transfer-encoding":
                # Two lines are one list (RFC 9110 5.3): "gzip" then "chunked" is "gzip, chunked".
                te = self.transfer_encoding
                self.transfer_encoding = value if te is None else te + b", " + value
        elif size == 7:
            if name.lower() == b"upgrade":
                up = self.upgrade
                self.upgrade = value if up is None else up + b", " + value
        elif size == 6 and name.lower() == b"expect":
            self.expect = value.strip().lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_deadline = _INF
        parser = self.parser
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("latin-1")
        http10 = parser.get_http_version() == "1.0"
        if self.hosts != 1 and not http11.host_count_valid(self.hosts, http10):
            self._refuse(errors.MalformedRequest(http11.ONE_HOST), "malformed")
        if method in _NOT_RELAYED:
            self._refuse(errors.MethodNotSupported(), "unsupported")
        if self.upgrade is not None:
            if not http11.only_h2c(self.upgrade):
                self._refuse(errors.UpgradeNotSupported(), "unsupported")
            if parser.should_upgrade():
                # llhttp would stop at the head and leave the body unparsed: the head is
                # parsed again without its Upgrade (data_received), answered as HTTP/1.1.
                return
        length = self.content_length
        coding = self.transfer_encoding
        if coding is not None:
            # llhttp accepts "gzip, chunked"; we would have to undo gzip to forward it.
            if coding.strip().lower() != b"chunked":
                self._refuse(errors.NotImplementedCoding(), "unsupported")
            length = None
        has_body = coding is not None or bool(length)
        request = RawRequest(
            self,
            method,
            self.url.decode("latin-1"),
            self.pairs,
            REPEATED_KEY if self.repeated_key else key_from(self.authorization, self.x_api_key),
            length,
            has_body,
            # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing: close after.
            parser.should_keep_alive() and not (http10 and coding is not None),
            http10,
            self.expect and has_body and not http10,
        )
        if has_body:
            self.current = request
        queue = self.queue
        queue.append(request)
        if len(queue) == 1:
            # First in line: its admission goes out now, with this pass's others.
            if not request.target.startswith(ops.PREFIX):
                request.in_lane = True  # see lane_admitted
                try:
                    request.early = self.proxy.begin(request, request.lane_admitted)
                except Exception:  # not inside the parser: the task's handle() answers it
                    log.exception("admission not started", extra={"target": request.target[:200]})
                if request.early is not None:
                    return
                request.in_lane = False
            self._kick()
        elif len(queue) > _MAX_PIPELINE:
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        if self.current is not None:
            self.current.feed(body)

    def on_message_complete(self) -> None:
        current = self.current
        if current is not None:
            self.current = None
            current.end_body()

    def request_line(self) -> bytes:
        parser = self.parser
        return b"%s %s HTTP/%s" % (
            parser.get_method(),
            self.url,
            parser.get_http_version().encode(),
        )

    def _refuse(self, refusal: errors.Refusal, reason: str) -> None:
        self.refusal = refusal
        self.server.metrics.http_errors.labels(reason).inc()
        raise _Refused(refusal.slug)

    # -- the lane -----------------------------------------------------------------------------
    #
    # A request whose admission started with its head (``Proxy.begin``) is answered by
    # callbacks while the connection's task sleeps: when the admission's reply is in,
    # ``Proxy.forward_now`` sends the call upstream; when the upstream's answer is in,
    # ``Proxy.relay_now`` writes it to the client. Either may decline (a refusal, a body
    # still coming, a new upstream connection to open, a 5xx, a streamed answer, ...): the
    # request is then handed to the task, whose ``Proxy.handle`` goes on from there. In
    # the plain case a call costs no task wake-up and no coroutine (measured: gateway CPU
    # per call 3-15 % lower at 64 connections). While ``in_lane``, the task leaves it alone.

    def lane_admitted(self, request: RawRequest) -> None:
        if not request.in_lane:
            return  # begin() failed after the admission started: the task has it
        try:
            lane = self.proxy.forward_now(request, request.lane_answered)
        except Exception:
            log.exception("lane failure", extra={"target": request.target[:200]})
            self.proxy.hand_over("error")
            lane = None
        if lane is None:
            self._hand_over(request)
            return
        request.lane = lane

    def lane_answered(self, request: RawRequest) -> None:
        lane = request.lane
        assert lane is not None
        try:
            answered = self.proxy.relay_now(request, lane)
        except Exception:
            log.exception("lane failure", extra={"target": request.target[:200]})
            self.proxy.hand_over("error")
            answered = False
        if not answered:
            self._hand_over(request)  # handle() goes on from the lane (a started answer stays)
            return
        request.in_lane = False
        if self._answered(request):
            if self.queue:
                self._kick()  # pipelined behind it: the task answers those
            else:
                self._idle()

    def _hand_over(self, request: RawRequest) -> None:
        request.in_lane = False
        self._kick()

    # -- answering ----------------------------------------------------------------------------

    def _kick(self) -> None:
        """A request was queued on an empty queue: wake the answering task, or start it."""
        if self.wakeup is not None:
            self._wake()
        else:
            self.task = self.loop.create_task(self._serve())

    def _wake(self) -> None:
        wakeup = self.wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _serve(self) -> None:
        """Answer the queued requests in order, then wait for more: one task per connection
        (a task per keep-alive call cost ~1.5 us more than waking this one)."""
        queue = self.queue
        proxy = self.proxy
        while True:
            while queue:
                request = queue[0]
                if request.in_lane:  # the lane answers it, and wakes us if it needs to
                    if self.lost:
                        return
                    break
                try:
                    if request.refusal is not None:
                        await request.refuse(request.refusal)
                    elif request.target.startswith(ops.PREFIX):
                        status, pairs, body = await ops.answer(
                            self.server.runtime, request.method, request.target
                        )
                        await request.respond(status, "", pairs, body)
                    else:
                        await proxy.handle(request)
                    if not request.started:
                        raise RuntimeError("the proxy did not answer")
                except Exception:
                    log.exception("raw server failure", extra={"target": request.target[:200]})
                    if request.started:
                        self.abort()
                    else:
                        await request.refuse(errors.Internal())
                if not self._answered(request):
                    return
            else:
                if not self._idle():
                    return
            self.wakeup = self.loop.create_future()
            try:
                await self.wakeup  # a request (``_kick``) or the connection's end
            finally:
                self.wakeup = None

    def _answered(self, request: RawRequest) -> bool:
        """The first request in line is answered: True to go on with the connection."""
        self.queue.popleft()
        if self.lost:
            return False
        if not request.keep_alive:
            self.close()
            return False
        if self.read_paused:
            self.update_reading()
        return True

    def _idle(self) -> bool:
        """Nothing is queued: True to wait for the next request, False if the connection
        is done (closed, or closing once what is buffered is written)."""
        if self.lost:
            return False
        if self.input_closed or self.server.draining:
            self.close()
            return False
        if not self.in_head:
            self.idle_deadline = self.server.now + self.server.keepalive_timeout
        return True

    def _refuse_input(self, refusal: errors.Refusal, reason: str | None) -> None:
        """Read no more; a body in progress fails, a broken head is answered in turn."""
        if reason is not None:
            self.server.metrics.http_errors.labels(reason).inc()
        self.refused = True
        self._close_input()
        self.in_head = False
        self.head_deadline = _INF
        current = self.current
        if current is not None:
            self.current = None
            current.end_body(refusal)
            return
        marker = RawRequest(self, "GET", "", [], None, None, False, False, False, False)
        marker.refusal = refusal
        self.queue.append(marker)
        if len(self.queue) == 1:
            self._kick()

    def _close_input(self) -> None:
        self.input_closed = True
        if not self.lost and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def update_reading(self) -> None:
        if self.lost or self.input_closed:
            return
        current = self.current
        pause = len(self.queue) > _MAX_PIPELINE or (
            current is not None and current.buffered > HIGH_WATER
        )
        if pause and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        elif not pause and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Close once what is buffered is written.

        A client may still be sending (a body we did not read, input we refused):
        closing a socket with unread bytes makes the kernel send a reset, which can
        destroy the answer before the client reads it. So, as nginx's lingering
        close: send FIN now, read and drop what still comes, and close at the
        client's EOF or after ``_LINGER`` seconds.
        """
        if self.lost or self.lingering:
            return
        self.queue.clear()  # pipelined requests behind a closing one are not answered
        unread = self.refused or self.current is not None or self.in_head
        if self.eof or not unread or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.lingering = True
        self.input_closed = True
        self.current = None
        self.in_head = False
        self.head_deadline = _INF
        self.transport.write_eof()
        self.idle_deadline = self.loop.time() + _LINGER
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Cut the connection now; ``lost`` at once, so nothing more is written or served."""
        if not self.lost:
            self.lost = True
            self.transport.abort()  # connection_lost follows and cleans up

    # -- deadlines (swept by the server) ----------------------------------------------------------

    def sweep(self, now: float) -> None:
        if self.head_deadline <= now:
            self.server.metrics.http_errors.labels("timeout").inc()
            self.head_deadline = _INF
            self._refuse_input(errors.RequestTimeout(), None)
        elif self.io_deadline <= now:
            self.io_deadline = _INF
            self.server.metrics.http_errors.labels("timeout").inc()
            if self.drain_waiter is not None and not self.drain_waiter.done():
                self.drain_waiter.set_exception(ConnectionResetError("the client is not reading"))
                self.abort()
            elif self.queue:
                waiter = self.queue[0].waiter
                if waiter is not None and not waiter.done():
                    waiter.set_exception(TimeoutError("no request body bytes in time"))
        elif self.idle_deadline <= now and not self.queue and not self.in_head:
            self.idle_deadline = _INF
            self.transport.close()

    def close_if_idle(self) -> None:
        if not self.queue and not self.in_head and not self.lost:
            self.transport.close()
