"""The one seam to the upstream service: send a request head and a body stream, get a response.

``Upstream`` is what the proxy sees. Two implementations, chosen by
``METER_UPSTREAM_CLIENT``:

- ``upstream_pool.UpstreamPool`` (``pool``, the default): keep-alive HTTP/1.1
  connections on asyncio protocols, responses parsed by httptools.
- ``AiohttpUpstream`` (``aiohttp``, here): one aiohttp ``ClientSession``. It
  costs ~133 us of CPU per call on the benchmark machine against ~25 us for
  the pool (issue 4); it stays so the difference can be measured.

Both translate their own errors, at one boundary, into the gateway's refusals:

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

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway import errors
from gateway.headers import Pairs, find, text

# Headers aiohttp would invent; we send only what the client sent (filtered).
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_CHUNK = 1 << 16


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
    ) -> Sent | None:
        """Take on a call whose body is all here (``b""``: none) without awaiting: write it
        on a free connection, or queue it for one; None from a client that only sends
        awaited (``send`` it then). ``listener`` is called when ``Sent.response()`` is in,
        in the callback that completed it, or when it will not come without ``resume``."""
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


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise errors.UpstreamUnreachable("connect timeout") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise errors.UpstreamTimeout() from exc
    except aiohttp.ClientResponseError as exc:
        raise errors.UpstreamBadResponse(str(exc.message)) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise errors.UpstreamUnreachable(type(exc).__name__) from exc


class _AiohttpResponse:
    __slots__ = ("_response", "content_length", "reason", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.reason = response.reason or ""
        self.content_length = response.content_length

    def header_pairs(self) -> Pairs:
        return list(self._response.raw_headers)

    def header(self, name: bytes) -> bytes | None:
        return find(self._response.raw_headers, name)

    def complete_body(self) -> bytes | None:
        return None

    async def body(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise errors.UpstreamAborted(type(exc).__name__) from exc
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpUpstream:
    def __init__(self, base_url: str, *, pool_size: int, timeout: float, connect_timeout: float):
        self.base = base_url.rstrip("/")
        self.pool_size = pool_size
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=connect_timeout, sock_read=timeout
        )
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.pool_size, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=60
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            read_bufsize=_CHUNK,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self,
        method: str,
        target: str,
        headers: Pairs,
        body: AsyncIterable[bytes] | None,
        length: int | None = None,
    ) -> UpstreamResponse:
        assert self._session is not None, "AiohttpUpstream.open() was not awaited"
        url = URL(self.base + target, encoded=True)
        sent = CIMultiDict(text(headers))
        if length is not None:
            sent["Content-Length"] = str(length)
        with _translated():
            response = await self._session.request(
                method,
                url,
                headers=sent,
                data=body,
                allow_redirects=False,
                compress=None,
            )
        return _AiohttpResponse(response)

    def send_now(
        self,
        method: str,
        target: str,
        headers: Pairs,
        length: int | None,
        body: bytes,
        listener: Callable[[], object],
    ) -> Sent | None:
        return None  # a ClientSession call has to be awaited: the proxy sends it with send()

    async def resume(self, sent: Sent) -> UpstreamResponse:
        raise TypeError("AiohttpUpstream.send_now never sends, so nothing can be resumed")
