"""The alternative clients kept to measure the difference: aiohttp upstream, redis-py state.

``METER_UPSTREAM_CLIENT=aiohttp`` (a ``ClientSession``) and
``METER_REDIS_CLIENT=redis-py`` (``LiveState``, one script call per admission)
must keep every promise the default pool and pipe keep; these tests run the
essential ones through the raw server with each alternative.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_gateway import (
    CHAT_MAX,
    CHAT_UNIT,
    PRICE,
    MakeGateway,
    assert_refunded,
    make_gateway,
    problem,
    server_mode,
    upstream,
)

from gateway.testing import pattern_bytes, provision
from meter.local_servers import free_port

FIXTURES = (make_gateway, server_mode, upstream)  # pytest finds them by name in this module

pytestmark = pytest.mark.parametrize("server_mode", ["raw"])

CLIENTS = [
    pytest.param({"upstream_client": "aiohttp"}, id="aiohttp-upstream"),
    pytest.param({"redis_client": "redis-py"}, id="redis-py"),
]


@pytest.mark.parametrize("clients", CLIENTS)
async def test_metered_call_and_streams(make_gateway: MakeGateway, clients: dict[str, Any]) -> None:
    gw = await make_gateway(**clients)
    reply = await gw.call("/v1/things?q=1")
    assert (reply.status, reply.header("X-Meter-Charged")) == (200, PRICE)
    data = pattern_bytes(2 * 1024 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1 << 18):
            yield data[i : i + (1 << 18)]

    posted = await gw.call("/up", method="POST", data=body())
    assert posted.json()["body_sha256"] == hashlib.sha256(data).hexdigest()
    streamed = await gw.call("/down", headers={"X-Echo-Stream": str(len(data))})
    assert streamed.body == data
    head = await gw.call(method="HEAD")
    assert head.status == 200 and head.body == b""
    assert await gw.balance() == 100_000 - 4 * PRICE


@pytest.mark.parametrize("clients", CLIENTS)
async def test_upstream_failures_are_refunded(
    make_gateway: MakeGateway, clients: dict[str, Any]
) -> None:
    down = await make_gateway(upstream_url=f"http://127.0.0.1:{free_port()}", **clients)
    reply = await down.call()
    problem(reply, 502, "upstream-unreachable")
    await assert_refunded(down, reply)


@pytest.mark.parametrize("clients", CLIENTS)
async def test_upstream_timeout_is_504_and_refunded(
    make_gateway: MakeGateway, clients: dict[str, Any]
) -> None:
    gw = await make_gateway(upstream_timeout=0.2, **clients)
    reply = await gw.call(headers={"X-Echo-Hang": "1"})
    problem(reply, 504, "upstream-timeout")
    await assert_refunded(gw, reply)


@pytest.mark.parametrize("clients", CLIENTS)
async def test_variable_cost_settles(make_gateway: MakeGateway, clients: dict[str, Any]) -> None:
    gw = await make_gateway(balance=200_000, **clients)
    reply = await gw.call("/v1/chat/x", method="POST", headers={"X-Echo-Units": "7"})
    assert reply.header("X-Meter-Charged") == 7 * CHAT_UNIT
    assert await gw.balance() == 200_000 - 7 * CHAT_UNIT
    assert CHAT_MAX > 7 * CHAT_UNIT


@pytest.mark.parametrize("clients", CLIENTS)
async def test_redis_down_fails_closed(make_gateway: MakeGateway, clients: dict[str, Any]) -> None:
    gw = await make_gateway(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.5, **clients
    )

    gw.account = await provision(gw.state, balance=10_000)
    problem(await gw.call(), 503, "state-unavailable")
    assert (await gw.http.get(gw.url / "_meter/readyz")).status == 503


@pytest.mark.timeout(60)
@pytest.mark.parametrize("clients", CLIENTS)
async def test_exactly_100_of_2000(make_gateway: MakeGateway, clients: dict[str, Any]) -> None:
    gw = await make_gateway(balance=100 * PRICE, **clients)
    replies = await asyncio.gather(*(gw.call() for _ in range(2_000)))
    assert Counter(r.status for r in replies) == {200: 100, 402: 1_900}
    assert gw.echo.received == 100
    assert await gw.balance() == 0
