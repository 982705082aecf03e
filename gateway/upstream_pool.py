"""A lean keep-alive HTTP/1.1 client pool to the one upstream: the ``Upstream``.

Why by hand: aiohttp's ``ClientSession`` costs several times this pool's CPU
per call (``loadtests/README.md``); this pool costs a fraction of that as it does
only what one proxy hop needs: one host, HTTP/1.1, keep-alive, httptools
(llhttp) parsing, no cookies, redirects, decompression or URL objects.

How this works
--------------
* Each connection is an ``asyncio.Protocol`` (``UpstreamConnection``, in
  ``upstream_connection.py``) that runs one exchange at a time (no pipelining
  to the upstream). ``send`` takes an idle connection (most recently used
  first), opens one while fewer than ``pool_size`` are open, or queues for one
  (waiters are served in order).
* The request head is built as one bytes object and written at once; a body is
  streamed as it comes from the client: ``Content-Length`` when the length is
  known, chunked otherwise. Writing waits while the upstream's socket buffer is
  full (``pause_writing``/``resume_writing``). ``send_now`` is the synchronous
  twin for a call whose body has all arrived (the raw server's lane,
  ``proxy.py``): head and body in one write on an idle connection or, when the
  pool is full, parked in the same queue until a connection is released and
  written from ``release`` (no task wakes for it); ``resume`` then awaits the
  response head as ``send`` would have, retry included, and opens a new
  connection for a call that has a free slot and no idle connection.
* The response is parsed by ``httptools.HttpResponseParser`` in
  ``data_received``. ``send`` returns at the end of the head; a small body has
  usually arrived in the same read, and then ``complete_body()`` hands it over
  in one piece (the proxy writes head and body with one write). Otherwise the
  body streams; more than ``_HIGH_WATER`` bytes waiting for a slow client pause
  reading from the upstream.
* Framing: Content-Length, chunked, close-delimited (EOF ends the body), and no
  body at all for HEAD, 1xx, 204 and 304. llhttp cannot be told a response
  answers a HEAD, so after one the connection gets a fresh parser. 1xx answers
  are skipped; 101 is garbage (we never ask to upgrade).
* A connection goes back to the pool only when its exchange ended cleanly: the
  request fully sent, the response read to its end, and keep-alive on both
  sides. Anything else (``Connection: close``, a body not read to the end, an
  early answer while the request body was still going) closes it.
* Stale keep-alive connections: the upstream may close an idle connection at
  any time. One that closed while idle is dropped when taken from the pool. One
  that dies after the request was written, before a single response byte, is
  the race where the upstream closed just as we wrote; the call is sent once
  more, on a new connection, only when that cannot do harm twice: an idempotent
  method (RFC 9110 9.2.2) with no request body (a streamed body is consumed and
  cannot be replayed). A metered POST is never sent twice: it fails with 502
  (and the proxy refunds it).
* Timeouts are deadlines on the connection, checked by one sweep timer per pool
  (``_tick`` seconds apart) instead of a timer armed and cancelled per call (and
  set from the clock the sweep read, not a clock read per call):
  waiting for a pool slot, writing the request and each wait for response bytes
  are bounded by ``timeout`` (-> 504); connecting by ``connect_timeout`` (-> 502).
  Idle connections are closed after ``idle_timeout``.

Errors are translated here into the gateway's refusals (see ``upstream.py``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from gateway import errors
from gateway.headers import Pairs
from gateway.metrics import GatewayMetrics
from gateway.upstream_connection import PooledResponse, StaleConnection, UpstreamConnection

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_METHODS = {m: m.encode() for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS")}


class InFlight:
    """A call ``send_now`` took on: written on a connection, to be written on a new one,
    or parked until one is free.

    Written, it has its connection and the future of its response head. To connect
    (``connecting``: a slot is reserved for it), ``resume`` opens the connection, which
    needs awaiting, in the task. Parked (the pool is full), it waits in the pool's queue
    among the tasks' futures, in order, and answers to the same three calls:
    ``set_result(conn)`` writes it on a connection just released, ``set_result(None)``
    gives it a slot to connect in, ``set_exception`` fails it (no connection in time, or
    shutdown). The listener hears of the last two at once and of the first when the
    response head is in. ``data`` is what a retry on a new connection sends.

    It holds the listener only while parked: the listener leads back to the request,
    which holds this call, and a cycle would wait for the cycle collector (its pauses
    were the p99 at one connection)."""

    __slots__ = (
        "conn",
        "connecting",
        "data",
        "error",
        "head_only",
        "listener",
        "pool",
        "replayable",
        "waiter",
        "wake",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        data: bytes,
        replayable: bool,
        head_only: bool,
    ) -> None:
        self.pool = pool
        self.data = data
        self.replayable = replayable
        self.head_only = head_only
        self.listener: Callable[[], object] | None = None  # while parked
        self.conn: UpstreamConnection | None = None
        self.waiter: asyncio.Future[PooledResponse] | None = None
        self.connecting = False  # parked, then given a slot: resume() opens the connection
        self.error: BaseException | None = None  # parked, then failed
        self.wake: asyncio.Future[None] | None = None  # resume() waits on it while parked

    def write(self, conn: UpstreamConnection, listener: Callable[[], object]) -> None:
        self.conn = conn
        self.waiter = conn.start(self.data, self.head_only, listener)
        conn.sent = True

    def response(self) -> PooledResponse | None:
        """The response head if it came; None if the exchange failed or has yet to start
        (``resume`` raises, retries or connects)."""
        waiter = self.waiter
        if (
            waiter is None
            or not waiter.done()
            or waiter.cancelled()
            or waiter.exception() is not None
        ):
            return None
        return waiter.result()

    # -- parked: the pool's queue calls these, as it would a task's future -----------------

    def done(self) -> bool:
        return self.conn is not None or self.connecting or self.error is not None

    def set_result(self, conn: UpstreamConnection | None) -> None:
        listener = self._unparked()
        if conn is None:
            self.connecting = True
            listener()
        else:
            self.pool._busy.add(conn)
            self.write(conn, listener)
        self._woken()

    def set_exception(self, exc: BaseException) -> None:
        listener = self._unparked()
        self.error = exc
        listener()
        self._woken()

    def _unparked(self) -> Callable[[], object]:
        """The listener, no longer held once the call leaves the queue (see above)."""
        listener, self.listener = self.listener, None
        assert listener is not None
        return listener

    def _woken(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    async def decided(self) -> None:
        """Wait while parked. Cancelled meanwhile, the call is given up: the pool passes
        it by, and a connection or slot it was given goes back."""
        if self.done():
            return
        self.wake = self.pool.loop.create_future()
        try:
            await self.wake
        except BaseException:
            if self.conn is not None:
                self.pool.release(self.conn)  # written, unanswered: not reusable, dropped
            elif self.connecting:
                self.pool._pass_on(None)
            else:
                self.error = errors.UpstreamUnreachable("the caller gave up")
                self.listener = None
            raise


class UpstreamPool:
    """``upstream.Upstream`` over keep-alive connections to one ``http://host:port[/base]``."""

    def __init__(
        self,
        base_url: str,
        *,
        pool_size: int,
        timeout: float,
        connect_timeout: float,
        idle_timeout: float = 30.0,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"the upstream pool speaks http:// only, not {base_url!r}")
        self.host = url.hostname
        self.port = url.port or 80
        self.prefix = url.path.rstrip("/").encode("latin-1")
        self.host_header = url.netloc.rpartition("@")[2].encode("latin-1")
        self.size = pool_size
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.metrics = metrics or GatewayMetrics()
        self._tick = min(max(min(timeout, idle_timeout) / 10, 0.01), 0.5)
        self.loop: asyncio.AbstractEventLoop = cast(Any, None)
        self._idle: list[UpstreamConnection] = []
        self._busy: set[UpstreamConnection] = set()
        self._open = 0  # open, connecting, or promised to a woken waiter
        # Calls waiting for a connection, in order, with their deadlines: the tasks'
        # futures (``_acquire``) and the lane's parked calls (``send_now``).
        self._waiters: collections.deque[
            tuple[asyncio.Future[UpstreamConnection | None] | InFlight, float]
        ] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        # The loop's clock as of the last sweep: deadlines are set from it (no clock read
        # per call) and so fire up to one tick early, a tick being a tenth of the timeout.
        self.now = 0.0

    async def open(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time()
        self._sweeper = self.loop.call_later(self._tick, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for fut, _ in self._waiters:
            if not fut.done():
                fut.set_exception(errors.UpstreamUnreachable("the gateway is shutting down"))
        self._waiters.clear()
        for conn in [*self._idle, *self._busy]:
            conn.abort()
        self._idle.clear()
        await asyncio.sleep(0)  # let connection_lost run

    # -- sending --------------------------------------------------------------------------------

    async def send(
        self,
        method: str,
        target: str,
        headers: Pairs,
        body: AsyncIterable[bytes] | None,
        length: int | None = None,
    ) -> PooledResponse:
        chunked = body is not None and length is None
        head = self._head(method, target, headers, length, chunked)
        head_only = method == "HEAD"
        conn = self._take_idle() or await self._acquire()
        replayable = method in IDEMPOTENT and body is None
        pending = conn.exchange(head, body, chunked, head_only)
        return await self._answer(conn, pending, replayable, head, body, chunked, head_only)

    def send_now(
        self,
        method: str,
        target: str,
        headers: Pairs,
        length: int | None,
        body: bytes,
        listener: Callable[[], object],
    ) -> InFlight:
        """Take on a call whose body is all here (``b""``: none) without awaiting: write it
        on an idle connection now; else reserve a slot to open a connection in, which
        needs awaiting (``resume`` does it, in the task); else, the pool being full, park
        it until a connection is released (``InFlight``). ``listener`` is called when the
        response head is in or the exchange failed, and, a loop pass later, for a call
        that is to open a connection or that the closing pool refused; ``resume`` then
        gives the response."""
        conn = self._take_idle()
        head = self._head(method, target, headers, length, False)
        data = head + body if body else head
        sent = InFlight(self, data, method in IDEMPOTENT and not body, method == "HEAD")
        if conn is not None:
            sent.write(conn, listener)
        elif self._closed:
            sent.error = errors.UpstreamUnreachable("the gateway is shutting down")
            self.loop.call_soon(listener)
        elif self._open < self.size:
            self._open += 1  # the slot is the call's: resume() connects in it
            sent.connecting = True
            self.loop.call_soon(listener)
        else:
            sent.listener = listener
            self._waiters.append((sent, self.now + self.timeout))
        return sent

    async def resume(self, sent: Sent) -> PooledResponse:
        """The response to a call ``send_now`` took on, as ``send`` would have given it."""
        assert isinstance(sent, InFlight)
        await sent.decided()
        if sent.error is not None:
            raise sent.error
        pending: Awaitable[PooledResponse] | None
        if sent.conn is None:
            assert sent.connecting
            conn = await self._connect(reserved=True)
            pending = conn.exchange(sent.data, None, False, sent.head_only)
        else:
            conn, pending = sent.conn, sent.waiter
            assert pending is not None
        return await self._answer(
            conn, pending, sent.replayable, sent.data, None, False, sent.head_only
        )

    async def _answer(
        self,
        conn: UpstreamConnection,
        pending: Awaitable[PooledResponse],
        replayable: bool,
        head: bytes,
        body: AsyncIterable[bytes] | None,
        chunked: bool,
        head_only: bool,
    ) -> PooledResponse:
        """The response head of an exchange under way on ``conn``; a kept-alive connection
        that died before any response byte is tried once more, on a new connection, when
        the call may be sent again (idempotent, no streamed body)."""
        try:
            return await pending
        except StaleConnection:
            if not replayable:
                self.release(conn)
                raise errors.UpstreamUnreachable(
                    "the kept-alive connection closed as the call was sent"
                ) from None
        except BaseException:
            self.release(conn)
            raise
        # The stale connection's slot goes to a fresh connection for the one retry.
        self._busy.discard(conn)
        self.metrics.upstream_retries.inc()
        self._open += 1
        conn = await self._connect(reserved=True)
        try:
            return await conn.exchange(head, body, chunked, head_only)
        except StaleConnection:
            self.release(conn)
            raise errors.UpstreamUnreachable("connection closed before the response") from None
        except BaseException:
            self.release(conn)
            raise

    def _head(
        self, method: str, target: str, headers: Pairs, length: int | None, chunked: bool
    ) -> bytes:
        parts = [
            _METHODS.get(method) or method.encode("ascii"),
            b" ",
            self.prefix,
            target.encode("latin-1"),
            b" HTTP/1.1\r\nHost: ",
            self.host_header,
            b"\r\n",
        ]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if length is not None:
            parts += (b"Content-Length: ", b"%d" % length, b"\r\n\r\n")
        elif chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
        else:
            parts.append(b"\r\n")
        return b"".join(parts)

    # -- the pool ------------------------------------------------------------------------------

    def _take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection still open (the hot case: no await)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self.metrics.upstream_idle.value = len(idle)
                self._busy.add(conn)
                return conn
        return None

    async def _acquire(self) -> UpstreamConnection:
        if self._closed:
            raise errors.UpstreamUnreachable("the gateway is shutting down")
        if self._open < self.size:
            self._open += 1
            return await self._connect(reserved=True)
        waiter: asyncio.Future[UpstreamConnection | None] = self.loop.create_future()
        self._waiters.append((waiter, self.now + self.timeout))
        try:
            conn_or_slot = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pass_on(waiter.result())  # handed over as we were cancelled
            raise
        if conn_or_slot is None:
            return await self._connect(reserved=True)
        self._busy.add(conn_or_slot)
        return conn_or_slot

    def _pass_on(self, handed: UpstreamConnection | None) -> None:
        """A waiter gave up just as it was handed a connection (or a slot, None): the
        next one gets it."""
        if handed is None:
            self._open -= 1
            self._wake_one()
        else:
            self._busy.add(handed)
            self.release(handed)

    async def _connect(self, *, reserved: bool) -> UpstreamConnection:
        """A new connection in a slot already counted in ``_open``."""
        assert reserved
        conn = UpstreamConnection(self)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.create_connection(lambda: conn, self.host, self.port)
        except BaseException as exc:
            self._open -= 1
            self.metrics.upstream_open.value = self._open
            self._wake_one()
            if isinstance(exc, TimeoutError):
                raise errors.UpstreamUnreachable("connect timeout") from exc
            if isinstance(exc, OSError):
                raise errors.UpstreamUnreachable(f"connect failed: {exc}") from exc
            raise
        self.metrics.upstream_open.value = self._open
        self._busy.add(conn)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """The end of an exchange: keep the connection for the next call, or close it."""
        self._busy.discard(conn)
        if conn.finished_cleanly() and not self._closed:
            conn.uses += 1
            conn._reset()
            while self._waiters:
                waiter, _ = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            conn.idle_since = self.now
            self._idle.append(conn)
            self.metrics.upstream_idle.value = len(self._idle)
            return
        conn.busy = False
        if not conn.closed:
            conn.abort()  # _gone frees the slot
        else:
            self._wake_one()  # it was gone while busy: its slot is free now

    def connection_gone(self, conn: UpstreamConnection) -> None:
        """``connection_lost``: the slot of a connection that was open is free again."""
        self._open -= 1
        self.metrics.upstream_open.value = self._open
        if not conn.busy:  # idle (or released): nobody else will hand its slot on
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters and self._open < self.size:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                self._open += 1  # promised to the waiter, which connects
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        now = self.now = self.loop.time()
        for conn in [c for c in self._busy if c.deadline <= now]:
            conn.timed_out()
        while self._waiters and (self._waiters[0][0].done() or self._waiters[0][1] <= now):
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(errors.UpstreamTimeout("no upstream connection free in time"))
        if self._idle and self._idle[0].idle_since + self.idle_timeout <= now:
            keep = []
            for conn in self._idle:
                if conn.closed:
                    continue
                if conn.idle_since + self.idle_timeout <= now:
                    conn.abort()
                else:
                    keep.append(conn)
            self._idle[:] = keep
            self.metrics.upstream_idle.value = len(keep)
        if not self._closed:
            self._sweeper = self.loop.call_later(self._tick, self._sweep)

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return sum(1 for c in self._idle if not c.closed)


if TYPE_CHECKING:
    from gateway.upstream import Sent, Upstream

    def _fits(pool: UpstreamPool) -> Upstream:
        return pool
