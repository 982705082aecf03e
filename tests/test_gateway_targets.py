"""What a call's target, method and framing may say, through the real HTTP stack.

The gateway prices exactly the path the upstream will route (it forwards the
path it priced, in canonical form; a path upstreams read two ways is refused),
refuses what it does not relay (WebSocket and other upgrades, CONNECT, TRACE)
free of charge, ignores an h2c upgrade offer with its body forwarded whole,
reads Transfer-Encoding on several lines as one list, and never relays bytes an
upstream sends past its response. Checked against our echo upstream and nginx.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from test_gateway import PRICE, Gateway, MakeGateway, make_gateway, upstream
from test_gateway_http import closed_by_server, connect, read_response, request

from gateway.testing import until
from meter import program_paths
from meter.local_servers import free_port

FIXTURES = (make_gateway, upstream)  # pytest finds them by name in this module

IMAGES = 50_000  # the route priced above the default (PRICE)
TABLE = f"""
[default]
price = {PRICE}

[[routes]]
name = "images"
match = "POST /v1/images/generations"
price = {IMAGES}

[[routes]]
name = "free"
match = "GET /free"
price = 0
"""


@pytest.fixture
def prices(tmp_path: Path) -> str:
    path = tmp_path / "targets.toml"
    path.write_text(TABLE)
    return str(path)


async def call_raw(gw: Gateway, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    async with connect(gw) as (reader, writer):
        writer.write(raw)
        reply = await read_response(reader)
    return reply.status, reply.headers, reply.body


# -- the path priced is the path forwarded -------------------------------------------------


@pytest.mark.parametrize(
    ("target", "forwarded", "charged"),
    [
        ("/v1/images/generations", "/v1/images/generations", IMAGES),
        ("/v1/images/generations#x", "/v1/images/generations", IMAGES),  # the reported bypass
        ("/v1/images/generations?n=1#x", "/v1/images/generations?n=1", IMAGES),
        ("/v1/images/%67enerations", "/v1/images/generations", IMAGES),
        ("/v1//images///generations", "/v1/images/generations", IMAGES),
        ("//v1/images/generations/", "/v1/images/generations/", IMAGES),
        ("/v1/images/generations%20", "/v1/images/generations%20", PRICE),  # another path
        ("/v1/Images/generations", "/v1/Images/generations", PRICE),  # paths have case
        ("/other#/v1/images/generations", "/other", PRICE),
    ],
)
async def test_the_upstream_is_sent_the_path_that_was_priced(
    make_gateway: MakeGateway, prices: str, target: str, forwarded: str, charged: int
) -> None:
    gw = await make_gateway(prices_path=prices)
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, target, method="POST", body=b"{}"))
        reply = await read_response(reader)
    assert reply.status == 200
    assert reply.json()["path"] == forwarded
    assert int(reply.headers["x-meter-charged"]) == charged
    assert await gw.balance() == 100_000 - charged


@pytest.mark.parametrize(
    "target",
    [
        "/v1/images%2Fgenerations",
        "/v1/images%2fgenerations",
        "/v1/images%5Cgenerations",
        "/v1\\images/generations",
        "/v1/images/generations;x=1",
        "/v1/images;x/generations",
        "/v1/x/../images/generations",
        "/v1/x/%2e%2e/images/generations",
        "/v1/images/generations/.",
        "/v1/images/gener%00ations",
        "/v1/images/gener%zzations",
        "/v1/images/gener%C3ations",
    ],
)
async def test_a_path_upstreams_read_two_ways_is_refused_free(
    make_gateway: MakeGateway, prices: str, target: str
) -> None:
    gw = await make_gateway(prices_path=prices)
    status, _, body = await call_raw(gw, request(gw, target, method="POST", body=b"{}"))
    assert status == 400
    assert b"bad-path" in body
    assert gw.echo.received == 0
    assert await gw.balance() == 100_000


# -- nginx as the upstream: what it serves is what was priced ------------------------------

NGINX_TARGETS = [
    "/v1/images/generations",
    "/v1/images/generations#x",
    "/v1/images/generations?a=1#x",
    "/v1/images/%67enerations",
    "/v1/%69mages/generations",
    "/v1//images/generations",
    "//v1/images/generations",
    "/v1/images/generations/",
    "/v1/images%2Fgenerations",
    "/v1/images/generations;x",
    "/v1/x/../images/generations",
    "/v1/x/%2E%2E/images/generations",
    "/v1/./images/generations",
    "/V1/images/generations",
    "/v1/images/generations%3F",
    "/v1/images/generations%23x",
    "/v1/images/gener%61tions?#",
]


@pytest.fixture
def nginx_origin(tmp_path: Path) -> Iterator[str]:
    """nginx as the origin, as users run it: merge_slashes and URI normalisation on, an
    exact location for the priced route and a catch-all; each answers which it was."""
    binary = program_paths.find_nginx()
    assert binary is not None, (
        "nginx not found: run `make test` (it installs it) or apt-get install nginx"
    )
    folder = tmp_path / "nginx"
    folder.mkdir()
    os.chmod(folder, 0o755)
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    server {{
        listen 127.0.0.1:{port};
        location = /v1/images/generations {{ return 200 "images"; }}
        location / {{ return 200 "other"; }}
    }}
}}
"""
    )
    proc = subprocess.Popen(
        [binary, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (folder / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


async def test_behind_nginx_every_spelling_is_charged_what_nginx_serves(
    make_gateway: MakeGateway, prices: str, nginx_origin: str
) -> None:
    """Each spelling of the priced route is either refused free (400) or charged exactly
    the price of the location nginx served it from (a trailing slash: never less): no
    spelling reaches the images location for the default price."""
    gw = await make_gateway(prices_path=prices, upstream_url=nginx_origin, balance=10**9)
    spent = 0
    served: dict[str, str] = {}
    for target in NGINX_TARGETS:
        status, headers, body = await call_raw(gw, request(gw, target, method="POST", body=b"{}"))
        if status == 400:
            assert b"bad-path" in body and "x-meter-charged" not in headers, target
            served[target] = "refused"
            continue
        assert status == 200, (target, status, body)
        charged = int(headers["x-meter-charged"])
        served[target] = body.decode()
        if target.endswith("/"):
            # A trailing slash is not significant to the table (Express, FastAPI serve both
            # alike); nginx's exact location serves it elsewhere: charged more, never less.
            assert (body, charged) == (b"other", IMAGES), target
        else:
            assert charged == (IMAGES if body == b"images" else PRICE), (target, body, charged)
        spent += charged
    assert await gw.balance() == 10**9 - spent
    # The reported bypass and the plain spellings reach the priced route, and are charged so.
    for target in NGINX_TARGETS[:7]:
        assert served[target] == "images", (target, served[target])


# -- Upgrade, CONNECT, TRACE, HEAD ---------------------------------------------------------


@pytest.mark.parametrize(
    "upgrade",
    ["websocket", "WebSocket", "h2c, websocket", "TLS/1.2", "h2"],
)
async def test_an_upgrade_other_than_h2c_is_refused_free(
    make_gateway: MakeGateway, upgrade: str
) -> None:
    gw = await make_gateway()
    handshake = request(
        gw,
        "/ws",
        headers=[
            "Connection: Upgrade",
            f"Upgrade: {upgrade}",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ],
    )
    async with connect(gw) as (reader, writer):
        writer.write(handshake + b"\x81\x05hello")  # what a websocket client sends next
        reply = await read_response(reader)
        assert reply.status == 501
        assert reply.json()["type"] == "https://meter.dev/problems/upgrade-not-supported"
        assert await closed_by_server(reader)
    assert gw.echo.received == 0
    assert await gw.balance() == 100_000


async def test_an_upgrade_header_without_connection_upgrade_is_refused_too(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway()
    status, _, body = await call_raw(gw, request(gw, "/ws", headers=["Upgrade: websocket"]))
    assert status == 501 and b"upgrade-not-supported" in body
    assert gw.echo.received == 0


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_an_h2c_offer_is_ignored_and_the_body_forwarded_whole(
    make_gateway: MakeGateway, framing: str
) -> None:
    """What ``curl --http2 -d`` sends on plain http: answered as HTTP/1.1, the body whole,
    and the connection goes on with the next request."""
    gw = await make_gateway()
    body = b"x" * 70_000
    offer = [
        "Connection: Upgrade, HTTP2-Settings",
        "Upgrade: h2c",
        "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
    ]
    if framing == "chunked":
        raw = request(gw, "/h2c", method="POST", headers=[*offer, "Transfer-Encoding: chunked"])
        raw += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        raw = request(gw, "/h2c", method="POST", headers=offer, body=body)
    async with connect(gw) as (reader, writer):
        writer.write(raw + request(gw, "/after"))
        first = await read_response(reader)
        second = await read_response(reader)
    assert first.status == 200
    doc = first.json()
    assert (doc["body_bytes"], doc["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    sent = {str(k).lower() for k, _ in doc["headers"]}  # type: ignore[attr-defined]
    assert not sent & {"upgrade", "http2-settings"}
    assert "101" not in first.head.decode().split("\r\n")[0]
    assert (second.status, second.json()["path"]) == (200, "/after")
    assert await gw.balance() == 100_000 - 2 * PRICE


@pytest.mark.parametrize(
    ("method", "target"), [("CONNECT", "example.com:443"), ("CONNECT", "/path"), ("TRACE", "/x")]
)
async def test_connect_and_trace_are_refused_free(
    make_gateway: MakeGateway, method: str, target: str
) -> None:
    gw = await make_gateway()
    status, _, body = await call_raw(gw, request(gw, target, method=method))
    assert status == 501 and b"method-not-supported" in body
    assert gw.echo.received == 0
    assert await gw.balance() == 100_000


async def test_head_is_priced_as_the_get_route_it_mirrors(
    make_gateway: MakeGateway, prices: str
) -> None:
    gw = await make_gateway(prices_path=prices)
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, "/free", method="HEAD"))
        reply = await read_response(reader, head=True)
    assert reply.status == 200 and reply.headers["x-meter-charged"] == "0"
    assert await gw.balance() == 100_000


# -- framing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "codings",
    [
        ["Transfer-Encoding: gzip, chunked"],
        ["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"],
    ],
    ids=["one-line", "two-lines"],
)
async def test_a_coding_besides_chunked_is_refused_on_one_line_or_two(
    make_gateway: MakeGateway, codings: list[str]
) -> None:
    gw = await make_gateway()
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, method="POST", headers=codings) + b"3\r\nabc\r\n0\r\n\r\n")
        reply = await read_response(reader)
        assert reply.status == 501
        assert reply.json()["type"] == "https://meter.dev/problems/transfer-coding-not-implemented"
        assert await closed_by_server(reader)
    assert gw.echo.received == 0
    assert await gw.balance() == 100_000


class OverrunningUpstream:
    """An upstream that answers each request with a 5-byte body and, past its
    Content-Length, a second response: in the same write, or in a later one."""

    def __init__(self, later: bool) -> None:
        self.later = later
        self.connections = 0
        self.requests = 0
        self.answered = asyncio.Event()
        self.go_on = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                self.requests += 1
                answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                evil = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
                if self.later:
                    writer.write(answer)
                    await writer.drain()
                    self.answered.set()
                    await self.go_on.wait()
                    writer.write(evil)
                else:
                    writer.write(answer + evil)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture(params=[False, True], ids=["same-write", "later-write"])
async def overrunning(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[OverrunningUpstream, str]]:
    upstream = OverrunningUpstream(later=request.param)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield upstream, f"http://127.0.0.1:{port}"
    upstream.go_on.set()
    server.close()


async def test_bytes_past_the_upstreams_framing_are_never_relayed(
    make_gateway: MakeGateway, overrunning: tuple[OverrunningUpstream, str]
) -> None:
    origin, url = overrunning
    gw = await make_gateway(upstream_url=url)
    async with connect(gw) as (reader, writer):
        writer.write(request(gw, "/one"))
        first = await read_response(reader)
        if origin.later:
            await asyncio.wait_for(origin.answered.wait(), 5)
            origin.go_on.set()
            await until(lambda: gw.runtime.metrics.upstream_open.value == 0)
        writer.write(request(gw, "/two"))
        second = await read_response(reader)
    for reply in (first, second):
        assert (reply.status, reply.body, reply.headers["content-length"]) == (200, b"hello", "5")
    assert origin.requests == 2
    assert origin.connections == 2  # the overrun connection was closed, never reused
    assert await gw.balance() == 100_000 - 2 * PRICE
