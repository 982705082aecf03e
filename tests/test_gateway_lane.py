"""The raw server's lane: a call whose key is cached is forwarded and answered in callbacks.

Once a key is cached, a call's admission starts with its head (``Proxy.begin``);
when the admission's reply is in, ``Proxy.forward_now`` sends it upstream, and
when the upstream's answer is in, ``Proxy.relay_now`` answers the client: no
task of the connection runs. Anything but the plain case is handed to that
task, whose ``handle`` goes on from where the lane stopped. These tests warm
the key with one call, then drive each way through: the plain case, and each
reason to hand over, with the money, the answer and the lane metric
(``meter_gateway_lane_total{result}``) checked every time.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib

import pytest
from test_gateway import (
    CHAT_UNIT,
    PRICE,
    Gateway,
    MakeGateway,
    make_gateway,
    problem,
    upstream,
)
from test_gateway_http import _answering_tasks, connect, read_response, request

from gateway.testing import pattern_bytes, until

FIXTURES = (make_gateway, upstream)  # pytest finds them by name in this module


RESULTS = (
    "answered",
    "refused",
    "redis_failed",
    "request_body",
    "new_connection",
    "upstream_failed",
    "upstream_5xx",
    "variable_cost",
    "response_streamed",
    "error",
)


async def lane(gw: Gateway) -> dict[str, float]:
    """The lane counter by result, the zeros left out."""
    counts = {r: await gw.metric("meter_gateway_lane_total", result=r) for r in RESULTS}
    return {r: n for r, n in counts.items() if n}


async def warmed(gw: Gateway) -> None:
    """One call caches the key (its admission resolves the key: not the lane's case)."""
    assert (await gw.call("/warm")).status == 200
    assert await lane(gw) == {}


async def test_a_plain_call_is_answered_by_the_lane(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    await warmed(gw)
    got = await gw.call("/v1/plain?x=1")
    body = pattern_bytes(3_000)
    posted = await gw.call("/v1/posted", method="POST", data=body)
    for reply in (got, posted):
        assert reply.status == 200
        assert reply.header("X-Meter-Charged") == PRICE
    assert got.json()["path"] == "/v1/plain?x=1"
    assert posted.json()["body_bytes"] == len(body)
    assert posted.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert posted.header("X-Credits-Available") == 100_000 - 3 * PRICE
    assert await lane(gw) == {"answered": 2}
    assert await gw.balance() == 100_000 - 3 * PRICE
    assert [e["m"] for e in await gw.events()] == [str(PRICE)] * 3
    assert await gw.metric("meter_gateway_calls_total", route="default", outcome="forwarded") == 3
    assert await gw.metric("meter_gateway_overhead_seconds_count") == 3
    assert await gw.metric("meter_gateway_upstream_seconds_count") == 3
    assert await gw.metric("meter_gateway_redis_seconds_count", op="admit") == 3
    assert await gw.metric("meter_gateway_in_flight") == 0
    assert len(_answering_tasks()) == 1  # the warm-up's (its key was not cached): no other


@pytest.mark.parametrize(
    ("balance", "status", "results", "close"),
    [
        (100_000, 200, {"answered": 20}, ""),
        (1_500, 402, {"refused": 20}, ""),
        (100_000, 503, {"upstream_5xx": 20}, ""),
        (100_000, 200, {"answered": 20}, "client"),
        # the warm-up's connection, then a new one for each call, opened by the task
        (100_000, 200, {"answered": 1, "new_connection": 19}, "upstream"),
        # the upstream never answers; a timed-out connection is closed, as above
        (100_000, 504, {"upstream_failed": 1, "new_connection": 19}, "timeout"),
    ],
    ids=["answered", "refused", "5xx", "client-closes", "upstream-closes", "upstream-timeout"],
)
async def test_a_call_leaves_no_reference_cycle(
    make_gateway: MakeGateway, balance: int, status: int, results: dict[str, int], close: str
) -> None:
    """Freed by reference counting alone: objects left in cycles wait for the cycle
    collector, whose pauses (milliseconds, with many of them) showed as the p99 at one
    connection. Answered by the lane, refused (an exception raised from a frame that
    held it made a cycle through its traceback), handed over, on a client or upstream
    connection that closes after it (each one's parser held its bound methods), or timed
    out upstream (the 504, raised from a future, held frames that held the future)."""
    timeout = {"upstream_timeout": 0.05} if close == "timeout" else {}
    gw = await make_gateway(balance=balance, **timeout)
    await warmed(gw)
    headers = {"X-Echo-Status": str(status)}
    if close == "client":
        headers["Connection"] = "close"
    elif close == "upstream":
        headers["X-Echo-Headers"] = '[["Connection", "close"]]'
    elif close == "timeout":
        headers = {"X-Echo-Hang": "1"}
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage
    try:
        for i in range(20):
            reply = await gw.call(f"/v1/plain?{i}", method="POST", data=b"x", headers=headers)
            assert reply.status == status
        gc.collect()
        cyclic = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert await lane(gw) == results
    ours = {"RawConnection", "HttpRequestParser", "RawRequest", "InFlight", "Lane", "Metered"}
    ours |= {"UpstreamConnection", "HttpResponseParser"}
    assert cyclic & {*ours, "Early", "Admission", "Future", "frame", "traceback"} == set(), cyclic


async def test_a_5xx_is_handed_over_and_refunded(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    await warmed(gw)
    reply = await gw.call(headers={"X-Echo-Status": "503"})
    assert reply.status == 503
    assert reply.header("X-Meter-Charged") == 0
    assert await lane(gw) == {"upstream_5xx": 1}
    assert await gw.balance() == 100_000 - PRICE
    assert await gw.metric("meter_gateway_refunds_total", reason="upstream_5xx") == 1
    assert await gw.metric("meter_gateway_in_flight") == 0


async def test_a_variable_cost_call_is_handed_over_and_settled(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    await warmed(gw)
    reply = await gw.call("/v1/chat/x", method="POST", headers={"X-Echo-Units": "7"}, data=b"{}")
    assert reply.status == 200
    assert reply.header("X-Meter-Charged") == 7 * CHAT_UNIT
    assert await lane(gw) == {"variable_cost": 1}
    assert await gw.balance() == 100_000 - PRICE - 7 * CHAT_UNIT


async def test_a_streamed_answer_is_handed_over_whole(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    await warmed(gw)
    reply = await gw.call(headers={"X-Echo-Stream": "300000"})
    assert reply.status == 200
    assert reply.body == pattern_bytes(300_000)
    assert reply.header("X-Meter-Charged") == PRICE
    assert await lane(gw) == {"response_streamed": 1}
    assert await gw.balance() == 100_000 - 2 * PRICE


async def test_an_upstream_timeout_is_handed_over_and_refunded(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(upstream_timeout=0.3)
    await warmed(gw)
    reply = await gw.call(headers={"X-Echo-Hang": "1"})
    problem(reply, 504, "upstream-timeout")
    assert reply.header("X-Meter-Charged") == 0
    assert await lane(gw) == {"upstream_failed": 1}
    assert await gw.balance() == 100_000 - PRICE
    assert await gw.metric("meter_gateway_in_flight") == 0


async def test_a_refused_admission_is_handed_over(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(balance=1_500)
    await warmed(gw)
    reply = await gw.call()
    problem(reply, 402, "insufficient-credits")
    assert reply.header("X-Credits-Available") == 500
    assert await lane(gw) == {"refused": 1}
    assert gw.echo.received == 1
    assert await gw.balance() == 500


async def test_a_body_still_coming_is_handed_over(make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    await warmed(gw)
    body = b"0123456789"
    async with connect(gw) as (reader, writer):
        whole = request(gw, "/late", method="POST", body=body)
        writer.write(whole[: -len(body) // 2])  # the head and half the body
        await until(lambda: gw.runtime.metrics.lane.labels("request_body").value == 1)
        writer.write(whole[-len(body) // 2 :])
        reply = await read_response(reader)
    assert reply.status == 200
    assert reply.json()["body_bytes"] == len(body)
    assert await lane(gw) == {"request_body": 1}
    assert await gw.balance() == 100_000 - 2 * PRICE


async def test_a_call_waits_in_the_lane_while_the_pool_is_full(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(upstream_pool_size=1)
    await warmed(gw)
    gw.echo.arrived.clear()
    hanging = asyncio.create_task(gw.call("/a", headers={"X-Echo-Hang": "1"}))
    await gw.echo.arrived.wait()  # the lane sent it on the one connection
    body = pattern_bytes(5_000)
    waiting = asyncio.create_task(gw.call("/b", method="POST", data=body))
    await until(lambda: gw.runtime.metrics.in_flight.value == 2)  # admitted, parked
    assert gw.echo.received == 2  # the warm-up and /a
    gw.echo.hang.set()  # /a's connection goes to /b as /a is answered
    replies = [await hanging, await waiting]
    assert [r.status for r in replies] == [200, 200]
    assert [r.json()["path"] for r in replies] == ["/a", "/b"]
    assert replies[1].json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert await lane(gw) == {"answered": 2}
    assert len(_answering_tasks()) == 1  # the warm-up's: both went through callbacks
    assert await gw.balance() == 100_000 - 3 * PRICE
    assert await gw.metric("meter_gateway_upstream_connections", state="open") == 1


async def test_many_calls_racing_through_a_small_pool_are_each_charged_once(
    make_gateway: MakeGateway,
) -> None:
    """Sixty calls at once through two upstream connections: parked calls, the tasks'
    waiters and a new connection share the pool's queue; every call is answered, a 5xx
    is refunded, the rest are charged once, and nothing stays in flight."""
    gw = await make_gateway(upstream_pool_size=2)
    await warmed(gw)
    body = pattern_bytes(2_000)

    async def one(i: int) -> tuple[int, int, str]:
        kind = i % 3
        if kind == 0:
            reply = await gw.call(f"/get/{i}")
        elif kind == 1:
            reply = await gw.call(f"/post/{i}", method="POST", data=body)
            assert reply.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        else:
            reply = await gw.call(f"/fail/{i}", headers={"X-Echo-Status": "502"})
        path = reply.json()["path"] if reply.status == 200 else ""
        return reply.status, int(reply.header("X-Meter-Charged")), path

    replies = await asyncio.gather(*(one(i) for i in range(60)))
    assert [r[0] for r in replies] == [502 if i % 3 == 2 else 200 for i in range(60)]
    assert [r[1] for r in replies] == [0 if i % 3 == 2 else int(PRICE) for i in range(60)]
    assert [r[2] for r in replies if r[2]] == [
        f"/{'get' if i % 3 == 0 else 'post'}/{i}" for i in range(60) if i % 3 != 2
    ]
    counts = await lane(gw)
    assert sum(counts.values()) == 60
    assert counts["upstream_5xx"] == 20
    assert await gw.balance() == 100_000 - 41 * PRICE
    assert len(await gw.events()) == 61 + 20  # the warm-up, 60 debits, 20 refunds
    assert await gw.metric("meter_gateway_in_flight") == 0
    assert await gw.metric("meter_gateway_upstream_connections", state="open") <= 2


async def test_a_new_upstream_connection_is_opened_by_the_task(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(upstream_pool_size=2)
    await warmed(gw)
    gw.echo.arrived.clear()
    hanging = asyncio.create_task(gw.call("/a", headers={"X-Echo-Hang": "1"}))
    await gw.echo.arrived.wait()  # on the warm-up's connection, the only one open
    body = pattern_bytes(5_000)
    reply = await gw.call("/b", method="POST", data=body)  # no idle connection, room for one
    assert reply.status == 200
    assert reply.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    gw.echo.hang.set()
    assert (await hanging).status == 200
    assert await lane(gw) == {"answered": 1, "new_connection": 1}
    assert await gw.balance() == 100_000 - 3 * PRICE
    assert await gw.metric("meter_gateway_upstream_connections", state="open") == 2


async def test_a_call_parked_too_long_is_handed_over_and_refunded(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway(upstream_pool_size=1, upstream_timeout=0.3)
    await warmed(gw)
    body = b"0123456789"
    async with connect(gw) as (reader, writer):
        whole = request(gw, "/slow-client", method="POST", body=body)
        writer.write(whole[: -len(body) // 2])  # holds the one connection, body unfinished
        await until(lambda: gw.runtime.metrics.lane.labels("request_body").value == 1)
        reply = await gw.call("/parked")
        problem(reply, 504, "upstream-timeout")  # no connection came free in time
        assert reply.header("X-Meter-Charged") == 0
        writer.write(whole[-len(body) // 2 :])
        assert (await read_response(reader)).status == 200
    assert await lane(gw) == {"request_body": 1, "upstream_failed": 1}
    assert await gw.balance() == 100_000 - 2 * PRICE
    assert await gw.metric("meter_gateway_in_flight") == 0


async def test_a_client_gone_before_the_answer_is_still_charged_once(
    make_gateway: MakeGateway,
) -> None:
    gw = await make_gateway()
    await warmed(gw)
    open_before = gw.runtime.metrics.connections.value  # the warm-up's, kept alive
    gw.echo.arrived.clear()
    async with connect(gw) as (_, writer):
        writer.write(request(gw, "/gone", headers=["X-Echo-Hang: 1"]))
        await gw.echo.arrived.wait()
    # The upstream has the call: it counts, as it would without the lane.
    gw.echo.hang.set()
    await until(lambda: gw.runtime.metrics.lane_answered.value == 1)
    assert await gw.balance() == 100_000 - 2 * PRICE
    assert len(await gw.events()) == 2
    assert await gw.metric("meter_gateway_in_flight") == 0
    await until(lambda: gw.runtime.metrics.connections.value == open_before)


async def test_redis_gone_is_handed_over_and_fails_closed(
    make_gateway: MakeGateway, redis_url: str
) -> None:
    from test_gateway import TcpRelay
    from yarl import URL

    relay = TcpRelay(URL(redis_url).port or 6379)
    port = await relay.start()
    gw = await make_gateway(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.5)
    await warmed(gw)
    await relay.cut()
    problem(await gw.call(), 503, "state-unavailable")
    assert await lane(gw) == {"redis_failed": 1}
    assert gw.echo.received == 1
