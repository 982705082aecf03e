"""HTTP/1.1 on the wire: what a production server must get right, tried with raw sockets.

Keep-alive, pipelining, chunked and streamed bodies with backpressure,
``Expect: 100-continue``, clients that go away, limits, timeouts, graceful
shutdown, and hostile input (garbage, every split of a request, smuggling
attempts, bad chunk sizes, endless header lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import resource
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest
from test_gateway import PRICE, Gateway, MakeGateway, make_gateway, upstream

from gateway.raw_server import FD_RESERVE, connection_cap
from gateway.testing import pattern_bytes, until
from meter import open_files

FIXTURES = (make_gateway, upstream)  # pytest finds them by name in this module


@dataclass
class Wire:
    status: int
    headers: dict[str, str]  # lower-cased names; repeated ones joined with ", "
    body: bytes
    head: bytes

    def json(self) -> dict[str, object]:
        doc: dict[str, object] = orjson.loads(self.body)
        return doc


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> Wire:
    raw_head = await reader.readuntil(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = (headers[key] + ", " if key in headers else "") + value.strip()
    body = b""
    if head or status in (204, 304) or status < 200:
        pass
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return Wire(status, headers, body, raw_head)


@contextlib.asynccontextmanager
async def connect(gw: Gateway) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    assert gw.url.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.url.port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


async def closed_by_server(reader: asyncio.StreamReader, within: float = 5) -> bool:
    try:
        async with asyncio.timeout(within):
            return await reader.read() == b""
    except ConnectionError:
        return True


def request(
    gw: Gateway,
    path: str = "/anything",
    *,
    method: str = "GET",
    headers: list[str] | None = None,
    body: bytes = b"",
    version: str = "1.1",
) -> bytes:
    assert gw.account is not None
    lines = [f"{method} {path} HTTP/{version}", "Host: gw.test", f"X-API-Key: {gw.account.key}"]
    lines += headers or []
    if body and not any(h.lower().startswith(("content-length", "transfer-")) for h in lines):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- keep-alive and pipelining -------------------------------------------------------------


async def test_keep_alive_serves_many_calls_on_one_connection(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    async with connect(gw) as (reader, writer):
        for i in range(5):
            writer.write(request(gw, f"/k/{i}"))
            reply = await read_response(reader)
            assert reply.status == 200
            assert reply.json()["path"] == f"/k/{i}"
            assert reply.headers.get("connection", "keep-alive").lower() == "keep-alive"
    assert await gw.balance() == 100_000 - 5 * PRICE


def _answering_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if "RawConnection._serve" in repr(t.get_coro())}


async def test_one_task_answers_a_connection_and_ends_with_it(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(keepalive_timeout=0.2)
    async with connect(gw) as (reader, writer):
        tasks = set()
        for i in range(3):
            writer.write(request(gw, f"/t/{i}"))
            assert (await read_response(reader)).status == 200
            tasks |= _answering_tasks()
        assert len(tasks) == 1  # the first call (its key not cached yet) started it, no other
    (task,) = tasks
    await asyncio.wait_for(task, 5)  # the client went away: the waiting task ended
    assert task.exception() is None
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, "/idle"))
        assert (await read_response(reader)).status == 200
        # The key is cached now: the lane answered, and no task was needed.
        assert not _answering_tasks()
        assert await closed_by_server(reader)  # the idle timeout closed it all the same
    assert await gw.balance() == 100_000 - 4 * PRICE


async def test_pipelined_requests_are_answered_in_order(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    paths = [f"/p/{i}" for i in range(8)]
    pipelined = b"".join(request(gw, p) for p in paths)
    pipelined += request(gw, "/p/post", method="POST", body=b"a body in the pipe")
    async with connect(gw) as (reader, writer):
        writer.write(pipelined)
        replies = [await read_response(reader) for _ in range(len(paths) + 1)]
    assert [r.json()["path"] for r in replies] == [*paths, "/p/post"]
    assert replies[-1].json()["body_bytes"] == len(b"a body in the pipe")
    assert await gw.balance() == 100_000 - 9 * PRICE


async def test_a_pipelined_request_is_not_debited_before_its_turn(
    make_gateway: MakeGateway,
) -> None:
    """The raw server starts a call's admission as its head is parsed, but only for the
    first request in line: one behind it may never be answered (the connection can close
    first), so it is admitted when its turn comes, and each call is debited once."""
    gw = await make_gateway()
    assert (await gw.call("/warm")).status == 200  # the key is cached: the fast path
    gw.echo.arrived.clear()
    pipelined = request(gw, "/first", headers=["X-Echo-Hang: 1"]) + request(gw, "/second")
    async with connect(gw) as (reader, writer):
        writer.write(pipelined)  # one write: both heads parsed in the same pass
        await asyncio.wait_for(gw.echo.arrived.wait(), 5)  # /first is at the upstream
        assert await gw.balance() == 100_000 - 2 * PRICE  # /warm and /first, not /second
        gw.echo.hang.set()
        replies = [await read_response(reader) for _ in range(2)]
    assert [r.json()["path"] for r in replies] == ["/first", "/second"]
    assert [r.headers["x-meter-charged"] for r in replies] == [str(PRICE)] * 2
    assert await gw.balance() == 100_000 - 3 * PRICE
    assert len(await gw.events()) == 3


async def test_http10_client_gets_its_answer_and_the_connection_closes(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway()
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, "/old", version="1.0"))
        reply = await read_response(reader)
        assert reply.status == 200 and reply.json()["path"] == "/old"
        assert "chunked" not in reply.headers.get("transfer-encoding", "")
        assert await closed_by_server(reader)


async def test_http10_with_a_transfer_coding_is_answered_then_closed(
    make_gateway: MakeGateway,
) -> None:
    """RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 request is faulty framing; the
    connection closes after the answer even when the client asked to keep it."""
    gw = await make_gateway()
    head = ["Connection: keep-alive", "Transfer-Encoding: chunked"]
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, "/old", method="POST", version="1.0", headers=head))
        writer.write(b"5\r\nhello\r\n0\r\n\r\n")
        reply = await read_response(reader)
        assert reply.status == 200 and reply.json()["body_bytes"] == 5
        assert await closed_by_server(reader)


async def test_connection_close_from_the_client_is_honoured(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, headers=["Connection: close"]))
        assert (await read_response(reader)).status == 200
        assert await closed_by_server(reader)


# -- bodies ----------------------------------------------------------------------------------


async def test_chunked_request_body_reaches_the_upstream_whole(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    parts = [b"hello", b" ", b"chunked ", b"world" * 1000]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\nX-Tr: 1\r\n\r\n"
    async with connect(gw) as (reader, writer):
        writer.write(
            request(gw, method="POST", headers=["Transfer-Encoding: chunked"]) + encoded[:7]
        )
        await asyncio.sleep(0.05)  # the body arrives in pieces
        writer.write(encoded[7:])
        reply = await read_response(reader)
    assert reply.status == 200
    doc = reply.json()
    assert doc["body_bytes"] == sum(map(len, parts))
    assert doc["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


async def test_chunked_body_over_the_limit_is_413_and_refunded(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway(max_body_bytes=50_000)
    chunk = b"%x\r\n%s\r\n" % (10_000, b"c" * 10_000)
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, method="POST", headers=["Transfer-Encoding: chunked"]))
        for _ in range(10):
            writer.write(chunk)
        reply = await read_response(reader)
        assert reply.status == 413
        assert reply.headers["x-meter-charged"] == "0"
        assert await closed_by_server(reader)
    assert await gw.balance() == 100_000


async def test_request_body_backpressure_reaches_the_client(make_gateway: MakeGateway) -> None:
    """An upstream that does not read yet: the gateway stops reading from the client."""
    gw = await make_gateway(max_body_bytes=1 << 30)
    total = 256 * 1024 * 1024
    block = b"b" * (1 << 20)
    async with connect(gw) as (reader, writer):
        writer.write(
            request(gw, method="PUT", headers=["X-Echo-Hang: 1", f"Content-Length: {total}"])
        )
        sent = 0

        async def send_all() -> None:
            nonlocal sent
            while sent < total:
                writer.write(block)
                sent += len(block)
                await writer.drain()

        sending = asyncio.create_task(send_all())
        await asyncio.sleep(0.5)
        assert sent < total // 4  # the client is held back, nothing is buffered whole
        gw.echo.hang.set()
        await asyncio.wait_for(sending, 60)
        reply = await asyncio.wait_for(read_response(reader), 60)
    assert reply.status == 200 and reply.json()["body_bytes"] == total


async def test_slow_client_gets_a_large_streamed_answer_intact(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    size = 8 * 1024 * 1024
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, "/big", headers=[f"X-Echo-Stream: {size}"]))
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"200" in head.split(b"\r\n")[0]
        await asyncio.sleep(0.3)  # not reading: the gateway must wait, not drop or buffer
        body, digest = b"", hashlib.sha256()
        while True:
            line = await reader.readuntil(b"\r\n")
            n = int(line, 16)
            data = (await reader.readexactly(n + 2))[:-2]
            if n == 0:
                break
            digest.update(data)
            body += data[:0]
            size -= n
    assert size == 0
    assert digest.hexdigest() == hashlib.sha256(pattern_bytes(8 * 1024 * 1024)).hexdigest()


# -- Expect: 100-continue --------------------------------------------------------------------


async def test_100_continue_comes_after_the_checks(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    body = b"x" * 5000
    async with connect(gw) as (reader, writer):
        writer.write(
            request(gw, method="POST", headers=["Expect: 100-continue", "Content-Length: 5000"])
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
        assert await gw.balance() == 100_000 - PRICE  # admitted before the body was asked for
        writer.write(body)
        reply = await read_response(reader)
    assert reply.status == 200 and reply.json()["body_bytes"] == 5000


@pytest.mark.parametrize(
    ("key", "length", "status"),
    [("unknown", 10, 401), ("account", 10_000_000_000, 413), ("poor", 10, 402)],
)
async def test_a_refusal_is_the_final_answer_without_100(
    make_gateway: MakeGateway, key: str, length: int, status: int
) -> None:
    gw = await make_gateway(balance=500 if key == "poor" else 100_000)
    assert gw.account is not None
    raw = request(gw, method="POST", headers=["Expect: 100-continue", f"Content-Length: {length}"])
    if key == "unknown":
        raw = raw.replace(gw.account.key.encode(), b"mtr_" + b"A" * 38)
    async with connect(gw) as (reader, writer):
        writer.write(raw)
        reply = await asyncio.wait_for(read_response(reader), 5)
        assert reply.status == status  # at once: no 100 first, no body sent
    assert gw.echo.received == 0


# -- clients that go away ----------------------------------------------------------------------


async def test_client_gone_mid_body_is_refunded(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    gw.echo.arrived.clear()
    async with connect(gw) as (_reader, writer):
        writer.write(request(gw, method="POST", headers=["Content-Length: 100000"]) + b"p" * 500)
        await asyncio.wait_for(gw.echo.arrived.wait(), 5)  # admitted, and on its way upstream
        writer.transport.abort()
    for _ in range(100):
        if [e["t"] for e in await gw.events()] == ["d", "r"]:
            break
        await asyncio.sleep(0.02)
    assert [e["t"] for e in await gw.events()] == ["d", "r"]
    assert await gw.balance() == 100_000
    assert await gw.metric("meter_gateway_refunds_total", reason="incomplete_body") == 1
    await until(lambda: gw.runtime.metrics.upstream_open.value == 0)  # the exchange is dropped


async def test_client_gone_mid_response_is_charged_and_the_upstream_dropped(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway()
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, "/gone", headers=["X-Echo-Stream: 10000000", "X-Echo-Gate: 1"]))
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()
    gw.echo.gate.set()
    for _ in range(100):
        if await gw.metric("meter_gateway_upstream_connections", state="open") == 0:
            break
        await asyncio.sleep(0.02)
    assert await gw.metric("meter_gateway_upstream_connections", state="open") == 0
    assert await gw.balance() == 100_000 - PRICE  # the upstream did the work
    assert await gw.metric("meter_gateway_in_flight") == 0


# -- hostile input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"HELLO\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS hello
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",  # obs-fold
        b"\r\n\r\n\r\n\r\n",
    ],
    ids=["words", "tls", "space-before-colon", "bare-lf", "nul", "version", "obs-fold", "crlf"],
)
async def test_garbage_is_400_and_closed(make_gateway: MakeGateway, garbage: bytes) -> None:
    gw = await make_gateway()
    async with connect(gw) as (reader, writer):
        writer.write(garbage)
        if garbage == b"\r\n\r\n\r\n\r\n":  # leading empty lines are allowed: nothing to answer
            writer.write_eof()
            assert await reader.read() == b""
            return
        reply = await read_response(reader)
        assert reply.status == 400
        assert await closed_by_server(reader)
    assert gw.echo.received == 0


@pytest.mark.parametrize(
    ("method", "target", "why"),
    [
        ("GET", "http://elsewhere.test/anything", "origin-form"),
        ("OPTIONS", "*", "origin-form"),
        ("GET", "/a/../anything", "dot segments"),
    ],
    ids=["absolute-form", "asterisk", "dot-segments"],
)
async def test_a_target_that_is_not_a_plain_path_is_400(
    make_gateway: MakeGateway, method: str, target: str, why: str
) -> None:
    gw = await make_gateway()
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, target, method=method))
        reply = await read_response(reader)
    assert reply.status == 400
    doc = reply.json()
    assert doc["type"] == "https://meter.dev/problems/bad-path"
    assert doc["title"] == "The request target is not a path the gateway can price unambiguously"
    assert why in doc["detail"]
    assert gw.echo.received == 0
    assert await gw.balance() == 100_000


@pytest.mark.parametrize(
    ("version", "hosts", "status"),
    [("1.1", 0, 400), ("1.1", 2, 400), ("1.0", 2, 400), ("1.0", 0, 200), ("1.1", 1, 200)],
)
async def test_a_request_needs_one_host_header(
    make_gateway: MakeGateway, version: str, hosts: int, status: int
) -> None:
    """RFC 9112 3.2: 400 for an HTTP/1.1 request without Host, and for two Host lines;
    a 400 is answered before the admission: nothing is charged or forwarded."""
    gw = await make_gateway()
    assert gw.account is not None
    lines = [f"GET /anything HTTP/{version}", f"X-API-Key: {gw.account.key}"]
    lines += [f"Host: h{i}.test" for i in range(hosts)]
    async with connect(gw) as (reader, writer):
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        reply = await read_response(reader)
        assert reply.status == status
        if status == 400:
            doc = reply.json()
            assert doc["type"] == "https://meter.dev/problems/malformed-request"
            assert "Host" in str(doc["detail"])
            assert await closed_by_server(reader)
    assert gw.echo.received == (1 if status == 200 else 0)
    assert await gw.balance() == 100_000 - (PRICE if status == 200 else 0)


@pytest.mark.parametrize(
    "head",
    [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: -1",
        "Content-Length: 5x",
        "Transfer-Encoding: chunked, identity",
    ],
    ids=["cl-te", "te-cl", "two-lengths", "negative", "not-a-number", "te-not-last"],
)
async def test_smuggling_attempts_are_400(make_gateway: MakeGateway, head: str) -> None:
    gw = await make_gateway()
    smuggled = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, method="POST", headers=head.split("\r\n")) + body)
        reply = await read_response(reader)
        assert reply.status == 400
        assert await closed_by_server(reader)
    assert gw.echo.received == 0
    assert await gw.balance() == 100_000


@pytest.mark.parametrize("chunk", [b"zz\r\nabc\r\n", b"-1\r\nabc\r\n", b"3\r\nabcdef\r\n"])
async def test_invalid_chunks_are_400_and_refunded(make_gateway: MakeGateway, chunk: bytes) -> None:
    gw = await make_gateway()
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, method="POST", headers=["Transfer-Encoding: chunked"]))
        await asyncio.sleep(0.05)
        writer.write(b"3\r\nabc\r\n" + chunk)
        reply = await read_response(reader)
        assert reply.status == 400
        doc = reply.json()  # what was wrong, in the parser's words
        assert doc["type"] == "https://meter.dev/problems/malformed-request"
        assert "chunk" in str(doc["detail"]).lower()
        assert "x-meter-charged" in reply.headers  # an admitted call: the money headers
        assert await closed_by_server(reader)
        for _ in range(100):
            if len(await gw.events()) == 2:
                break
            await asyncio.sleep(0.02)
    assert await gw.balance() == 100_000  # admitted, then refunded: the body never ended
    assert await gw.metric("meter_gateway_refunds_total", reason="malformed_body") == 1


async def test_every_split_of_a_request_is_parsed(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(balance=10**9)
    raw = request(gw, "/split?q=1", method="POST", body=b"tiny")
    async with connect(gw) as (reader, writer):
        for cut in range(1, len(raw)):
            writer.write(raw[:cut])
            await writer.drain()
            await asyncio.sleep(0.002)  # a separate read on the other side
            writer.write(raw[cut:])
            reply = await read_response(reader)
            assert reply.status == 200, (cut, reply.body)
        for byte in raw:  # and one byte at a time
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.001)
        assert (await read_response(reader)).status == 200
    assert gw.echo.received == len(raw)


async def test_a_huge_header_line_is_refused_without_buffering_it(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway()
    async with connect(gw) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nX-Huge: ")
        refused = False
        for _ in range(64):  # up to 64 MB, unless refused first
            try:
                writer.write(b"h" * (1 << 20))
                await asyncio.wait_for(writer.drain(), 2)
            except (ConnectionError, TimeoutError):
                refused = True
                break
            if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
                refused = True
                break
        assert refused
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            reply = await read_response(reader)
            assert reply.status == 431
    assert gw.echo.received == 0


# -- limits and timeouts of the raw server ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"u" * 300 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(12)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 600 + b"\r\n\r\n", 431),
    ],
    ids=["url", "count", "bytes"],
)
async def test_limits_are_414_and_431(make_gateway: MakeGateway, raw: bytes, status: int) -> None:
    gw = await make_gateway(max_url_bytes=256, max_headers=10, max_header_bytes=512)
    async with connect(gw) as (reader, writer):
        writer.write(raw)
        reply = await read_response(reader)
        assert reply.status == status
        assert reply.headers["content-type"] == "application/problem+json"
        assert await closed_by_server(reader)


async def test_a_slow_head_is_408(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(client_timeout=0.3)
    async with connect(gw) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and nothing more (slow loris)
        reply = await asyncio.wait_for(read_response(reader), 3)
        assert reply.status == 408
        assert await closed_by_server(reader)
    assert await gw.metric("meter_gateway_http_errors_total", reason="timeout") == 1


async def test_a_stalled_body_is_400_and_refunded(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(client_timeout=0.3)
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, method="POST", headers=["Content-Length: 1000"]) + b"x" * 10)
        reply = await asyncio.wait_for(read_response(reader), 3)
        assert reply.status == 400
    assert await gw.balance() == 100_000


@pytest.mark.parametrize("case", ["chunked_over_limit", "stalled", "declared_over_limit"])
async def test_a_body_refused_after_an_early_admission_is_refunded(
    make_gateway: MakeGateway, case: str
) -> None:
    """With the key cached, the admission starts as the head is parsed (``Proxy.begin``):
    a body refused after that is refunded as on the slow path, and a declared size over
    the limit is refused before anything is admitted."""
    gw = await make_gateway(max_body_bytes=50_000, client_timeout=0.3)
    assert (await gw.call("/warm")).status == 200  # the key is cached: the fast path
    async with connect(gw) as (reader, writer):
        if case == "chunked_over_limit":
            writer.write(request(gw, method="POST", headers=["Transfer-Encoding: chunked"]))
            for _ in range(10):
                writer.write(b"%x\r\n%s\r\n" % (10_000, b"c" * 10_000))
        elif case == "stalled":
            writer.write(request(gw, method="POST", headers=["Content-Length: 1000"]) + b"x" * 10)
        else:
            writer.write(request(gw, method="POST", headers=["Content-Length: 60000"]))
        reply = await asyncio.wait_for(read_response(reader), 3)
    assert reply.status == (400 if case == "stalled" else 413)
    assert reply.headers.get("x-meter-charged", "0") == "0"
    assert await gw.balance() == 100_000 - PRICE  # the warm-up call only
    kinds = [e["t"] for e in await gw.events()]
    assert kinds == (["d"] if case == "declared_over_limit" else ["d", "d", "r"])


async def test_idle_keep_alive_connections_are_closed(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(keepalive_timeout=0.2, client_timeout=0.5)
    async with connect(gw) as (reader, writer):
        writer.write(request(gw))
        assert (await read_response(reader)).status == 200
        started = asyncio.get_running_loop().time()
        assert await closed_by_server(reader)
        assert asyncio.get_running_loop().time() - started < 3.0
    async with connect(gw) as (reader, _):  # says nothing: the head timeout applies
        assert await closed_by_server(reader)


async def test_connections_beyond_the_cap_are_closed_as_they_come(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway(max_client_connections=2, balance=10**6)
    async with contextlib.AsyncExitStack() as stack:
        first = [await stack.enter_async_context(connect(gw)) for _ in range(2)]
        for reader, writer in first:
            writer.write(request(gw))
            assert (await read_response(reader)).status == 200
        async with connect(gw) as (reader, writer):  # the third: closed, nothing read
            assert await closed_by_server(reader)
        assert (
            await gw.metric("meter_gateway_http_errors_total", reason="too_many_connections") == 1
        )
        assert gw.echo.received == 2
        first[0][1].transport.abort()
        await until(lambda: gw.runtime.metrics.connections.value == 1)
        async with connect(gw) as (reader, writer):  # room again
            writer.write(request(gw))
            assert (await read_response(reader)).status == 200
    assert gw.echo.received == 3
    assert await gw.balance() == 10**6 - 3 * PRICE


def test_the_connection_cap_leaves_descriptors_for_the_upstream_pool() -> None:
    assert connection_cap(0, 65536, 256) == 65536 - 256 - FD_RESERVE
    assert connection_cap(0, 1024, 256) == 1024 - 256 - FD_RESERVE
    assert connection_cap(0, 100, 256) == 1  # a limit too low still serves one at a time
    assert connection_cap(500, 65536, 256) == 500  # configured wins


def test_the_open_files_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        raised = open_files.raise_limit()
        assert raised == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raised == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert open_files.raise_limit(300) == min(300, hard)  # as far as asked
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_bad_request_after_good_ones_is_answered_in_turn(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway()
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, "/one") + request(gw, "/two") + b"NOT HTTP\r\n\r\n")
        first, second, third = [await read_response(reader) for _ in range(3)]
        assert [first.status, second.status, third.status] == [200, 200, 400]
        assert await closed_by_server(reader)


async def test_date_and_server_headers(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, headers=['X-Echo-Headers: [["Server","up"],["Date","x"]]']))
        reply = await read_response(reader)
    assert reply.headers["server"] == "meter"  # ours, once: the upstream's are not passed on
    assert reply.headers["date"].endswith(" GMT") and "," in reply.headers["date"]


async def test_graceful_shutdown_finishes_in_flight_and_closes_idle(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway()
    async with connect(gw) as (idle_reader, idle_writer), connect(gw) as (reader, writer):
        idle_writer.write(request(gw, "/idle"))
        assert (await read_response(idle_reader)).status == 200
        writer.write(request(gw, "/slow", headers=["X-Echo-Hang: 1"]))
        await asyncio.wait_for(gw.echo.arrived.wait(), 5)
        stopping = asyncio.create_task(gw.stop())
        assert await closed_by_server(idle_reader)  # idle: closed at once
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", gw.url.port)  # not accepting
        gw.echo.hang.set()
        reply = await read_response(reader)  # in flight: finished
        assert reply.status == 200 and reply.json()["path"] == "/slow"
        assert reply.headers["connection"] == "close"
        await asyncio.wait_for(stopping, 5)
