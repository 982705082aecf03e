"""The one seam to the upstream service: send a request head and a body stream, get a response.

``Upstream`` is what the proxy sees; ``AiohttpUpstream`` implements it with one
aiohttp ``ClientSession`` (keep-alive pool of ``upstream_pool_size``
connections). aiohttp's errors are translated here, at one boundary
(``_translated``), into the gateway's refusals:

    connect/read timeout            -> errors.UpstreamTimeout (504)
    refused, reset, closed early    -> errors.UpstreamUnreachable (502)
    malformed HTTP from upstream    -> errors.UpstreamBadResponse (502)
    body broke after the head       -> errors.UpstreamAborted (502; the head is gone already)

Timeouts: ``upstream_connect_timeout`` bounds the TCP connect,
``upstream_timeout`` bounds waiting for a pool slot plus connecting, and each
read (the response head, then every body chunk), so a long stream that keeps
sending is never cut. The session keeps no cookies, follows no redirects and
does not decompress: bytes pass through as the upstream sent them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway import errors

Pairs = list[tuple[str, str]]

# Headers aiohttp would invent; we send only what the client sent (filtered).
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_CHUNK = 1 << 16


class UpstreamResponse(Protocol):
    status: int
    reason: str

    def header_pairs(self) -> Pairs: ...

    def header(self, name: str) -> str | None: ...

    def body(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises errors.UpstreamAborted if it breaks off."""
        ...

    def close(self) -> None:
        """Return the connection to the pool, or drop it if the body was not read to the end."""
        ...


class Upstream(Protocol):
    async def send(
        self, method: str, target: str, headers: Pairs, body: AsyncIterable[bytes] | None
    ) -> UpstreamResponse:
        """Send a request; returns once the response head is in. ``target`` is path?query."""
        ...

    async def close(self) -> None: ...


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise errors.UpstreamTimeout() from exc
    except aiohttp.ClientResponseError as exc:
        raise errors.UpstreamBadResponse(str(exc.message)) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise errors.UpstreamUnreachable(type(exc).__name__) from exc


class _AiohttpResponse:
    __slots__ = ("_response", "reason", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.reason = response.reason or ""

    def header_pairs(self) -> Pairs:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._response.raw_headers]

    def header(self, name: str) -> str | None:
        return self._response.headers.get(name)

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
        self, method: str, target: str, headers: Pairs, body: AsyncIterable[bytes] | None
    ) -> UpstreamResponse:
        assert self._session is not None, "AiohttpUpstream.open() was not awaited"
        url = URL(self.base + target, encoded=True)
        with _translated():
            response = await self._session.request(
                method,
                url,
                headers=CIMultiDict(headers),
                data=body,
                allow_redirects=False,
                compress=None,
            )
        return _AiohttpResponse(response)
