"""The one seam to the upstream service: send a request head and a body stream, get a response.

``Upstream`` is what the proxy sees; ``upstream_pool.UpstreamPool`` implements
it (keep-alive HTTP/1.1 connections on asyncio protocols, responses parsed by
httptools) and translates its errors, at one boundary, into the gateway's
refusals:

    connect refused, reset, timed out   -> errors.UpstreamUnreachable (502)
    no response head in time            -> errors.UpstreamTimeout (504)
    malformed HTTP from upstream        -> errors.UpstreamBadResponse (502)
    body broke after the head           -> errors.UpstreamAborted (502; the head is gone already)

An exception raised by the request body iterator (the client stopped sending,
the body is too large) propagates as it is: the proxy decides what it means.

Timeouts: ``upstream_connect_timeout`` bounds the TCP connect,
``upstream_timeout`` bounds waiting for a pool slot, sending the request, and
each read (the response head, then every gap in the body), so a long stream
that keeps sending is never cut. Nothing is decompressed, no cookies are kept
and no redirect is followed: bytes pass through as the upstream sent them.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Protocol

from gateway.headers import Pairs


class UpstreamResponse(Protocol):
    status: int
    reason: str
    # Declared body length (Content-Length), None when chunked or close-delimited.
    content_length: int | None

    def header_pairs(self) -> Pairs:
        """The response headers as received (framing headers included)."""
        ...

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header; ``name`` lower-cased."""
        ...

    def trailer_pairs(self) -> Pairs:
        """The trailers of a chunked body, once it has ended (the first 8 KiB of them)."""
        ...

    def complete_body(self) -> bytes | None:
        """The whole body when it has already arrived (small answers), else None."""
        ...

    def body(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises errors.UpstreamAborted if it breaks off."""
        ...

    def close(self) -> None:
        """Return the connection to the pool, or drop it if the body was not read to the end."""
        ...


class Upstream(Protocol):
    async def send(
        self,
        method: str,
        target: str,
        headers: Pairs,
        body: AsyncIterable[bytes] | None,
        length: int | None = None,
    ) -> UpstreamResponse:
        """Send a request; returns once the response head is in. ``target`` is path?query.

        ``headers`` carry no framing: a body of known ``length`` is sent with
        Content-Length, one of unknown length chunked; ``body`` None with a
        ``length`` (0) sends ``Content-Length: 0``.
        """
        ...

    def send_now(
        self,
        method: str,
        target: str,
        headers: Pairs,
        length: int | None,
        body: bytes,
        listener: Callable[[], object],
    ) -> Sent:
        """Take on a call whose body is all here (``b""``: none) without awaiting: write it
        on a free connection, or queue it for one. ``listener`` is called when
        ``Sent.response()`` is in, in the callback that completed it, or when it will not
        come without ``resume``."""
        ...

    async def resume(self, sent: Sent) -> UpstreamResponse:
        """The response to a call ``send_now`` took on, as ``send`` would have returned it."""
        ...

    async def close(self) -> None: ...


class Sent(Protocol):
    """A call ``Upstream.send_now`` took on."""

    @property
    def connecting(self) -> bool:
        """No connection came free, but a new one may be opened: ``resume`` opens it."""
        ...

    def response(self) -> Any | None:
        """The response head if it is in; None if the exchange failed or has yet to start
        (``resume`` then raises, retries or connects)."""
        ...
