"""A small, fast HTTP/1.1 upstream for `meter dev` and the benchmarks.

It answers every request with a JSON echo (method, path, body size, the
account and project the gateway passed on). When the request asks for
``?units=N`` (or sends ``X-Demo-Units: N``) it sets ``X-Units-Used: N``, the
header the default price table settles variable-cost routes from; a path
starting with ``/status/NNN`` answers that status. ``?sse=N`` answers an
OpenAI-style event stream instead: N content chunks, a last chunk with the
usage (``prompt_tokens`` and ``completion_tokens`` both N) and ``[DONE]``, each
event its own HTTP chunk, ``gap_ms`` apart (default 0: all in one write), as
an LLM streams (``loadtests/sse_bench.py`` measures the gateway on it). Built
on asyncio + httptools (like uvicorn) so it stays far faster than the proxies
measured in front of it.
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import parse_qs

import httptools
import orjson

CONTENT_EVENT = (
    b"data: "
    + orjson.dumps(
        {
            "id": "chatcmpl-echo",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "echo",
            "choices": [{"index": 0, "delta": {"content": "token "}, "finish_reason": None}],
            "usage": None,
        }
    )
    + b"\n\n"
)
DONE_EVENT = b"data: [DONE]\n\n"


def usage_event(tokens: int) -> bytes:
    usage = {"prompt_tokens": tokens, "completion_tokens": tokens, "total_tokens": 2 * tokens}
    doc = {"id": "chatcmpl-echo", "object": "chat.completion.chunk", "choices": [], "usage": usage}
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def event_stream(count: int) -> list[bytes]:
    """The events of ``?sse=count``, each as one HTTP chunk."""
    events = [CONTENT_EVENT] * count + [usage_event(count), DONE_EVENT]
    return [b"%x\r\n%s\r\n" % (len(e), e) for e in events]


class EchoProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close()
        except httptools.HttpParserError:
            if self.transport:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self._close()

    def _close(self) -> None:
        if self.transport:
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        parsed = httptools.parse_url(self.url)
        path = parsed.path.decode()
        status = 200
        if path.startswith("/status/") and path[8:11].isdigit():
            status = int(path[8:11])
        extra = b""
        units = self.headers.get(b"x-demo-units", b"")
        if parsed.query:
            query = parse_qs(parsed.query.decode())
            asked = query.get("units")
            if asked:
                units = asked[0].encode()
            if "sse" in query:
                gap = float(query.get("gap_ms", ["0"])[0]) / 1000
                self._events(event_stream(int(query["sse"][0])), gap, units)
                return
        if units:
            extra = b"x-units-used: " + units + b"\r\n"
        method = self.parser.get_method()
        body = (
            b""
            if method == b"HEAD" or status in (204, 304)
            else orjson.dumps(
                {
                    "ok": status < 400,
                    "method": method.decode(),
                    "path": path,
                    "bytes": self.body_size,
                    "account": self.headers.get(b"x-meter-account", b"").decode(),
                    "project": self.headers.get(b"x-meter-project", b"").decode(),
                }
            )
        )
        keep = self.parser.should_keep_alive()
        head = b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n" % status
        length = b"" if status in (204, 304) else b"content-length: %d\r\n" % len(body)
        self.transport.write(
            head + length + extra + (b"" if keep else b"connection: close\r\n") + b"\r\n" + body
        )
        if not keep:
            self.transport.close()

    def _events(self, chunks: list[bytes], gap: float, units: bytes) -> None:
        assert self.transport is not None
        keep = self.parser.should_keep_alive()
        head = b"HTTP/1.1 200 X\r\ncontent-type: text/event-stream\r\n"
        head += b"transfer-encoding: chunked\r\n"
        if units:
            head += b"x-units-used: " + units + b"\r\n"
        head += (b"" if keep else b"connection: close\r\n") + b"\r\n"
        chunks = [*chunks, b"0\r\n\r\n"]
        transport = self.transport
        if not gap:
            transport.write(head + b"".join(chunks))
            if not keep:
                transport.close()
            return
        transport.write(head)
        loop = asyncio.get_running_loop()

        def send(i: int) -> None:
            if transport.is_closing():
                return
            transport.write(chunks[i])
            if i + 1 < len(chunks):
                loop.call_later(gap, send, i + 1)
            elif not keep:
                transport.close()

        loop.call_later(gap, send, 0)


async def serve(host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(EchoProtocol, host, port, reuse_port=True, backlog=4096)


def main() -> None:
    ap = argparse.ArgumentParser(description="echo upstream for meter dev and benchmarks")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    args = ap.parse_args()
    import uvloop

    async def forever() -> None:
        server = await serve(args.host, args.port)
        async with server:
            await server.serve_forever()

    uvloop.run(forever())


if __name__ == "__main__":
    main()
