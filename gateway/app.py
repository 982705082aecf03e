"""The aiohttp server mode (``METER_GATEWAY_SERVER=aiohttp``): ``create_app(settings)``.

A thin adapter: aiohttp parses and routes, ``_AiohttpExchange`` hands the
request to the same ``Proxy`` the raw server drives (plain values in, the
response out through the ``Exchange`` seam), and ``/_meter/*`` goes to
``ops.answer``. The hot path is opened and closed in ``cleanup_ctx`` by
``runtime.open_runtime``, the wiring both server layers share.

``Expect: 100-continue`` is answered when the proxy first reads the body (after
the key, the size and the admission checks), not by aiohttp before the handler.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from multidict import CIMultiDict

from gateway import errors, ops
from gateway.headers import Pairs, text
from gateway.identity import presented_key
from gateway.metrics import GatewayMetrics
from gateway.pricing import PriceTable, load_prices
from gateway.proxy import Early, Lane
from gateway.runtime import Runtime, open_runtime
from meter.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", GatewayMetrics)
RUNTIME = web.AppKey("runtime", Runtime)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> web.Application:
    prices = load_prices(settings.prices_path)  # a bad table stops start-up here
    app = web.Application()
    metrics = GatewayMetrics()
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[RUNTIME] = Runtime(settings, metrics)
    app.cleanup_ctx.append(_hot_path(prices, clock))
    app.router.add_route("*", ops.PREFIX + "{tail:.*}", _ops)
    app.router.add_route("*", "/{tail:.*}", _proxy, expect_handler=_continue_later)
    return app


def _hot_path(
    prices: PriceTable, clock: Callable[[], float]
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(app[RUNTIME], prices=prices, clock=clock):
            yield

    return ctx


async def _continue_later(request: web.Request) -> None:
    """aiohttp would send 100 Continue before the handler; the body's first read does."""


async def _proxy(request: web.Request) -> web.StreamResponse:
    proxy = request.app[RUNTIME].proxy
    assert proxy is not None
    coding = request.headers.get("Transfer-Encoding")
    if coding is not None and coding.strip().lower() != "chunked":
        # aiohttp undoes the chunking only: the body would go on still coded, unsaid.
        status, pairs, body = ops.problem(errors.NotImplementedCoding())
        response = web.Response(status=status, body=body, headers=CIMultiDict(text(pairs)))
        response.force_close()
        return response
    exchange = _AiohttpExchange(request)
    await proxy.handle(exchange)
    assert exchange.response is not None
    return exchange.response


async def _ops(request: web.Request) -> web.StreamResponse:
    status, pairs, body = await ops.answer(request.app[RUNTIME], request.method, request.raw_path)
    return web.Response(status=status, body=body, headers=CIMultiDict(text(pairs)))


class _AiohttpExchange:
    """``proxy.Exchange`` over an aiohttp request."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.method = request.method
        self.target = request.raw_path
        self.headers: Pairs = list(request.raw_headers)
        self.api_key = presented_key(self.headers)
        self.client_ip = request.remote
        self.scheme = request.scheme.encode()
        self.content_length = request.content_length
        self.has_body = request.body_exists
        self.early: Early | None = None  # aiohttp hands the request over whole: no sooner
        self.lane: Lane | None = None  # nor a lane
        self.response: web.StreamResponse | None = None

    async def body(self) -> AsyncIterator[bytes]:
        request = self.request
        expect = request.headers.get("Expect", "")
        if expect.lower() == "100-continue" and request.version >= (1, 1):
            await request.writer.write(_CONTINUE)
        async for chunk in request.content.iter_any():
            yield chunk

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
        sent = CIMultiDict(text(headers))
        response: web.StreamResponse
        if length is not None and length != len(body):  # a HEAD's or 304's declared length
            response = web.StreamResponse(status=status, reason=reason or None, headers=sent)
            response.content_length = length
        else:
            response = web.Response(status=status, reason=reason or None, body=body, headers=sent)
        if close:
            response.force_close()
        self.response = response

    async def start(self, status: int, reason: str, headers: Pairs, length: int | None) -> None:
        response = web.StreamResponse(
            status=status, reason=reason or None, headers=CIMultiDict(text(headers))
        )
        if length is not None:
            response.content_length = length
        self.response = response
        await response.prepare(self.request)

    async def write(self, chunk: bytes) -> None:
        assert self.response is not None
        await self.response.write(chunk)

    async def finish(self) -> None:
        assert self.response is not None
        await self.response.write_eof()

    def abort(self) -> None:
        if self.request.transport is not None:
            self.request.transport.close()
