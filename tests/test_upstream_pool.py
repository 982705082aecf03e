"""The upstream pool against scripted upstreams on loopback: framing, reuse, failures, limits.

Each scripted upstream is a real TCP server (``asyncio.start_server``) whose
handler plays one behaviour: well-formed answers in every framing, early
closes, garbage, silence. The pool is driven directly through ``send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from gateway import errors
from gateway.metrics import GatewayMetrics
from gateway.testing import until
from gateway.upstream_pool import UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Scripted:
    """A loopback upstream running ``handler`` per connection; counts what it saw."""

    handler: Handler
    connections: int = 0
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader, record: list[bytes] | None = None) -> bytes:
    """One request: its head, and its body (Content-Length or chunked) appended."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    body = b""
    if b"content-length:" in lower:
        length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    if record is not None:
        record.append(head + body)
    return head + body


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Handler], Awaitable[Scripted]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Scripted:
        upstream = Scripted(handler)
        upstream.server = await asyncio.start_server(upstream._accept, "127.0.0.1", 0)
        servers.append(upstream.server)
        return upstream

    yield start
    for server in servers:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


@pytest.fixture
async def pools() -> AsyncIterator[Callable[..., Awaitable[UpstreamPool]]]:
    opened: list[UpstreamPool] = []

    async def make(url: str, **kw: float) -> UpstreamPool:
        values = {"pool_size": 4, "timeout": 2.0, "connect_timeout": 1.0, **kw}
        pool = UpstreamPool(
            url,
            pool_size=int(values["pool_size"]),
            timeout=values["timeout"],
            connect_timeout=values["connect_timeout"],
            idle_timeout=values.get("idle_timeout", 30.0),
            metrics=GatewayMetrics(),
        )
        await pool.open()
        opened.append(pool)
        return pool

    yield make
    for pool in opened:
        await pool.close()


async def read_all(response: object) -> bytes:
    body = response.complete_body()  # type: ignore[attr-defined]
    if body is not None:
        return bytes(body)
    out = b""
    async for chunk in response.body():  # type: ignore[attr-defined]
        out += chunk
    return out


def answer(status_line: bytes, headers: list[bytes], body: bytes = b"") -> bytes:
    return status_line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def keep_answering(*responses: bytes, record: list[bytes] | None = None) -> Handler:
    """Answer each request on a connection with the next response, cycling; the requests
    go to ``record`` when one is given."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        i = 0
        while True:
            await read_request(reader, record)
            writer.write(responses[i % len(responses)])
            await writer.drain()
            i += 1

    return handler


OK = answer(b"HTTP/1.1 200 OK", [b"Content-Length: 2", b"X-A: 1"], b"ok")


# -- framing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (answer(b"HTTP/1.1 200 OK", [b"Content-Length: 5"], b"hello"), b"hello"),
        (
            answer(
                b"HTTP/1.1 200 OK",
                [b"Transfer-Encoding: chunked"],
                b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            ),
            b"hello world",
        ),
        (answer(b"HTTP/1.1 200 OK", [b"Content-Length: 0"]), b""),
    ],
    ids=["content-length", "chunked", "empty"],
)
async def test_framings_and_keep_alive_reuse(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
    raw: bytes,
    body: bytes,
) -> None:
    upstream = await scripted(keep_answering(raw))
    pool = await pools(upstream.url)
    for _ in range(3):
        response = await pool.send("GET", "/x", [(b"X-Q", b"1")], None)
        assert response.status == 200
        assert await read_all(response) == body
        assert response.header(b"x-trailer") is None  # trailers are not headers
        response.close()
    assert upstream.connections == 1  # one connection, kept alive and reused
    assert pool.idle_connections == 1


async def test_close_delimited_body_ends_at_eof_and_is_not_reused(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")
        await writer.drain()

    upstream = await scripted(handler)
    pool = await pools(upstream.url)
    for _ in range(2):
        response = await pool.send("GET", "/", [], None)
        assert response.content_length is None
        assert await read_all(response) == b"part one, part two"
        response.close()
    assert upstream.connections == 2


@pytest.mark.parametrize(
    ("method", "raw"),
    [
        ("HEAD", answer(b"HTTP/1.1 200 OK", [b"Content-Length: 12345"])),
        ("GET", answer(b"HTTP/1.1 204 No Content", [])),
        ("GET", answer(b"HTTP/1.1 304 Not Modified", [b"Content-Length: 99"])),
    ],
    ids=["head", "204", "304"],
)
async def test_answers_without_a_body_keep_the_connection(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
    method: str,
    raw: bytes,
) -> None:
    upstream = await scripted(keep_answering(raw, OK))
    pool = await pools(upstream.url)
    response = await pool.send(method, "/", [], None)
    assert response.complete_body() == b""
    response.close()
    after = await pool.send("GET", "/", [], None)  # the next answer parses on the same connection
    assert (after.status, await read_all(after)) == (200, b"ok")
    after.close()
    assert upstream.connections == 1


async def test_head_answer_declares_the_length(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    upstream = await scripted(keep_answering(answer(b"HTTP/1.1 200 OK", [b"Content-Length: 7"])))
    pool = await pools(upstream.url)
    response = await pool.send("HEAD", "/", [], None)
    assert (response.content_length, response.complete_body()) == (7, b"")
    response.close()


async def test_informational_answers_are_skipped(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    upstream = await scripted(keep_answering(early + OK))
    pool = await pools(upstream.url)
    response = await pool.send("GET", "/", [], None)
    assert response.status == 200
    assert [n for n, _ in response.header_pairs()] == [b"Content-Length", b"X-A"]
    assert await read_all(response) == b"ok"
    response.close()


async def test_connection_close_from_upstream_is_honoured(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    closing = answer(b"HTTP/1.1 200 OK", [b"Content-Length: 2", b"Connection: close"], b"ok")
    upstream = await scripted(keep_answering(closing))
    pool = await pools(upstream.url)
    for _ in range(3):
        response = await pool.send("GET", "/", [], None)
        assert await read_all(response) == b"ok"
        response.close()
    assert upstream.connections == 3
    await until(lambda: pool.open_connections == 0)


# -- request bodies ------------------------------------------------------------------------


async def test_request_head_and_bodies_on_the_wire(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    seen: list[bytes] = []
    upstream = await scripted(keep_answering(OK, record=seen))
    pool = await pools(upstream.url + "/base")

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""  # an empty chunk must not end a chunked body
        yield b"defg"

    for length, framing in (
        (7, b"Content-Length: 7\r\n"),
        (None, b"Transfer-Encoding: chunked\r\n"),
    ):
        response = await pool.send("POST", "/p?q=1", [(b"X-A", b"1")], body(), length)
        await read_all(response)
        response.close()
        host = upstream.url.removeprefix("http://").encode()
        assert seen[-1] == (
            b"POST /base/p?q=1 HTTP/1.1\r\nHost: " + host + b"\r\nX-A: 1\r\n" + framing + b"\r\n"
            b"abcdefg"
        )
    response = await pool.send("POST", "/", [], None, 0)
    response.close()
    assert b"Content-Length: 0\r\n" in seen[-1]
    assert upstream.connections == 1


async def test_large_request_body_streams_with_backpressure(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    total = 16 * 1024 * 1024
    produced = 0

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got = 0
        await asyncio.sleep(0.2)  # let the pool fill the socket buffers first
        assert produced < total  # the producer waited for us: nothing buffered whole
        while got < total:
            got += len(await reader.read(1 << 16))
        writer.write(OK)
        await writer.drain()

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        chunk = b"z" * (1 << 16)
        while produced < total:
            produced += len(chunk)
            yield chunk

    upstream = await scripted(slow_reader)
    pool = await pools(upstream.url, timeout=10.0)
    response = await pool.send("PUT", "/", [], body(), total)
    assert response.status == 200
    response.close()


async def test_a_failing_request_body_drops_the_connection(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    upstream = await scripted(keep_answering(OK))
    pool = await pools(upstream.url)

    async def body() -> AsyncIterator[bytes]:
        yield b"half"
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await pool.send("POST", "/", [], body(), 100)
    await until(lambda: pool.open_connections == 0)
    response = await pool.send("GET", "/", [], None)  # a fresh connection serves the next
    assert response.status == 200
    response.close()


async def test_an_early_answer_stops_the_request_body(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    async def refuses_early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(b"HTTP/1.1 413 Too Large", [b"Content-Length: 0"]))
        await writer.drain()
        await asyncio.sleep(1)

    released = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await released.wait()
        yield b"y" * 1000

    upstream = await scripted(refuses_early)
    pool = await pools(upstream.url)
    sending = asyncio.create_task(pool.send("POST", "/", [], body(), None))
    await until(lambda: any(conn.started for conn in pool._busy))  # the 413 is in
    released.set()
    response = await asyncio.wait_for(sending, 5)
    assert response.status == 413
    response.close()
    await until(lambda: pool.open_connections == 0)  # the request never ended: not reusable
    assert pool.idle_connections == 0


# -- response bodies -----------------------------------------------------------------------


async def test_slow_consumer_pauses_the_upstream(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    total = 32 * 1024 * 1024
    sent = 0

    async def fast_writer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        chunk = b"q" * (1 << 16)
        while sent < total:
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()

    upstream = await scripted(fast_writer)
    pool = await pools(upstream.url)
    response = await pool.send("GET", "/", [], None)
    body = response.body()
    got = len(await anext(body))
    await asyncio.sleep(0.3)  # a slow client: the pool must not read everything meanwhile
    assert sent < total / 2
    async for chunk in body:
        got += len(chunk)
    assert got == total
    response.close()
    assert pool.idle_connections == 1


async def test_body_breaking_off_is_upstream_aborted(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    async def breaks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    upstream = await scripted(breaks)
    pool = await pools(upstream.url)
    response = await pool.send("GET", "/", [], None)
    assert response.complete_body() is None
    with pytest.raises(errors.UpstreamAborted):
        await read_all(response)
    response.close()


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 ok-ish\r\nthis is not http\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["status", "not-http", "two-lengths", "101", "huge-head", "bad-chunk"],
)
async def test_garbage_is_a_bad_response(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
    raw: bytes,
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(1)

    upstream = await scripted(garbage)
    pool = await pools(upstream.url)
    try:
        response = await pool.send("GET", "/", [], None)
    except errors.UpstreamBadResponse:
        pass
    else:  # a head that parsed, then garbage in the body
        with pytest.raises(errors.UpstreamAborted):
            await read_all(response)
        response.close()
    await until(lambda: pool.open_connections == 0)


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"chunked, gzip"])
async def test_a_transfer_coding_other_than_chunked_is_a_bad_response(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
    coding: bytes,
) -> None:
    """The pool undoes chunked only, and Transfer-Encoding is hop-by-hop: a body still
    coded would reach the client without a word of its coding. 502, as nginx answers."""
    raw = answer(b"HTTP/1.1 200 OK", [b"Transfer-Encoding: " + coding], b"5\r\nhello\r\n0\r\n\r\n")
    upstream = await scripted(keep_answering(raw))
    pool = await pools(upstream.url)
    with pytest.raises(errors.UpstreamBadResponse, match="cannot be passed on"):
        await pool.send("GET", "/", [], None)
    await until(lambda: pool.open_connections == 0)


async def test_refused_connection_is_unreachable(
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens
    pool = await pools(f"http://127.0.0.1:{port}")
    with pytest.raises(errors.UpstreamUnreachable):
        await pool.send("GET", "/", [], None)
    assert pool.open_connections == 0


async def test_connect_timeout_is_unreachable_502(
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    # A listener that never accepts, its accept queue full: new SYNs are dropped.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        pool = await pools(f"http://127.0.0.1:{port}", connect_timeout=0.2)
        started = asyncio.get_running_loop().time()
        with pytest.raises(errors.UpstreamUnreachable) as info:
            await pool.send("GET", "/", [], None)
        assert info.value.status == 502
        assert asyncio.get_running_loop().time() - started < 3.0
        assert pool.open_connections == 0
    finally:
        for s in [*fillers, listener]:
            s.close()


async def test_response_timeout_is_504(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    upstream = await scripted(silent)
    pool = await pools(upstream.url, timeout=0.2)
    started = asyncio.get_running_loop().time()
    with pytest.raises(errors.UpstreamTimeout):
        await pool.send("GET", "/", [], None)
    assert 0.15 < asyncio.get_running_loop().time() - started < 3.0
    await until(lambda: pool.open_connections == 0)


async def test_a_stalled_body_times_out_as_aborted(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)

    upstream = await scripted(stalls)
    pool = await pools(upstream.url, timeout=0.2)
    response = await pool.send("GET", "/", [], None)
    with pytest.raises(errors.UpstreamAborted):
        await read_all(response)
    response.close()


# -- stale keep-alive connections ------------------------------------------------------------


def closes_after_first(requests: list[bytes]) -> Handler:
    """Answers the first request of a connection; reads the second, then closes silently:
    what a server that timed the idle connection out looks like to a request in flight."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader, requests)
        writer.write(OK)
        await writer.drain()
        await read_request(reader, requests)
        writer.transport.abort()

    return handler


async def test_idempotent_call_on_a_stale_connection_is_sent_again(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    requests: list[bytes] = []
    upstream = await scripted(closes_after_first(requests))
    pool = await pools(upstream.url)
    (await pool.send("GET", "/1", [], None)).close()
    response = await pool.send("GET", "/2", [], None)  # reused, dies, sent again on a new one
    assert response.status == 200
    response.close()
    assert [r.split(b" ")[1] for r in requests] == [b"/1", b"/2", b"/2"]
    assert upstream.connections == 2
    assert pool.metrics.upstream_retries.value == 1


@pytest.mark.parametrize("with_body", [False, True])
async def test_a_post_is_never_sent_twice(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
    with_body: bool,
) -> None:
    requests: list[bytes] = []
    upstream = await scripted(closes_after_first(requests))
    pool = await pools(upstream.url)
    (await pool.send("GET", "/1", [], None)).close()

    async def body() -> AsyncIterator[bytes]:
        yield b"charge me once"

    with pytest.raises(errors.UpstreamUnreachable):
        await pool.send("POST", "/2", [], body() if with_body else None, 14 if with_body else 0)
    assert [r.split(b" ")[1] for r in requests] == [b"/1", b"/2"]  # once, not twice
    assert upstream.connections == 1
    assert pool.metrics.upstream_retries.value == 0


async def test_a_connection_closed_while_idle_is_not_used(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(OK)  # keep-alive is announced, then the connection is closed anyway
        await writer.drain()
        await asyncio.sleep(0.02)

    upstream = await scripted(one_per_connection)
    pool = await pools(upstream.url)
    (await pool.send("GET", "/", [], None)).close()
    await until(lambda: pool.idle_connections == 0)  # the upstream closed the idle one
    response = await pool.send("POST", "/", [], None, 0)  # not a retry: a fresh connection
    assert response.status == 200
    response.close()
    assert upstream.connections == 2
    assert pool.metrics.upstream_retries.value == 0


# -- send_now: a call written without awaiting (the raw server's lane) ----------------------


def listening(record: list[str]) -> Callable[[], None]:
    return lambda: record.append("told")


async def test_send_now_opens_or_reuses_a_connection_and_tells_once_the_answer_is_in(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    requests: list[bytes] = []
    upstream = await scripted(keep_answering(OK, record=requests))
    pool = await pools(upstream.url)
    told: list[str] = []
    opening = pool.send_now("GET", "/0", [], None, b"", listening(told))  # none idle yet
    assert opening.connecting and opening.response() is None and told == []
    response = await pool.resume(opening)  # the listener, a pass later; then the connect
    assert told == ["told"]
    response.close()
    told.clear()
    assert requests[0].startswith(b"GET /0 HTTP/1.1\r\n")

    seen: list[tuple[bool, bytes | None]] = []

    def listener() -> None:  # at the end of the read: the head is in, and the body with it
        response = sent.response()
        seen.append((response is not None, response and response.complete_body()))

    sent = pool.send_now("POST", "/2", [(b"X-B", b"2")], 4, b"body", listener)
    response = await pool.resume(sent)
    assert response.status == 200
    response.close()
    assert seen == [(True, b"ok")]  # once
    assert requests[1].startswith(b"POST /2 HTTP/1.1\r\n")
    assert requests[1].endswith(b"X-B: 2\r\nContent-Length: 4\r\n\r\nbody")
    assert upstream.connections == 1  # the idle connection
    assert pool.idle_connections == 1  # and back in the pool
    assert told == []


async def test_send_now_on_a_stale_connection_is_sent_again_only_when_harmless(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    requests: list[bytes] = []
    upstream = await scripted(closes_after_first(requests))
    pool = await pools(upstream.url)
    told: list[str] = []
    (await pool.send("GET", "/1", [], None)).close()
    sent = pool.send_now("GET", "/2", [], None, b"", listening(told))
    response = await pool.resume(sent)  # the connection died: sent again, on a new one
    assert response.status == 200
    response.close()
    assert told == ["told"]  # the failure was told, once
    # The new connection answered its first; it dies on its second, a POST: not sent again.
    sent = pool.send_now("POST", "/3", [], 14, b"charge me once", listening(told))
    with pytest.raises(errors.UpstreamUnreachable):
        await pool.resume(sent)
    assert [r.split(b" ")[1] for r in requests] == [b"/1", b"/2", b"/2", b"/3"]
    assert told == ["told", "told"]
    assert pool.metrics.upstream_retries.value == 1


async def test_send_now_times_out_as_send_does(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    async def then_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await read_request(reader)
        await asyncio.sleep(5)

    upstream = await scripted(then_silent)
    pool = await pools(upstream.url, timeout=0.2)
    told: list[str] = []
    (await pool.send("GET", "/1", [], None)).close()
    sent = pool.send_now("GET", "/2", [], None, b"", listening(told))
    with pytest.raises(errors.UpstreamTimeout):
        await pool.resume(sent)
    assert told == ["told"]
    await until(lambda: pool.open_connections == 0)


async def test_send_now_parks_calls_while_the_pool_is_full_and_writes_them_in_turn(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    requests: list[bytes] = []
    upstream = await scripted(keep_answering(OK, record=requests))
    pool = await pools(upstream.url, pool_size=1)
    told: list[str] = []
    held = await pool.send("GET", "/1", [], None)  # the one connection
    waiting = asyncio.create_task(pool.send("GET", "/2", [], None))
    await asyncio.sleep(0)  # its first step: it queues for the connection
    first = pool.send_now("POST", "/3", [], 5, b"three", listening(told))
    second = pool.send_now("GET", "/4", [], None, b"", listening(told))
    assert first.response() is None and second.response() is None
    assert not first.connecting and not second.connecting
    held.close()  # to the task that queued first
    (await waiting).close()  # to the first parked call, written from release()
    response = await pool.resume(first)
    assert (response.status, await read_all(response)) == (200, b"ok")
    assert len(requests) == 3 and second.response() is None  # still parked
    response.close()
    response = await pool.resume(second)
    response.close()
    assert [r.split(b" ")[1] for r in requests] == [b"/1", b"/2", b"/3", b"/4"]
    assert requests[2].endswith(b"Content-Length: 5\r\n\r\nthree")
    assert told == ["told", "told"]  # each answer, once
    assert upstream.connections == 1
    assert pool.idle_connections == 1


async def test_a_parked_call_given_up_is_passed_by(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    requests: list[bytes] = []
    upstream = await scripted(keep_answering(OK, record=requests))
    pool = await pools(upstream.url, pool_size=1)
    told: list[str] = []
    held = await pool.send("GET", "/1", [], None)
    parked = pool.send_now("GET", "/2", [], None, b"", listening(told))
    resuming = asyncio.create_task(pool.resume(parked))
    await asyncio.sleep(0)  # it waits for the parked call to get a connection
    resuming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await resuming
    held.close()
    response = await pool.send("GET", "/3", [], None)  # the connection was not given away
    response.close()
    assert [r.split(b" ")[1] for r in requests] == [b"/1", b"/3"]
    assert told == [] and pool.idle_connections == 1


async def test_a_parked_call_gets_the_slot_of_a_connection_that_died(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    async def half_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"HTTP/1.1 200 OK", [b"Content-Length: 10"], b"abc"))
        await keep_answering(OK)(reader, writer)

    upstream = await scripted(half_then_ok)
    pool = await pools(upstream.url, pool_size=1)
    told = asyncio.Event()
    held = await pool.send("GET", "/1", [], None)
    parked = pool.send_now("GET", "/2", [], None, b"", told.set)
    held.close()  # its body was not read to the end: the connection is dropped
    assert not told.is_set()  # the slot is free once the connection is gone
    await asyncio.wait_for(told.wait(), 2)
    assert parked.connecting and parked.response() is None
    response = await pool.resume(parked)  # opens a connection in the freed slot
    assert response.status == 200
    response.close()
    assert upstream.connections == 2
    assert pool.open_connections == 1


async def test_a_parked_call_times_out_and_fails_at_shutdown(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    upstream = await scripted(keep_answering(OK))
    pool = await pools(upstream.url, pool_size=1, timeout=0.2)
    told: list[str] = []
    stalled = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:  # a client that stalls: not the upstream's fault
        yield b"part"
        await stalled.wait()
        yield b"rest"

    holding = asyncio.create_task(pool.send("POST", "/1", [], body(), 8))
    await asyncio.sleep(0)  # it takes the one connection and sends its first part
    parked = pool.send_now("GET", "/2", [], None, b"", listening(told))
    with pytest.raises(errors.UpstreamTimeout):
        await pool.resume(parked)  # no connection came free in time
    assert told == ["told"]
    late = pool.send_now("GET", "/3", [], None, b"", listening(told))
    await pool.close()
    with pytest.raises(errors.UpstreamUnreachable):
        await pool.resume(late)
    assert told == ["told", "told"]
    closed = pool.send_now("GET", "/4", [], None, b"", listening(told))
    with pytest.raises(errors.UpstreamUnreachable):
        await pool.resume(closed)
    await asyncio.sleep(0)  # the listener is called in the next loop pass
    assert told == ["told", "told", "told"]
    stalled.set()
    with pytest.raises(errors.UpstreamFailure):
        await holding


# -- the pool ------------------------------------------------------------------------------


async def test_pool_size_bounds_connections_and_waiters_are_served_in_turn(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    async def slowish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.02)
            writer.write(OK)

    upstream = await scripted(slowish)
    pool = await pools(upstream.url, pool_size=3)

    async def call(i: int) -> int:
        response = await pool.send("GET", f"/{i}", [], None)
        await read_all(response)
        response.close()
        return response.status

    assert await asyncio.gather(*(call(i) for i in range(30))) == [200] * 30
    assert upstream.connections == 3
    assert pool.open_connections == 3


async def test_waiting_for_a_slot_times_out_504(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    upstream = await scripted(silent)
    pool = await pools(upstream.url, pool_size=1, timeout=0.3)
    first = asyncio.create_task(pool.send("GET", "/", [], None))
    await until(lambda: pool.open_connections == 1)  # it holds the one slot
    with pytest.raises(errors.UpstreamTimeout):
        await pool.send("GET", "/", [], None)
    with pytest.raises(errors.UpstreamTimeout):
        await first
    await until(lambda: pool.open_connections == 0)


async def test_idle_connections_are_closed_after_the_idle_timeout(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    upstream = await scripted(keep_answering(OK))
    pool = await pools(upstream.url, idle_timeout=0.1, timeout=0.1)
    (await pool.send("GET", "/", [], None)).close()
    assert pool.idle_connections == 1
    await until(lambda: (pool.idle_connections, pool.open_connections) == (0, 0))


async def test_close_drops_every_connection(
    scripted: Callable[[Handler], Awaitable[Scripted]],
    pools: Callable[..., Awaitable[UpstreamPool]],
) -> None:
    upstream = await scripted(keep_answering(OK))
    pool = await pools(upstream.url)
    responses = [await pool.send("GET", "/", [], None) for _ in range(3)]
    for response in responses:
        response.close()
    await pool.close()
    assert pool.open_connections == 0
    with pytest.raises(errors.UpstreamUnreachable):
        await pool.send("GET", "/", [], None)
