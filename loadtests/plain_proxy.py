"""The Python reference: a plain aiohttp reverse proxy, no metering.

What a careful engineer would write first: the aiohttp web server on uvloop,
one ``ClientSession`` with keep-alive to the upstream, request and response
bodies streamed, hop-by-hop headers dropped. The benchmark compares the
metering gateway against this (``gateway_vs_aiohttp``).

    python -m loadtests.plain_proxy --port 8090 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import aiohttp
import uvloop
from aiohttp import web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def _forwardable(headers: aiohttp.typedefs.LooseHeaders) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


async def proxy(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    async with session.request(
        request.method,
        request.app[UPSTREAM] + request.rel_url.raw_path_qs,
        headers=_forwardable(request.headers),
        data=request.content if request.body_exists else None,
        allow_redirects=False,
        auto_decompress=False,
    ) as upstream:
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=_forwardable(upstream.headers)
        )
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def create_app(upstream_url: str, pool_size: int = 256) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream_url.rstrip("/")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=pool_size, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector, skip_auto_headers=()) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


async def serve(host: str, port: int, upstream_url: str, pool_size: int) -> None:
    runner = web.AppRunner(create_app(upstream_url, pool_size), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_port=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description="plain aiohttp reverse proxy (benchmark reference)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--upstream", default="http://127.0.0.1:9000")
    ap.add_argument("--pool-size", type=int, default=256, help="upstream connections (keep-alive)")
    args = ap.parse_args()
    uvloop.run(serve(args.host, args.port, args.upstream, args.pool_size))


if __name__ == "__main__":
    main()
