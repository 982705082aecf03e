"""The gateway through the real HTTP stack: a real Redis, a real upstream on loopback.

Each test provisions an account straight in Redis, starts the gateway on a
loopback port (backlog large enough for the race tests) with an injected clock,
and calls it with a real aiohttp client: the gateway's HTTP/1.1 server, its
upstream pool and its pipelined Redis state, as in production.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from conftest import TlsRedis
from multidict import CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from gateway import ops
from gateway.refund_retry import backoff
from gateway.runtime import Runtime
from gateway.testing import (
    ECHO,
    EchoState,
    Provisioned,
    echo_app,
    pattern_bytes,
    provision,
    running_gateway,
    until,
)
from meter import keys
from meter.hot_path_state import PipelinedState
from meter.live_state import AccountConfig, LiveState
from meter.local_servers import free_port
from meter.money import SECONDS_PER_DAY
from meter.problems import PROBLEM_CONTENT_TYPE, TYPE_BASE
from meter.settings import Settings

DAY = 20_400
PRICE = 1_000  # the default route of PRICES
CHAT_MAX, CHAT_UNIT = 50_000, 10
PRICES = f"""
[default]
price = {PRICE}

[[routes]]
name = "free"
match = "GET /free"
price = 0

[[routes]]
name = "chat"
match = "POST /v1/chat/*"
max_price = {CHAT_MAX}
unit_price = {CHAT_UNIT}
"""


class Clock:
    def __init__(self, now: float = DAY * SECONDS_PER_DAY + 3_600) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def header(self, name: str) -> int | None:
        value = self.headers.get(name)
        return None if value is None else int(value)


@dataclass
class Gateway:
    url: URL
    runtime: Runtime
    stop: Callable[[], Awaitable[None]]
    clock: Clock
    http: aiohttp.ClientSession
    echo: EchoState
    state: LiveState
    account: Provisioned | None = None
    extra: list[Any] = field(default_factory=list)

    async def call(
        self,
        path: str = "/anything",
        *,
        method: str = "GET",
        key: str | None = "account",
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> Reply:
        sent = dict(headers or {})
        if key == "account":
            assert self.account is not None
            key = self.account.key
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        url = URL(str(self.url) + path, encoded=True)
        async with self.http.request(method, url, headers=sent, **kw) as response:
            return Reply(response.status, response.headers, await response.read())

    async def balance(self) -> int:
        assert self.account is not None
        rec = self.account.record
        account = await self.state.read_account(rec.shard, rec.account_id)
        assert account is not None
        return account.balance

    async def events(self) -> list[dict[str, str]]:
        """The shard's usage events, each with its stream id under "id"."""
        assert self.account is not None
        stream = keys.usage_stream(self.account.record.shard)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self.state.redis.xrange(stream)  # type: ignore[assignment]
        return [
            {"id": i.decode(), **{k.decode(): v.decode() for k, v in f.items()}} for i, f in entries
        ]

    async def metric(self, name: str, **labels: str) -> float:
        text = self.runtime.metrics.exposition().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return sample.value
        return 0.0


MakeGateway = Callable[..., Awaitable[Gateway]]


async def start_gateway(
    settings: Settings, clock: Callable[[], float]
) -> tuple[URL, Runtime, Callable[[], Awaitable[None]]]:
    """The gateway on a loopback port: (url, runtime, stop)."""
    stack = AsyncExitStack()
    url, runtime = await stack.enter_async_context(running_gateway(settings, clock=clock))
    stopped = False

    async def stop() -> None:  # idempotent: a test may stop the gateway itself
        nonlocal stopped
        if not stopped:
            stopped = True
            await stack.aclose()

    return URL(url), runtime, stop


@pytest.fixture
async def upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[TestServer]:
    server = await aiohttp_server(echo_app())
    yield server
    server.app[ECHO].hang.set()  # let hanging handlers end before the server closes
    server.app[ECHO].gate.set()


@pytest.fixture
async def make_gateway(
    redis_url: str, live_state: LiveState, upstream: TestServer, tmp_path: Path
) -> AsyncIterator[MakeGateway]:
    prices = tmp_path / "prices.toml"
    prices.write_text(PRICES)
    started: list[Gateway] = []

    async def make(
        *,
        clock: Clock | None = None,
        balance: int = 100_000,
        account: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> Gateway:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "upstream_url": str(upstream.make_url("/")),
            "prices_path": str(prices),
        }
        values.update(overrides)
        settings = Settings.from_env({}, **values)
        clock = clock or Clock()
        url, runtime, stop = await start_gateway(settings, clock)
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        gw = Gateway(url, runtime, stop, clock, http, upstream.app[ECHO], live_state)
        started.append(gw)
        if account is not None or balance:
            gw.account = await provision(live_state, balance=balance, **(account or {}))
        return gw

    yield make
    for gw in started:
        await gw.http.close()
        await gw.stop()


def problem(reply: Reply, status: int, slug: str) -> dict[str, Any]:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    doc: dict[str, Any] = reply.json()
    assert doc["type"] == TYPE_BASE + slug
    assert doc["status"] == status
    return doc


def echoed_headers(reply: Reply) -> dict[str, str]:
    return {k.lower(): v for k, v in reply.json()["headers"]}


# -- the happy path ----------------------------------------------------------------------


async def test_happy_path_debits_forwards_and_reports(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(balance=10_000)
    reply = await gw.call("/v1/things?q=1&r=%20x")
    assert reply.status == 200
    assert reply.json()["path"] == "/v1/things?q=1&r=%20x"
    assert (reply.header("X-Meter-Charged"), reply.header("X-Credits-Available")) == (1_000, 9_000)
    assert "X-Daily-Limit-Remaining" not in reply.headers
    assert await gw.balance() == 9_000
    seen = echoed_headers(reply)
    assert gw.account is not None
    rec = gw.account.record
    assert (seen["x-meter-account"], seen["x-meter-project"], seen["x-meter-key-id"]) == (
        rec.account_id,
        rec.project_id,
        rec.key_id,
    )
    assert seen["x-meter-route"] == "default"
    [event] = await gw.events()
    assert (event["t"], event["a"], event["r"], event["m"], event["d"]) == (
        "d",
        rec.account_id,
        "default",
        "1000",
        str(DAY),
    )


async def test_free_route_costs_nothing_and_limit_header_shows(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(balance=5_000, account={"daily_hard_limit": 3_000})
    reply = await gw.call("/free")
    assert reply.status == 200
    assert reply.header("X-Meter-Charged") == 0
    assert reply.header("X-Credits-Available") == 3_000
    assert reply.header("X-Daily-Limit-Remaining") == 3_000
    assert await gw.balance() == 5_000


@pytest.mark.parametrize("style", ["bearer", "x-api-key"])
async def test_key_from_either_header_never_reaches_upstream(
    make_gateway: MakeGateway, style: str
) -> None:
    gw = await make_gateway()
    assert gw.account is not None
    secret = gw.account.key
    sent = {"Authorization": f"Bearer {secret}"} if style == "bearer" else {"X-API-Key": secret}
    reply = await gw.call(key=None, headers=sent)
    assert reply.status == 200
    seen = echoed_headers(reply)
    assert "authorization" not in seen and "x-api-key" not in seen
    assert secret not in reply.body.decode()


async def test_hop_by_hop_headers_are_stripped_both_ways(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    response_headers = [
        ["Connection", "X-Secret-Hop"],
        ["X-Secret-Hop", "1"],
        ["Keep-Alive", "timeout=5"],
        ["Proxy-Authenticate", "Basic"],
        ["Trailer", "X-T"],
        ["X-Meter-Charged", "999999"],
        ["X-Credits-Available", "999999"],
        ["X-Kept", "yes"],
    ]
    reply = await gw.call(
        headers={
            "Connection": "keep-alive, X-Client-Hop",
            "X-Client-Hop": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic eA==",
            "Proxy-Foo": "bar",
            "TE": "trailers",
            "Upgrade": "h2c",
            "X-Meter-Account": "spoofed",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Client-Kept": "yes",
            "X-Echo-Headers": orjson.dumps(response_headers).decode(),
        }
    )
    assert reply.status == 200
    seen = echoed_headers(reply)
    for gone in ("x-client-hop", "keep-alive", "proxy-authorization", "proxy-foo", "te", "upgrade"):
        assert gone not in seen, gone
    assert "x-client-hop" not in seen.get("connection", "").lower()  # the gateway's own hop
    assert seen["x-client-kept"] == "yes"
    assert gw.account is not None
    assert seen["x-meter-account"] == gw.account.record.account_id
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"{gw.url.host}:{gw.url.port}"
    assert seen["host"] != seen["x-forwarded-host"]  # the upstream's own Host
    for gone in ("X-Secret-Hop", "Keep-Alive", "Proxy-Authenticate", "Trailer"):
        assert gone not in reply.headers, gone
    assert reply.headers["X-Kept"] == "yes"
    assert reply.headers.getall("X-Meter-Charged") == [str(PRICE)]
    assert reply.headers.getall("X-Credits-Available") == [str(100_000 - PRICE)]


async def test_head_and_no_content_pass_through(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    head = await gw.call(method="HEAD")
    assert (head.status, head.body) == (200, b"")
    assert int(head.headers["Content-Length"]) > 0
    empty = await gw.call(headers={"X-Echo-Status": "204"})
    assert (empty.status, empty.body) == (204, b"")
    assert empty.header("X-Meter-Charged") == PRICE


# -- streaming ---------------------------------------------------------------------------

BIG = 6 * 1024 * 1024


async def test_request_body_streams_through_chunked(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    first = pattern_bytes(65_536)
    rest = pattern_bytes(BIG - len(first), len(first))

    async def body() -> AsyncIterator[bytes]:
        yield first
        # The upstream gets the first chunk before the client sends the rest: no buffering.
        async with asyncio.timeout(10):
            await gw.echo.first_body_chunk.wait()
        for i in range(0, len(rest), 1 << 20):
            yield rest[i : i + (1 << 20)]

    reply = await gw.call(method="POST", data=body())
    assert reply.status == 200
    doc = reply.json()
    assert doc["body_bytes"] == BIG
    assert doc["body_sha256"] == hashlib.sha256(first + rest).hexdigest()
    assert echoed_headers(reply).get("transfer-encoding") == "chunked"


async def test_request_body_with_content_length_keeps_it(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    data = pattern_bytes(3 * 1024 * 1024)
    reply = await gw.call(method="PUT", data=io.BytesIO(data))
    assert reply.status == 200
    assert reply.json()["body_bytes"] == len(data)
    assert reply.json()["body_sha256"] == hashlib.sha256(data).hexdigest()
    seen = echoed_headers(reply)
    assert seen["content-length"] == str(len(data)) and "transfer-encoding" not in seen


async def test_response_body_streams_back_chunked(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    assert gw.account is not None
    headers = {
        "Authorization": f"Bearer {gw.account.key}",
        "X-Echo-Stream": str(BIG),
        "X-Echo-Gate": "1",
    }
    digest, size = hashlib.sha256(), 0
    async with gw.http.get(gw.url / "download", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert response.headers["X-Meter-Charged"] == str(PRICE)
        async with asyncio.timeout(10):
            first = await response.content.readany()
        # The upstream holds the rest until the client has the first chunk: no buffering.
        gw.echo.gate.set()
        digest.update(first)
        size += len(first)
        async for chunk in response.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
    assert size == BIG
    assert digest.hexdigest() == hashlib.sha256(pattern_bytes(BIG)).hexdigest()


async def test_upstream_body_breaking_off_cuts_the_client_connection(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway()
    with pytest.raises(aiohttp.ClientPayloadError):
        await gw.call(headers={"X-Echo-Stream": str(BIG), "X-Echo-Abort-After": "200000"})
    assert await gw.metric("meter_gateway_upstream_aborted_total") == 1
    assert await gw.balance() == 100_000 - PRICE  # the head was a 200: charged


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "slug"),
    [
        ({}, "missing-api-key"),
        ({"Authorization": "Basic dXNlcg=="}, "missing-api-key"),
        ({"X-API-Key": "mtr_" + "A" * 38}, "malformed-api-key"),
        ({"Authorization": "Bearer sk_live_something"}, "malformed-api-key"),
    ],
)
async def test_401_without_a_usable_key(
    make_gateway: MakeGateway, headers: dict[str, str], slug: str
) -> None:
    gw = await make_gateway()
    reply = await gw.call(key=None, headers=headers)
    problem(reply, 401, slug)
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert gw.echo.received == 0
    assert await gw.metric("meter_gateway_key_cache_total", result="miss") == 0


@pytest.mark.parametrize(
    "twice", [("Authorization", "Bearer {key}"), ("X-API-Key", "{key}")], ids=lambda t: t[0]
)
async def test_400_when_the_key_header_comes_twice(
    make_gateway: MakeGateway, twice: tuple[str, str]
) -> None:
    """Two Authorization (or X-API-Key) headers, even naming the same key: which one pays
    is not for the gateway to guess (a proxy in front may have checked the other)."""
    from multidict import CIMultiDict

    gw = await make_gateway()
    assert gw.account is not None
    name, value = twice
    sent = CIMultiDict([(name, value.format(key=gw.account.key))] * 2)
    async with gw.http.get(gw.url / "anything", headers=sent) as response:
        reply = Reply(response.status, response.headers, await response.read())
    problem(reply, 400, "repeated-api-key")
    assert gw.echo.received == 0
    assert await gw.balance() == 100_000 and await gw.events() == []
    assert await gw.metric("meter_gateway_key_cache_total", result="miss") == 0
    assert (await gw.call()).status == 200  # and the next call goes through


@pytest.mark.parametrize("cross_shard", ["auto", "false"])
async def test_401_unknown_key_then_remembered(make_gateway: MakeGateway, cross_shard: str) -> None:
    """Resolved by the admission script (auto, a single Redis) or by a lookup first, an
    unknown key is refused, changes nothing and is not asked about again within the TTL."""
    from meter import apikeys

    gw = await make_gateway(admit_cross_shard=cross_shard)
    if gw.runtime.batching is not None:
        await gw.runtime.batching
    stranger = apikeys.generate()
    for _ in range(3):
        problem(await gw.call(key=stranger), 401, "unknown-api-key")
    assert gw.echo.received == 0
    assert await gw.events() == []
    assert await gw.metric("meter_gateway_key_cache_total", result="miss") == 1
    assert await gw.metric("meter_gateway_key_cache_total", result="negative_hit") == 2
    asked = await gw.metric("meter_gateway_redis_seconds_count", op="admit")
    asked += await gw.metric("meter_gateway_redis_seconds_count", op="key")
    assert asked == 1
    assert (await gw.call()).status == 200  # the account's own key still works


@pytest.mark.parametrize("cross_shard", ["auto", "false"])
async def test_an_unknown_route_is_a_401_for_an_unknown_key_and_a_404_for_a_known_one(
    make_gateway: MakeGateway, tmp_path: Path, cross_shard: str
) -> None:
    """Whether the key is cached or not, a caller learns nothing of the routes until
    its key is known."""
    from meter import apikeys

    strict = tmp_path / "strict.toml"
    strict.write_text(
        '[default]\nrefuse = true\n[[routes]]\nname = "a"\nmatch = "GET /a"\nprice = 5'
    )
    gw = await make_gateway(prices_path=str(strict), admit_cross_shard=cross_shard)
    if gw.runtime.batching is not None:
        await gw.runtime.batching
    problem(await gw.call("/b", key=apikeys.generate()), 401, "unknown-api-key")
    problem(await gw.call("/b", key=None), 401, "missing-api-key")
    problem(await gw.call("/b"), 404, "no-such-route")  # a cold cache: looked up
    problem(await gw.call("/b"), 404, "no-such-route")  # now cached
    assert gw.echo.received == 0
    assert await gw.events() == []
    # each call counted once: two misses (the stranger's key, then the account's), one hit
    assert await gw.metric("meter_gateway_key_cache_total", result="miss") == 2
    assert await gw.metric("meter_gateway_key_cache_total", result="hit") == 1


async def test_403_revoked_key_at_once_even_when_cached(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    assert gw.account is not None
    rec = gw.account.record
    assert (await gw.call()).status == 200  # the key is now in the cache
    await gw.state.revoke_key(rec.shard, rec.account_id, rec.key_id)
    refused = await gw.call()
    problem(refused, 403, "api-key-revoked")
    assert "X-Credits-Available" not in refused.headers  # a revoked key learns nothing more
    assert gw.echo.received == 1
    assert await gw.balance() == 100_000 - PRICE


async def test_403_suspended_account_then_resumed(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    assert gw.account is not None
    rec = gw.account.record

    def config(version: int, suspended: bool) -> AccountConfig:
        return AccountConfig(version, 0, None, None, None, suspended)

    assert (await gw.call()).status == 200
    await gw.state.sync_account(rec.shard, rec.account_id, config(2, True))
    problem(await gw.call(), 403, "account-suspended")
    await gw.state.sync_account(rec.shard, rec.account_id, config(3, False))
    assert (await gw.call()).status == 200
    assert gw.echo.received == 2


async def test_402_when_the_price_does_not_fit(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(balance=1_500)
    assert (await gw.call()).status == 200
    reply = await gw.call()
    doc = problem(reply, 402, "insufficient-credits")
    assert (doc["price"], doc["available"]) == (PRICE, 500)
    assert (reply.header("X-Credits-Available"), reply.header("X-Meter-Charged")) == (500, 0)
    assert gw.echo.received == 1
    assert await gw.balance() == 500


async def test_429_until_midnight_utc_then_admitted_again(make_gateway: MakeGateway) -> None:
    clock = Clock(DAY * SECONDS_PER_DAY + 23 * 3600 + 0.25)  # 23:00:00.25 UTC
    gw = await make_gateway(clock=clock, account={"daily_hard_limit": 2 * PRICE})
    assert (await gw.call()).header("X-Daily-Limit-Remaining") == PRICE
    assert (await gw.call()).header("X-Daily-Limit-Remaining") == 0
    reply = await gw.call()
    doc = problem(reply, 429, "daily-limit-reached")
    assert reply.headers["Retry-After"] == "3600"  # 59:59.75 left, rounded up
    assert doc["retry_after"] == 3600
    assert reply.header("X-Daily-Limit-Remaining") == 0
    clock.now = (DAY + 1) * SECONDS_PER_DAY + 1  # 00:00:01 the next day
    reply = await gw.call()
    assert reply.status == 200
    assert reply.header("X-Daily-Limit-Remaining") == PRICE
    assert gw.echo.received == 3
    assert await gw.balance() == 100_000 - 3 * PRICE


async def test_400_for_dot_segments(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    doc = problem(await gw.call("/free/%2e%2e/v1/chat/x"), 400, "bad-path")
    assert "dot segments" in str(doc["detail"])
    assert gw.echo.received == 0


async def test_404_for_unmatched_routes_when_the_table_refuses_them(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    strict = tmp_path / "strict.toml"
    strict.write_text(
        '[default]\nrefuse = true\n[[routes]]\nname = "a"\nmatch = "GET /a"\nprice = 5'
    )
    gw = await make_gateway(prices_path=str(strict))
    problem(await gw.call("/b"), 404, "no-such-route")
    assert (await gw.call("/a")).header("X-Meter-Charged") == 5
    assert gw.echo.received == 1


async def test_413_declared_length_is_refused_before_admission(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(max_body_bytes=1_000)
    problem(await gw.call(method="POST", data=b"x" * 1_001), 413, "body-too-large")
    assert gw.echo.received == 0
    assert await gw.events() == []
    assert (await gw.call(method="POST", data=b"x" * 1_000)).status == 200


async def test_413_chunked_body_counted_while_streaming_and_refunded(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway(max_body_bytes=100_000)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"y" * 10_000

    reply = await gw.call(method="POST", data=body())
    problem(reply, 413, "body-too-large")
    assert reply.header("X-Meter-Charged") == 0
    assert await gw.balance() == 100_000
    debit, refund = await gw.events()
    assert (debit["t"], refund["t"], refund["m"]) == ("d", "r", str(PRICE))
    assert await gw.metric("meter_gateway_refunds_total", reason="body_too_large") == 1


# -- upstream failures and refunds ---------------------------------------------------------


async def assert_refunded(gw: Gateway, reply: Reply) -> None:
    assert reply.header("X-Meter-Charged") == 0
    assert reply.header("X-Credits-Available") == 100_000
    assert await gw.balance() == 100_000
    debit, refund = await gw.events()
    assert (debit["t"], debit["m"]) == ("d", str(PRICE))
    assert (refund["t"], refund["m"]) == ("r", str(PRICE))
    assert refund["o"] == debit["id"]  # the refund names the call it gives back


async def test_502_upstream_down_is_refunded(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(upstream_url=f"http://127.0.0.1:{free_port()}")
    reply = await gw.call()
    problem(reply, 502, "upstream-unreachable")
    await assert_refunded(gw, reply)
    assert await gw.metric("meter_gateway_refunds_total", reason="upstream_failure") == 1


async def test_504_upstream_too_slow_is_refunded(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(upstream_timeout=0.2)
    reply = await gw.call(headers={"X-Echo-Hang": "1"})
    problem(reply, 504, "upstream-timeout")
    await assert_refunded(gw, reply)


async def test_upstream_5xx_passes_through_refunded(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    reply = await gw.call(headers={"X-Echo-Status": "503"})
    assert reply.status == 503
    assert reply.json()["method"] == "GET"  # the upstream's own body
    await assert_refunded(gw, reply)
    assert (
        await gw.metric("meter_gateway_calls_total", route="default", outcome="upstream_failed")
        == 1
    )


async def test_no_refunds_when_configured_off(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(refund_upstream_errors=False)
    reply = await gw.call(headers={"X-Echo-Status": "500"})
    assert (reply.status, reply.header("X-Meter-Charged")) == (500, PRICE)
    assert await gw.balance() == 100_000 - PRICE
    assert [e["t"] for e in await gw.events()] == ["d"]


async def test_502_malformed_upstream_response(make_gateway: MakeGateway) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 ok-ish\r\nthis is not http\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gw = await make_gateway(upstream_url=f"http://127.0.0.1:{port}")
        reply = await gw.call()
        problem(reply, 502, "upstream-bad-response")
        await assert_refunded(gw, reply)
    finally:
        server.close()


async def test_a_gateway_failure_answers_500_and_refunds(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await make_gateway()
    proxy = gw.runtime.proxy
    assert proxy is not None

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug between admission and the upstream")

    monkeypatch.setattr(proxy.upstream, "send", broken)
    reply = await gw.call()
    problem(reply, 500, "internal")
    await assert_refunded(gw, reply)
    assert gw.echo.received == 0


# -- Redis: fail closed --------------------------------------------------------------------


async def test_503_when_redis_is_unreachable(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.5)
    gw.account = await provision(gw.state, balance=10_000)  # in the real Redis, out of reach
    problem(await gw.call(), 503, "state-unavailable")
    ready = await gw.http.get(gw.url / "_meter/readyz")
    assert ready.status == 503
    assert gw.echo.received == 0


class TcpRelay:
    """A loopback TCP relay to Redis that the test can cut: a network partition."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.requests = True  # pass on what clients send (False: drop it)
        self.replies = True  # pass on what Redis answers (False: drop it)

    async def start(self) -> int:
        """Listen (again, on the same port after a ``cut``): the partition heals."""
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, on: Callable[[], bool]
        ) -> None:
            try:
                while data := await src.read(65_536):
                    if on():
                        dst.write(data)
                        await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(
            pipe(reader, up_writer, lambda: self.requests),
            pipe(up_reader, writer, lambda: self.replies),
        )

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()


async def test_503_when_redis_goes_away_after_the_key_is_cached(
    make_gateway: MakeGateway, redis_url: str
) -> None:
    gw, relay = await behind_relay(make_gateway, redis_url)
    assert (await gw.call()).status == 200
    await relay.cut()
    problem(await gw.call(), 503, "state-unavailable")
    assert gw.echo.received == 1
    assert await gw.balance() == 100_000 - PRICE  # read through the fixture's own connection


async def test_503_when_redis_goes_away_before_the_key_is_cached(
    make_gateway: MakeGateway, redis_url: str
) -> None:
    """The admission script would have resolved the key (a single Redis): with Redis
    gone the call fails closed, and nothing is learned about the key."""
    gw, relay = await behind_relay(make_gateway, redis_url)
    assert gw.runtime.batching is not None and await gw.runtime.batching is True
    await relay.cut()
    for _ in range(2):
        problem(await gw.call(), 503, "state-unavailable")
    assert gw.echo.received == 0
    assert await gw.metric("meter_gateway_key_cache_total", result="miss") == 2
    assert await gw.metric("meter_gateway_key_cache_total", result="negative_hit") == 0
    assert await gw.balance() == 100_000  # read through the fixture's own connection


# -- refunds Redis could not take -------------------------------------------------------------


async def behind_relay(
    make_gateway: MakeGateway, redis_url: str, **overrides: Any
) -> tuple[Gateway, TcpRelay]:
    """A gateway that reaches Redis through a relay the test can cut and heal. At the
    end, what it could not give back while Redis was away gets a second of grace."""
    overrides.setdefault("shutdown_grace", 1.0)
    relay = TcpRelay(URL(redis_url).port or 6379)
    port = await relay.start()
    gw = await make_gateway(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.5, **overrides)
    return gw, relay


async def refund_missed(gw: Gateway, relay: TcpRelay) -> None:
    """A call the upstream fails with a 503, Redis cut off while the upstream works on it:
    the refund cannot be applied when the answer goes out."""
    call = asyncio.ensure_future(gw.call(headers={"X-Echo-Hang": "1", "X-Echo-Status": "503"}))
    await asyncio.wait_for(gw.echo.arrived.wait(), 5)  # admitted, and at the upstream
    await relay.cut()
    gw.echo.hang.set()
    reply = await call
    assert reply.status == 503
    assert reply.header("X-Meter-Charged") == PRICE  # as it stands when the answer goes out
    assert await gw.metric("meter_gateway_refund_errors_total") == 1
    assert await gw.metric("meter_gateway_refunds_pending") == 1
    assert await gw.balance() == 100_000 - PRICE


async def test_a_refund_redis_missed_is_applied_once_it_is_back(
    make_gateway: MakeGateway, redis_url: str
) -> None:
    gw, relay = await behind_relay(make_gateway, redis_url)
    await refund_missed(gw, relay)
    await relay.start()
    await until(lambda: gw.runtime.metrics.refunds_pending.value == 0, within=15)
    assert await gw.balance() == 100_000
    assert [e["t"] for e in await gw.events()] == ["d", "r"]  # the ledger books it once
    assert await gw.metric("meter_gateway_refunds_total", reason="upstream_5xx") == 1
    assert await gw.metric("meter_gateway_refunded_micros_total") == PRICE
    assert await gw.metric("meter_gateway_refunds_dropped_total") == 0
    await relay.cut()


async def test_a_refund_is_given_up_after_the_retry_period(
    make_gateway: MakeGateway, redis_url: str
) -> None:
    gw, relay = await behind_relay(make_gateway, redis_url, refund_retry_seconds=0.3)
    await refund_missed(gw, relay)
    await until(lambda: gw.runtime.metrics.refunds_dropped.value == 1, within=10)
    assert await gw.metric("meter_gateway_refunds_pending") == 0
    await relay.start()  # too late: it is not applied behind the operator's back
    assert (await gw.call()).status == 200
    assert await gw.balance() == 100_000 - 2 * PRICE
    assert await gw.metric("meter_gateway_refunds_total", reason="upstream_5xx") == 0
    await relay.cut()


async def test_refunds_still_waiting_get_the_shutdown_grace(
    make_gateway: MakeGateway, redis_url: str
) -> None:
    gw, relay = await behind_relay(make_gateway, redis_url, shutdown_grace=0.3)
    await refund_missed(gw, relay)
    await gw.stop()
    assert gw.runtime.metrics.refunds_dropped.value == 1
    assert gw.runtime.metrics.refunds_pending.value == 0
    assert await gw.balance() == 100_000 - PRICE


async def test_a_refund_that_timed_out_is_given_back_exactly_once(
    make_gateway: MakeGateway,
) -> None:
    """Redis slow rather than gone: the settle call times out (it may or may not have run);
    the retries give the price back once, whatever the first try did."""
    gw = await make_gateway(redis_timeout=0.3)
    call = asyncio.ensure_future(gw.call(headers={"X-Echo-Hang": "1", "X-Echo-Status": "503"}))
    await asyncio.wait_for(gw.echo.arrived.wait(), 5)
    await gw.state.redis.execute_command("CLIENT", "PAUSE", "1000", "ALL")
    gw.echo.hang.set()
    reply = await call
    assert reply.status == 503 and reply.header("X-Meter-Charged") == PRICE
    await until(lambda: gw.runtime.metrics.refunds_pending.value == 0, within=15)
    assert await gw.balance() == 100_000
    assert [e["t"] for e in await gw.events()] == ["d", "r"]
    assert await gw.metric("meter_gateway_refunds_dropped_total") == 0


@pytest.mark.parametrize("lost", ["reply", "request"])
async def test_a_call_answered_503_for_a_lost_admission_reply_is_not_charged(
    make_gateway: MakeGateway, redis_url: str, lost: str
) -> None:
    """The admission batch went out and no reply came: the callers get 503. If it ran
    (its reply was lost), its debits are refunded once Redis answers again; if it did
    not (the request was lost), it is voided and never runs."""
    gw, relay = await behind_relay(make_gateway, redis_url)
    assert (await gw.call()).status == 200  # the key is cached: the next call is batched
    if lost == "reply":
        relay.replies = False
    else:
        relay.requests = False
    problem(await gw.call(), 503, "state-unavailable")
    assert gw.echo.received == 1
    relay.replies = relay.requests = True
    await until(lambda: gw.runtime.metrics.refunds_pending.value == 0, within=15)
    assert await gw.balance() == 100_000 - PRICE  # the first call only
    events = [e["t"] for e in await gw.events()]
    assert events == (["d", "d", "r"] if lost == "reply" else ["d"])
    refunded = 1 if lost == "reply" else 0
    assert await gw.metric("meter_gateway_refunds_total", reason="lost_reply") == refunded
    assert await gw.metric("meter_gateway_refunds_dropped_total") == 0
    assert (await gw.call()).status == 200  # and on it goes
    await relay.cut()


def test_refund_retries_back_off_to_five_seconds() -> None:
    assert [backoff(n) for n in range(4)] == [0.05, 0.1, 0.2, 0.4]
    assert backoff(7) == 5.0 and backoff(10_000) == 5.0


async def test_metered_calls_over_tls_to_redis(
    make_gateway: MakeGateway, tls_redis: TlsRedis
) -> None:
    """``rediss://``: admissions (batched through the pipe), refunds and the key lookup all
    go over TLS, exactly as over plain TCP."""
    state = LiveState.from_url(tls_redis.server.url)  # the same Redis, for the checks
    try:
        gw = await make_gateway(redis_url=tls_redis.url(), balance=0)
        gw.state = state
        gw.account = await provision(state, balance=10_000)
        for _ in range(3):
            reply = await gw.call()
            assert (reply.status, reply.header("X-Meter-Charged")) == (200, PRICE)
        failed = await gw.call(headers={"X-Echo-Status": "503"})  # refunded
        assert (failed.status, failed.header("X-Meter-Charged")) == (503, 0)
        assert await gw.balance() == 10_000 - 3 * PRICE
        assert [e["t"] for e in await gw.events()] == ["d", "d", "d", "d", "r"]
    finally:
        await state.close()


async def test_503_when_the_account_state_is_missing(make_gateway: MakeGateway) -> None:
    from gateway.testing import add_key
    from meter.live_state import KeyRecord

    gw = await make_gateway(balance=0)
    gw.account = await add_key(gw.state, KeyRecord("key_x", "proj_x", "acct_nowhere", 2))
    problem(await gw.call(), 503, "account-state-missing")
    assert gw.echo.received == 0


# -- variable cost ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "charged", "invalid"),
    [
        ("123", 123 * CHAT_UNIT, 0),
        ("0", 0, 0),
        ("999999", CHAT_MAX, 0),  # capped at the reserve
        ("lots", CHAT_MAX, 1),  # garbage: the maximum, counted
        (None, CHAT_MAX, 1),  # missing: the maximum, counted
    ],
)
async def test_variable_cost_reserves_then_settles(
    make_gateway: MakeGateway, units: str | None, charged: int, invalid: int
) -> None:
    gw = await make_gateway(balance=200_000)
    headers = {} if units is None else {"X-Echo-Units": units}
    reply = await gw.call("/v1/chat/completions", method="POST", json={"q": 1}, headers=headers)
    assert reply.status == 200
    assert reply.header("X-Meter-Charged") == charged
    assert reply.header("X-Credits-Available") == 200_000 - charged
    assert await gw.balance() == 200_000 - charged
    events = await gw.events()
    assert events[0]["m"] == str(CHAT_MAX)  # the reserve
    refunds = [e for e in events if e["t"] == "r"]
    assert [int(e["m"]) for e in refunds] == ([CHAT_MAX - charged] if charged < CHAT_MAX else [])
    assert await gw.metric("meter_gateway_units_header_invalid_total", route="chat") == invalid


async def test_variable_cost_needs_the_reserve_to_fit(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(balance=CHAT_MAX - 1)
    reply = await gw.call("/v1/chat/x", method="POST", headers={"X-Echo-Units": "1"})
    doc = problem(reply, 402, "insufficient-credits")
    assert doc["price"] == CHAT_MAX
    assert gw.echo.received == 0


# -- operations ------------------------------------------------------------------------------


async def test_ops_endpoints_are_served_not_proxied(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    await gw.call()
    await gw.call(key=None)
    health = await gw.http.get(gw.url / "_meter/healthz")
    assert health.status == 200 and (await health.json())["status"] == "ok"
    ready = await gw.http.get(gw.url / "_meter/readyz")
    assert ready.status == 200
    nothing = await gw.http.get(gw.url / "_meter/nothing")
    assert nothing.status == 404 and nothing.content_type == PROBLEM_CONTENT_TYPE
    public = await gw.http.get(gw.url / "_meter/metrics")  # not for customers to read
    assert public.status == 404 and public.content_type == PROBLEM_CONTENT_TYPE
    assert b"meter_gateway" not in await public.read()
    runner, port = await ops.serve_operations(gw.runtime, "127.0.0.1", 0)
    try:
        scrape = await gw.http.get(f"http://127.0.0.1:{port}/metrics")
        assert scrape.status == 200 and scrape.content_type == "text/plain"
        text = await scrape.text()
        for path in ("healthz", "readyz"):
            assert (await gw.http.get(f"http://127.0.0.1:{port}/{path}")).status == 200
    finally:
        await runner.cleanup()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert (
        samples[("meter_gateway_calls_total", (("outcome", "forwarded"), ("route", "default")))]
        == 1
    )
    assert samples[("meter_gateway_calls_total", (("outcome", "refused"), ("route", "-")))] == 1
    assert samples[("meter_gateway_refusals_total", (("reason", "missing-api-key"),))] == 1
    assert samples[("meter_gateway_charged_micros_total", (("route", "default"),))] == PRICE
    assert samples[("meter_gateway_key_cache_total", (("result", "miss"),))] == 1
    assert samples[("meter_gateway_redis_seconds_count", (("op", "admit"),))] == 1
    # on a single Redis the admission script resolved the key: no lookup of its own
    assert samples[("meter_gateway_redis_seconds_count", (("op", "key"),))] == 0
    assert samples[("meter_gateway_overhead_seconds_count", ())] == 2
    assert samples[("meter_gateway_upstream_seconds_count", ())] == 1
    assert samples[("meter_gateway_in_flight", ())] == 0
    assert samples[("process_resident_memory_bytes", ())] > 1 << 20
    assert ("python_gc_collections_total", (("generation", "0"),)) in samples
    assert gw.echo.received == 1


async def test_admissions_batch_across_shards_unless_told_not_to(
    make_gateway: MakeGateway,
) -> None:
    auto = await make_gateway()
    assert isinstance(auto.runtime.state, PipelinedState)
    assert auto.runtime.batching is not None and await auto.runtime.batching is True
    assert auto.runtime.state.batcher.cross_shard
    per_shard = await make_gateway(admit_cross_shard="false", balance=0)
    assert per_shard.runtime.batching is None
    assert isinstance(per_shard.runtime.state, PipelinedState)
    assert not per_shard.runtime.state.batcher.cross_shard
    assert (await auto.call()).status == 200


@pytest.mark.parametrize("cross_shard", ["auto", "false"])
async def test_key_cache_hits_after_the_first_call(
    make_gateway: MakeGateway, cross_shard: str
) -> None:
    """On a single Redis (auto) the first call's admission resolves the key; with
    per-shard batches (as on a cluster) the key is looked up first."""
    gw = await make_gateway(admit_cross_shard=cross_shard)
    if gw.runtime.batching is not None:
        await gw.runtime.batching
    for _ in range(3):
        assert (await gw.call()).status == 200
    assert await gw.metric("meter_gateway_key_cache_total", result="miss") == 1
    assert await gw.metric("meter_gateway_key_cache_total", result="hit") == 2
    lookups = await gw.metric("meter_gateway_redis_seconds_count", op="key")
    assert lookups == (0 if cross_shard == "auto" else 1)
    assert await gw.metric("meter_gateway_redis_seconds_count", op="admit") == 3
