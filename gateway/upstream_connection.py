"""One keep-alive connection to the upstream, and the response it is reading.

``UpstreamConnection`` is the asyncio protocol: it writes one request at a time
(the head at once, a body as it streams, waiting while the socket buffer is
full) and parses the answer with ``httptools.HttpResponseParser``;
``PooledResponse`` is what the proxy gets back (``upstream.UpstreamResponse``).
The pool (``upstream_pool.py``) decides which connection serves a call, when
one is kept, and sweeps the deadlines; see its docstring for how it all works.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, cast

import httptools

from gateway import errors
from gateway.headers import Pairs, find

if TYPE_CHECKING:
    from gateway.upstream_pool import UpstreamPool

HIGH_WATER = 1 << 18  # response bytes buffered for a slow client before reading pauses
_MAX_HEAD = 1 << 16  # a response head larger than this is garbage
_MAX_TRAILERS = 1 << 13  # trailer bytes kept (for variable-cost units); the rest dropped
_INF = float("inf")


class _BeyondResponse(Exception):
    """Bytes after the end of the response (a second one in the same write): never relayed."""


class StaleConnection(Exception):
    """A reused connection died before any response byte: the call may be sent again."""


class UpstreamConnection(asyncio.Protocol):
    """One upstream connection; one exchange at a time."""

    # Slots: compact per-connection state (see raw_server.UpstreamConnection).
    __slots__ = (
        "_drain",
        "body_waiter",
        "buffered",
        "busy",
        "chunked",
        "chunks",
        "closed",
        "content_length",
        "deadline",
        "done",
        "error",
        "head_bytes",
        "head_done",
        "head_only",
        "head_waiter",
        "head_wire",
        "headers",
        "idle_since",
        "informational",
        "keep_alive",
        "listener",
        "loop",
        "parser",
        "pool",
        "read_paused",
        "reason",
        "reusable",
        "sent",
        "started",
        "status",
        "trailer_bytes",
        "trailers",
        "transport",
        "uses",
        "write_paused",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.uses = 0
        self.idle_since = 0.0
        self.deadline = _INF
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.read_paused = False
        self._reset()

    def _reset(self) -> None:
        self.busy = False
        self.head_only = False
        self.sent = False  # the whole request is written
        self.started = False  # a response byte arrived
        self.head_bytes = 0  # header bytes parsed
        self.head_wire = 0  # bytes received while the head was unfinished
        self.head_done = False
        self.informational = False
        self.status = 0
        self.reason = b""
        self.headers: Pairs = []
        self.trailers: Pairs = []
        self.trailer_bytes = 0
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = False
        self.reusable = True
        self.chunks: list[bytes] = []  # a new list: the last one may still be in a join
        self.buffered = 0
        self.done = False
        self.error: errors.Refusal | None = None
        if self.read_paused and self.transport is not None:
            self.transport.resume_reading()  # paused for a slow client; the body is done
        self.read_paused = False
        self.head_waiter: asyncio.Future[PooledResponse] | None = None
        self.listener: Callable[[], object] | None = None
        self.body_waiter: asyncio.Future[None] | None = None

    # -- the exchange -------------------------------------------------------------------

    async def exchange(
        self,
        head: bytes,
        body: AsyncIterable[bytes] | None,
        chunked: bool,
        head_only: bool,
    ) -> PooledResponse:
        waiter = self.start(head, head_only)
        if body is not None:
            try:
                await self._send_body(body, chunked)
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    waiter.exception()  # retrieved: the body's failure is the one that counts
                raise
        self.sent = True
        if not waiter.done():
            self.deadline = self.pool.now + self.pool.timeout
        return await waiter

    def start(
        self, head: bytes, head_only: bool, listener: Callable[[], object] | None = None
    ) -> asyncio.Future[PooledResponse]:
        """Write ``head`` (a whole request when it has no body to stream); the response
        head comes to the future. ``listener`` is called once the future is done: at the
        end of the read that completed the head (whatever of the body came with it is
        in), or as the exchange fails; not a loop pass later, as a done callback would."""
        assert self.transport is not None
        self.busy = True
        self.head_only = head_only
        waiter: asyncio.Future[PooledResponse] = self.loop.create_future()
        self.head_waiter = waiter
        self.listener = listener
        self.deadline = self.pool.now + self.pool.timeout
        self.transport.write(head)
        return waiter

    async def _send_body(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        timeout = self.pool.timeout
        transport = self.transport
        assert transport is not None
        chunks = aiter(body)
        try:
            while True:
                self.deadline = _INF  # waiting for the client is not the upstream's fault
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                if self.closed or self.started:
                    # The upstream answered (or gave up) before the body ended: stop sending;
                    # the connection cannot be reused, the answer (or the error) is what counts.
                    self.reusable = False
                    return
                if not chunk:
                    continue
                self.deadline = self.pool.now + timeout
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                if self.write_paused:
                    await self._drained()
            if chunked and not self.closed:
                transport.write(b"0\r\n\r\n")
        except BaseException:
            self.reusable = False
            self.abort()
            raise

    async def _drained(self) -> None:
        if self.closed:
            return
        self._drain = self.loop.create_future()
        try:
            await self._drain
        finally:
            self._drain = None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- the response, from httptools ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # nothing was asked: a broken or hostile upstream
            self.abort()
            return
        self.started = True
        if self.error is not None or (self.done and self.head_done):
            self.abort()  # bytes after the end of the response: dropped, never reused
            return
        if not self.head_done:
            self.head_wire += len(data)
        if self.deadline != _INF:  # someone waits for the upstream: it made progress
            self.deadline = self.pool.now + self.pool.timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._garbage("the upstream switched protocols")
        except httptools.HttpParserError as exc:
            refused = exc.__context__  # what our own callbacks refused, in their words
            if isinstance(refused, _BeyondResponse):
                self.abort()  # the response stands as framed; what followed it is dropped
            else:
                self._garbage(
                    str(refused)
                    if isinstance(refused, ValueError)
                    else f"malformed response: {exc}"
                )
        else:
            # llhttp keeps an unfinished header line itself: bound what it may hold.
            if not self.head_done and self.head_wire > _MAX_HEAD:
                self._garbage("response head too large")
        if self.head_done and self.listener is not None:
            self._tell()

    def _tell(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener()

    def on_message_begin(self) -> None:
        if self.done:
            raise _BeyondResponse()

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:  # a trailer: kept for the proxy (trailer: units), within bounds
            self.trailer_bytes += len(name) + len(value)
            if self.trailer_bytes <= _MAX_TRAILERS:
                self.trailers.append((name, value))
            return
        self.headers.append((name, value))
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > _MAX_HEAD:
            raise ValueError("response head too large")
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            self.content_length = int(value)  # llhttp has validated it
        elif size == 17 and name.lower() == b"transfer-encoding":
            # Only chunked is undone here, and Transfer-Encoding does not reach the
            # client: a body still gzip-coded would go on unsaid (nginx answers 502 too).
            if value.strip().lower() != b"chunked":
                raise ValueError(f"transfer coding {value[:40]!r} cannot be passed on")
            self.chunked = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                raise ValueError("101 Switching Protocols was not asked for")
            self.informational = True  # 100, 103: skip, the real answer follows
            self.headers, self.reason, self.content_length, self.chunked = [], b"", None, False
            return
        self.status = status
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only:
            self.done = True
            self.parser = httptools.HttpResponseParser(self)  # llhttp would wait for a body
        self.deadline = _INF  # nobody waits on the upstream until the body is read
        waiter = self.head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(PooledResponse(self))

    def on_body(self, chunk: bytes) -> None:
        if self.head_only:
            self.reusable = False
            return
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        if self.buffered > HIGH_WATER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.done = True
        self._wake_body()

    def _wake_body(self) -> None:
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _garbage(self, why: str) -> None:
        self._fail(
            errors.UpstreamBadResponse(why) if not self.head_done else errors.UpstreamAborted(why)
        )
        self.abort()

    def _fail(self, error: errors.Refusal | StaleConnection | TimeoutError) -> None:
        """The exchange cannot go on: wake whoever waits, with ``error``."""
        self.reusable = False
        waiter = self.head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
            self._tell()
        elif isinstance(error, errors.Refusal) and not self.done:
            if self.error is None:
                self.error = (
                    error
                    if isinstance(error, errors.UpstreamAborted)
                    else errors.UpstreamAborted(error.detail)
                )
            self._wake_body()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(
                error
                if not isinstance(error, StaleConnection)
                else errors.UpstreamUnreachable("closed")
            )

    # -- the body, for the proxy --------------------------------------------------------------

    def take_all(self) -> bytes:
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()
        return data

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            if self.chunks:
                yield self.take_all()
                continue
            if self.done:
                return
            if self.error is not None:
                raise self.error
            self.body_waiter = self.loop.create_future()
            self.deadline = self.pool.now + self.pool.timeout
            try:
                await self.body_waiter
            except TimeoutError:
                self.error = errors.UpstreamAborted("no body bytes within the upstream timeout")
            finally:
                self.body_waiter = None
                self.deadline = _INF

    # -- connection events --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def eof_received(self) -> bool:
        self.closed = True  # not to be taken from the pool in the moment before connection_lost
        return False  # close; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        # The parser holds this protocol's bound methods: a cycle that would leave every
        # closed connection to the cycle collector. Nothing is parsed after the end.
        del self.parser
        self.pool.connection_gone(self)
        if self.busy:
            self._lost_in_exchange(exc)
        # The head's future holds the response, which holds this connection: a cycle
        # too, as a closed connection is never reset for another call. Whoever awaits
        # the future holds it.
        self.head_waiter = None

    def _lost_in_exchange(self, exc: Exception | None) -> None:
        if not self.head_done:
            if not self.started and self.uses > 0:
                self._fail(StaleConnection())
            elif self.started:
                self._fail(errors.UpstreamBadResponse("connection closed in the response head"))
            else:
                self._fail(errors.UpstreamUnreachable("connection closed before the response"))
        elif not self.done:
            if exc is None and self.content_length is None and not self.chunked:
                self.done = True  # a close-delimited body ends here
                self.reusable = False
                self._wake_body()
            else:
                self._fail(errors.UpstreamAborted("connection closed in the response body"))
        elif self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def timed_out(self) -> None:
        self.deadline = _INF
        if self.head_waiter is not None and not self.head_waiter.done():
            self._fail(errors.UpstreamTimeout())
        elif self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_exception(TimeoutError())
        elif self._drain is not None and not self._drain.done():
            self._fail(errors.UpstreamTimeout())
        else:
            return  # nobody was waiting on the upstream after all
        self.abort()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows

    def finished_cleanly(self) -> bool:
        return (
            self.reusable
            and self.done
            and self.sent
            and self.keep_alive
            and self.error is None
            and not self.closed
        )  # unread chunks of a response parsed to its end are simply dropped


class PooledResponse:
    """The response head as it came, and the way to its body (``upstream.UpstreamResponse``)."""

    __slots__ = ("_conn", "_released", "content_length", "reason", "status")

    def __init__(self, conn: UpstreamConnection) -> None:
        self._conn = conn
        self._released = False
        self.status = conn.status
        self.reason = conn.reason.decode("latin-1")
        self.content_length = conn.content_length

    def header_pairs(self) -> Pairs:
        return self._conn.headers

    def header(self, name: bytes) -> bytes | None:
        return find(self._conn.headers, name)

    def trailer_pairs(self) -> Pairs:
        return self._conn.trailers

    def complete_body(self) -> bytes | None:
        conn = self._conn
        if conn.done and conn.error is None:
            return conn.take_all() if conn.chunks else b""
        return None

    def body(self) -> AsyncIterator[bytes]:
        return self._conn.body()

    def close(self) -> None:
        if not self._released:
            self._released = True
            self._conn.pool.release(self._conn)
