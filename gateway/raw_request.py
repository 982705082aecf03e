"""One request on the raw server, as the proxy sees it: the ``proxy.Exchange`` seam.

Plain values (method, target, headers, the presented key, the declared length)
and the way back to the client: the body as it arrives (answering
``Expect: 100-continue`` on the first read), a whole response in one write, or
a streamed one (Content-Length, chunked, or close-delimited for HTTP/1.0).
Its connection (``raw_connection.py``) feeds the body and owns the socket.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway import errors, headers, http11
from gateway.headers import Pairs
from meter.problems import PROBLEM_CONTENT_TYPE, render

if TYPE_CHECKING:
    from gateway.proxy import Early, Lane
    from gateway.raw_connection import RawConnection

HIGH_WATER = 1 << 18  # request body bytes waiting for the proxy before reading pauses
_INF = float("inf")
_PROBLEM = (b"Content-Type", PROBLEM_CONTENT_TYPE.encode())


class RawRequest:
    """One request: plain values for the proxy, its body as it arrives, its response."""

    __slots__ = (
        "api_key",
        "body_done",
        "body_error",
        "buffered",
        "chunked",
        "chunks",
        "client_ip",
        "conn",
        "content_length",
        "early",
        "expect_continue",
        "has_body",
        "headers",
        "http10",
        "in_lane",
        "keep_alive",
        "lane",
        "method",
        "no_body",
        "refusal",
        "started",
        "target",
        "waiter",
        "wire",
    )

    scheme = b"http"

    def __init__(
        self,
        conn: RawConnection,
        method: str,
        target: str,
        headers: Pairs,
        api_key: str | None,
        content_length: int | None,
        has_body: bool,
        keep_alive: bool,
        http10: bool,
        expect_continue: bool,
    ) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.headers = headers
        self.api_key = api_key
        self.client_ip = conn.client_ip
        self.content_length = content_length
        self.has_body = has_body
        self.keep_alive = keep_alive
        self.http10 = http10
        self.expect_continue = expect_continue
        self.refusal: errors.Refusal | None = None
        self.body_done = not has_body
        self.body_error: BaseException | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.wire = 0
        self.waiter: asyncio.Future[None] | None = None
        self.started = False  # the response head is out (or was given up on)
        self.early: Early | None = None  # its admission, started when the head was parsed
        self.lane: Lane | None = None  # sent upstream by the lane (``proxy.Lane``)
        self.in_lane = False  # the lane answers it: the connection's task leaves it alone
        self.chunked = False
        self.no_body = False

    # -- the body, from the parser ----------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.buffered > HIGH_WATER:
            self.conn.update_reading()

    def end_body(self, error: BaseException | None = None) -> None:
        if error is None:
            self.body_done = True
        elif not self.body_done and self.body_error is None:
            self.body_error = error
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the body, for the proxy ------------------------------------------------------------

    def whole_body(self) -> bytes | None:
        """The whole body (``b""``: none) if it has all arrived with a declared length;
        None while it is still coming, chunked, failed, or waiting for 100-continue.
        Left in place: if the lane cannot send it, the proxy reads it as ``body()``."""
        if not self.has_body:
            return b""
        if (
            not self.body_done
            or self.body_error is not None
            or self.content_length is None
            or self.expect_continue
        ):
            return None
        chunks = self.chunks
        if len(chunks) == 1:
            return chunks[0]
        data = b"".join(chunks)
        chunks[:] = [data]
        return data

    def body(self) -> RawRequest:
        return self

    def __aiter__(self) -> RawRequest:
        return self

    async def __anext__(self) -> bytes:
        conn = self.conn
        if self.expect_continue:
            self.expect_continue = False
            if not self.started and not self.body_done and not conn.lost:
                conn.transport.write(http11.CONTINUE)
        while True:
            chunks = self.chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.buffered = 0
                if conn.read_paused:
                    conn.update_reading()
                return data
            if self.body_error is not None:
                raise self.body_error
            if self.body_done:
                raise StopAsyncIteration
            if conn.lost:
                raise ConnectionResetError("the client went away")
            self.waiter = conn.loop.create_future()
            conn.io_deadline = conn.server.now + conn.server.client_timeout
            try:
                await self.waiter
            finally:
                self.waiter = None
                conn.io_deadline = _INF

    # -- the response ------------------------------------------------------------------------

    def _keep(self, close: bool) -> bool:
        conn = self.conn
        keep = (
            self.keep_alive
            and not close
            and self.body_done
            and self.body_error is None
            and not conn.server.draining
            and not (conn.input_closed and len(conn.queue) <= 1)
        )
        self.keep_alive = keep
        return keep

    def _connection(self, keep: bool) -> bytes:
        if keep:
            return http11.KEEP_ALIVE if self.http10 else b""
        return http11.CLOSE

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
        self.respond_now(status, reason, headers, body, length=length, close=close)

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
        """``respond`` without awaiting: one write, which never waits (the lane's)."""
        if self.started:
            return
        self.started = True
        conn = self.conn
        keep = self._keep(close)
        if conn.lost:
            return
        payload = body
        if not http11.body_allowed(status):
            payload = b""
            framing = http11.content_length(length) if status == 304 and length is not None else b""
        elif self.method == "HEAD":  # the length the GET would have, if anyone said it
            payload = b""
            if length is not None:
                framing = http11.content_length(length)
            else:
                framing = http11.content_length(len(body)) if body else b""
        else:
            framing = http11.content_length(len(body))
        parts = http11.head(
            status, reason, conn.server.date.line, headers, framing, self._connection(keep)
        )
        parts.append(payload)
        conn.transport.write(b"".join(parts))

    async def start(self, status: int, reason: str, headers: Pairs, length: int | None) -> None:
        if self.started:
            raise RuntimeError("the response was started already")
        self.started = True
        conn = self.conn
        keep = self._keep(False)
        if not http11.body_allowed(status) or self.method == "HEAD":
            self.no_body = True
            framing = b"" if length is None else http11.content_length(length)
            if status == 204 or status < 200:
                framing = b""
        elif length is not None:
            framing = http11.content_length(length)
        elif self.http10:
            framing = b""  # close-delimited
            keep = self.keep_alive = False
        else:
            framing = http11.CHUNKED
            self.chunked = True
        if conn.lost:
            raise ConnectionResetError("the client went away")
        parts = http11.head(
            status, reason, conn.server.date.line, headers, framing, self._connection(keep)
        )
        conn.transport.write(b"".join(parts))

    async def write(self, chunk: bytes) -> None:
        conn = self.conn
        if conn.lost:
            raise ConnectionResetError("the client went away")
        if self.no_body or not chunk:
            return
        if self.chunked:
            conn.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            conn.transport.write(chunk)
        if conn.write_paused:
            await conn.drained()

    def accepts_trailers(self) -> bool:
        """Whether a streamed answer (``start`` with no length) can end in trailers: the
        client said ``TE: trailers`` and the answer will be chunked."""
        return not self.http10 and self.method != "HEAD" and headers.accepts_trailers(self.headers)

    async def finish(self, trailers: Pairs | None = None) -> None:
        if self.chunked and not self.conn.lost:
            if trailers:
                self.conn.transport.write(b"0\r\n" + headers.encode(trailers) + b"\r\n")
            else:
                self.conn.transport.write(http11.LAST_CHUNK)

    # -- the lane (``RawConnection.lane``) --------------------------------------------------

    def lane_admitted(self) -> None:
        self.conn.lane_admitted(self)

    def lane_answered(self) -> None:
        self.conn.lane_answered(self)

    def abort(self) -> None:
        self.keep_alive = False
        self.conn.abort()

    async def refuse(self, refusal: errors.Refusal) -> None:
        """A refusal of the server layer itself (not the proxy's): problem+json, then close."""
        pairs = [_PROBLEM, *((k.encode(), v.encode()) for k, v in refusal.headers.items())]
        await self.respond(refusal.status, "", pairs, render(refusal), close=True)
