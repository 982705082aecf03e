"""Variable cost settled from what the response reports after its head, through the real
HTTP stack: units from a trailer, the JSON body, the last server-sent event; several
kinds in one route; metering trailers for clients that accept them; cut streams; the
openai SDK streaming through the gateway.

Money is checked to the micro twice: the balance in Redis, and the usage events (a
debit of the reserve, then one refund naming it). Raw sockets where the test must see
the wire (trailers, a stream cut off); the echo upstream holds a stream on its gate
where the test must see chunks arrive before the upstream sent the rest.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from test_gateway import Gateway, MakeGateway, behind_relay, make_gateway, upstream
from test_gateway_http import connect, request

from gateway.testing import scripted_upstream, until

FIXTURES = (make_gateway, upstream)  # pytest finds them by name in this module

BALANCE = 100_000
MAX, IN, OUT, PER_TOKEN = 50_000, 2, 8, 10
PRICES = f"""
[default]
price = 1_000

[[routes]]
name = "chat"
match = "POST /v1/chat/*"
max_price = {MAX}
units = [
  {{ kind = "input", price = {IN}, from = "json:usage.prompt_tokens" }},
  {{ kind = "output", price = {OUT}, from = "json:usage.completion_tokens" }},
]

[[routes]]
name = "trailed"
match = "POST /v1/trailed"
max_price = {MAX}
units = [{{ kind = "tokens", price = {PER_TOKEN}, from = "trailer:X-Units-Used" }}]

[[routes]]
name = "mixed"
match = "POST /v1/mixed"
max_price = {MAX}
units = [
  {{ kind = "input", price = {IN}, from = "header:X-Input-Units" }},
  {{ kind = "output", price = {OUT}, from = "json:usage.completion_tokens" }},
]
"""
CHAT = "/v1/chat/completions"


def content(text: str) -> dict[str, Any]:
    """An OpenAI chat completion chunk (``usage`` null, as with include_usage)."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        "usage": None,
    }


def usage(prompt: object, completion: object) -> dict[str, Any]:
    """The last chunk: no choices, the usage."""
    total = prompt + completion if isinstance(prompt, int) and isinstance(completion, int) else 0
    tokens = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
    return {**content(""), "choices": [], "usage": tokens}


def events(*items: object) -> dict[str, str]:
    return {"X-Echo-Events": orjson.dumps(list(items)).decode()}


def wire(*items: object) -> bytes:
    """The event stream the echo upstream sends for ``items``."""
    return b"".join(
        b"data: " + (i.encode() if isinstance(i, str) else orjson.dumps(i)) + b"\n\n" for i in items
    )


STREAM = (content("Hel"), content("lo"), usage(120, 30), "[DONE]")
STREAM_COST = 120 * IN + 30 * OUT


@pytest.fixture
def metered(make_gateway: MakeGateway, tmp_path: Path) -> Callable[..., Awaitable[Gateway]]:
    prices = tmp_path / "usage-prices.toml"
    prices.write_text(PRICES)

    async def make(**overrides: Any) -> Gateway:
        overrides.setdefault("balance", BALANCE)
        return await make_gateway(prices_path=str(prices), **overrides)

    return make


def settlements(gw: Gateway) -> float:
    """Variable-cost calls settled so far, from their units or at the reserve."""
    m = gw.runtime.metrics
    return sum(c.value for f in (m.settlements, m.units_missing) for c in f.children.values())


async def assert_charged(gw: Gateway, charged: int, *, before: int = 0) -> None:
    """Once the call is settled: the balance, and its events (the reserve, one refund).
    ``before``: what calls at the default price had cost until then."""
    metrics = gw.runtime.metrics
    await until(lambda: settlements(gw) >= 1 and metrics.in_flight.value == 0)  # call ended
    assert settlements(gw) == 1
    assert await gw.balance() == BALANCE - before - charged
    debit, *refunds = [e for e in await gw.events() if e["r"] != "default"]
    assert (debit["t"], debit["m"]) == ("d", str(MAX))
    if charged == MAX:
        assert refunds == []
    else:
        [refund] = refunds
        assert (refund["t"], refund["m"], refund["o"]) == ("r", str(MAX - charged), debit["id"])


# -- the wire, read by hand ----------------------------------------------------------------


@dataclass
class Streamed:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    trailers: dict[str, str]  # lower-cased names
    complete: bool  # the body ended as framed (not cut)


def _fields(lines: list[bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        if line:
            name, _, value = line.decode("latin-1").partition(":")
            out[name.strip().lower()] = value.strip()
    return out


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
    return int(lines[0].split(b" ")[1]), _fields(lines[1:])


async def read_chunk(reader: asyncio.StreamReader) -> bytes | None:
    """One chunk of a chunked body; None for the last chunk (its trailers still to read)."""
    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
    if size == 0:
        return None
    return (await reader.readexactly(size + 2))[:-2]


async def read_rest(
    reader: asyncio.StreamReader, status: int, headers: dict[str, str], body: bytes = b""
) -> Streamed:
    try:
        if headers.get("transfer-encoding") != "chunked":
            body += await reader.readexactly(int(headers["content-length"]))
            return Streamed(status, headers, body, {}, True)
        while (chunk := await read_chunk(reader)) is not None:
            body += chunk
        lines = []
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            lines.append(line[:-2])
        trailers = _fields(lines)
        return Streamed(status, headers, body, trailers, True)
    except (asyncio.IncompleteReadError, ConnectionError):
        return Streamed(status, headers, body, {}, False)


def call(
    gw: Gateway, path: str, extra: dict[str, str], *, trailers: bool, body: bytes = b"{}"
) -> bytes:
    lines = [f"{k}: {v}" for k, v in extra.items()] + (["TE: trailers"] if trailers else [])
    return request(gw, path, method="POST", headers=lines, body=body)


# -- event streams ---------------------------------------------------------------------------


async def test_an_event_stream_is_relayed_as_it_comes_and_settled_from_its_last_usage(
    metered: Callable[..., Awaitable[Gateway]],
) -> None:
    """No TE: trailers: the head shows the reserve and says the settlement is deferred;
    the body passes unchanged, each event before the upstream sends the next."""
    gw = await metered()
    assert gw.account is not None
    assert (await gw.call()).status == 200  # the key is cached: the lane takes the next call
    sent = {"Authorization": f"Bearer {gw.account.key}", **events(*STREAM), "X-Echo-Gate": "1"}
    async with gw.http.post(gw.url / CHAT[1:], headers=sent, json={}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["X-Meter-Charged"] == str(MAX)
        assert response.headers["X-Meter-Settlement"] == "deferred"
        assert "Trailer" not in response.headers
        async with asyncio.timeout(10):
            first = await response.content.readany()
        assert first == wire(STREAM[0])  # the upstream holds the rest until now
        gw.echo.gate.set()
        body = first + await response.content.read()
    assert body == wire(*STREAM)
    await assert_charged(gw, STREAM_COST, before=1_000)
    assert await gw.metric("meter_gateway_settlements_total", route="chat", source="sse") == 1
    assert await gw.metric("meter_gateway_lane_total", result="variable_cost") == 1
    assert await gw.metric("meter_gateway_charged_micros_total", route="chat") == STREAM_COST
    assert await gw.metric("meter_gateway_units_total", route="chat", kind="input") == 120
    assert await gw.metric("meter_gateway_units_total", route="chat", kind="output") == 30


@pytest.mark.parametrize("kind", ["sse", "json"])
async def test_the_settled_charge_comes_in_trailers_when_the_client_accepts_them(
    metered: Callable[..., Awaitable[Gateway]], kind: str
) -> None:
    gw = await metered(account={"daily_hard_limit": 80_000})
    if kind == "sse":
        script = events(*STREAM)
    else:  # a JSON body in two parts: settled at its end too
        script = {"X-Echo-Json": orjson.dumps({"usage": usage(120, 30)["usage"]}).decode()}
    async with connect(gw) as (reader, writer):
        writer.write(call(gw, CHAT, {**script, "X-Echo-Gate": "1"}, trailers=True))
        status, head = await read_head(reader)
        first = await read_chunk(reader)
        assert first
        gw.echo.gate.set()
        got = await read_rest(reader, status, head, first)
    assert got.complete and got.status == 200
    assert head["x-meter-settlement"] == "trailer"
    assert head["trailer"] == "X-Meter-Charged, X-Credits-Available, X-Daily-Limit-Remaining"
    assert (head["x-meter-charged"], head["x-credits-available"]) == (str(MAX), str(30_000))
    assert got.trailers == {
        "x-meter-charged": str(STREAM_COST),
        "x-credits-available": str(80_000 - STREAM_COST),
        "x-daily-limit-remaining": str(80_000 - STREAM_COST),
    }
    if kind == "sse":
        assert got.body == wire(*STREAM)
    else:
        assert orjson.loads(got.body)["usage"]["prompt_tokens"] == 120
    await assert_charged(gw, STREAM_COST)


async def test_a_json_body_that_came_whole_is_settled_before_the_answer(
    metered: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await metered()
    reply = await gw.call(
        CHAT,
        method="POST",
        json={},
        headers={
            "X-Echo-Json": orjson.dumps({"usage": usage(100, 50)["usage"]}).decode(),
            "Accept-Encoding": "gzip, br",
        },
    )
    assert reply.status == 200
    assert reply.header("X-Meter-Charged") == 100 * IN + 50 * OUT
    assert reply.header("X-Credits-Available") == BALANCE - (100 * IN + 50 * OUT)
    assert "X-Meter-Settlement" not in reply.headers
    seen = {k.lower(): v for k, v in reply.json()["headers"]}
    assert seen["accept-encoding"] == "identity"  # a body the gateway can read
    await assert_charged(gw, 100 * IN + 50 * OUT)
    assert await gw.metric("meter_gateway_settlements_total", route="chat", source="json") == 1


@pytest.mark.parametrize(
    ("prompt", "completion", "charged"),
    [(0, 0, 0), (1, 1, IN + OUT), (0, MAX // OUT, MAX), (10**6, 10**6, MAX)],  # capped
)
async def test_two_kinds_of_unit_priced_apart(
    metered: Callable[..., Awaitable[Gateway]], prompt: int, completion: int, charged: int
) -> None:
    gw = await metered()
    reply = await gw.call(
        CHAT, method="POST", json={}, headers=events(content("x"), usage(prompt, completion))
    )
    assert reply.status == 200
    await assert_charged(gw, charged)


async def test_units_from_a_header_and_from_the_body_in_one_route(
    metered: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await metered()
    script = {
        **events(content("x"), usage(0, 7)),
        "X-Echo-Headers": orjson.dumps([["X-Input-Units", "11"]]).decode(),
    }
    assert (await gw.call("/v1/mixed", method="POST", json={}, headers=script)).status == 200
    await assert_charged(gw, 11 * IN + 7 * OUT)
    assert await gw.metric("meter_gateway_settlements_total", route="mixed", source="header+sse")


# -- trailers from the upstream ----------------------------------------------------------


HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Units-Used, X-Secret\r\n\r\n"
BODY = b"5\r\nhello\r\n"
END = b"0\r\nX-Units-Used: 42\r\nX-Secret: 1\r\n\r\n"


@pytest.mark.parametrize("te", [True, False])
async def test_units_from_an_upstream_trailer(
    metered: Callable[..., Awaitable[Gateway]], te: bool
) -> None:
    """The upstream's trailers are read, not passed on; ours follow if the client wants."""
    gate = asyncio.Event()
    async with scripted_upstream(HEAD + BODY, END, gate=gate) as url:
        gw = await metered(upstream_url=url)
        async with connect(gw) as (reader, writer):
            writer.write(call(gw, "/v1/trailed", {}, trailers=te))
            status, head = await read_head(reader)
            assert await read_chunk(reader) == b"hello"
            gate.set()
            got = await read_rest(reader, status, head, b"hello")
        assert got.complete and got.body == b"hello"
        assert "x-secret" not in head and "x-units-used" not in head
        assert head.get("trailer") == ("X-Meter-Charged, X-Credits-Available" if te else None)
        expected = {
            "x-meter-charged": str(42 * PER_TOKEN),
            "x-credits-available": str(BALANCE - 420),
        }
        assert got.trailers == (expected if te else {})
        await assert_charged(gw, 42 * PER_TOKEN)
        source = await gw.metric(
            "meter_gateway_settlements_total", route="trailed", source="trailer"
        )
        assert source == 1


async def test_trailer_units_that_came_with_the_head_settle_before_the_answer(
    metered: Callable[..., Awaitable[Gateway]],
) -> None:
    async with scripted_upstream(HEAD + BODY + END) as url:
        gw = await metered(upstream_url=url)
        reply = await gw.call("/v1/trailed", method="POST", json={})
        assert (reply.status, reply.body) == (200, b"hello")
        assert reply.header("X-Meter-Charged") == 42 * PER_TOKEN
        await assert_charged(gw, 42 * PER_TOKEN)


# -- units not known: the reserve -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "script", "reason"),
    [
        (CHAT, events(content("a"), "[DONE]"), "missing"),  # include_usage not asked
        (CHAT, events(content("a"), usage("120", 30)), "invalid"),
        (CHAT, events(content("a"), usage(1.5, 30)), "invalid"),
        (CHAT, {"X-Echo-Json": '{"usage": {"prompt_tokens": 5}}'}, "missing"),
        (
            CHAT,
            {
                "X-Echo-Json": orjson.dumps({"usage": usage(1, 2)["usage"]}).decode(),
                "X-Echo-Headers": '[["Content-Encoding", "gzip"]]',
            },
            "encoded",
        ),
        ("/v1/trailed", events(content("a")), "missing"),
        ("/v1/mixed", events(usage(0, 7)), "missing"),  # no X-Input-Units header
    ],
)
async def test_units_not_known_charge_the_reserve(
    metered: Callable[..., Awaitable[Gateway]], path: str, script: dict[str, str], reason: str
) -> None:
    gw = await metered()
    async with connect(gw) as (reader, writer):
        writer.write(call(gw, path, script, trailers=True))
        status, head = await read_head(reader)
        got = await read_rest(reader, status, head)
    assert got.complete and got.status == 200
    if got.trailers:
        assert got.trailers["x-meter-charged"] == str(MAX)
    else:
        assert head["x-meter-charged"] == str(MAX)
    await assert_charged(gw, MAX)
    route = path.rsplit("/", 1)[1] if path != CHAT else "chat"
    assert await gw.metric("meter_gateway_units_missing_total", route=route, reason=reason) == 1


# -- cut streams -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "charged"),
    [
        ((content("a"), content("b"), usage(120, 30), "[DONE]"), MAX),  # cut before the usage
        ((content("a"), usage(120, 30), content("late"), "[DONE]"), STREAM_COST),  # after it
    ],
)
async def test_a_stream_the_upstream_cuts_off(
    metered: Callable[..., Awaitable[Gateway]], stream: tuple[object, ...], charged: int
) -> None:
    """Units seen before the cut count; units not seen: the reserve is kept."""
    gw = await metered()
    async with connect(gw) as (reader, writer):
        writer.write(call(gw, CHAT, {**events(*stream), "X-Echo-Abort-After": "2"}, trailers=True))
        status, head = await read_head(reader)
        got = await read_rest(reader, status, head)
    assert not got.complete  # the client sees a cut body, not a short complete one
    assert got.body == wire(*stream[:2])
    await assert_charged(gw, charged)
    assert await gw.metric("meter_gateway_upstream_aborted_total") == 1
    cut = await gw.metric("meter_gateway_units_missing_total", route="chat", reason="cut")
    assert cut == (1 if charged == MAX else 0)


@pytest.mark.parametrize(
    ("stream", "charged"),
    [
        ((content("a"), content("b"), usage(120, 30)), MAX),  # it never came
        ((usage(120, 30), content("b"), content("c")), STREAM_COST),  # it came first
    ],
)
async def test_a_client_gone_mid_stream(
    metered: Callable[..., Awaitable[Gateway]], stream: tuple[object, ...], charged: int
) -> None:
    """Settled from the units read before the gateway found the client gone; the reserve
    is kept for units not read by then."""
    gw = await metered()
    script = {**events(*stream), "X-Echo-Gate": "1", "X-Echo-Abort-After": "2"}
    async with connect(gw) as (reader, writer):
        writer.write(call(gw, CHAT, script, trailers=False))
        await read_head(reader)
        assert await read_chunk(reader) == wire(stream[0])
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset (not a half-close, after which it could still read)
        await until(lambda: gw.runtime.metrics.connections.value == 0)
    gw.echo.gate.set()  # the upstream goes on; the gateway's next write finds no client
    await assert_charged(gw, charged)


async def test_a_settlement_redis_misses_is_given_once_it_is_back(
    make_gateway: MakeGateway, redis_url: str, tmp_path: Path
) -> None:
    prices = tmp_path / "usage-prices.toml"
    prices.write_text(PRICES)
    gw, relay = await behind_relay(make_gateway, redis_url, prices_path=str(prices))
    async with connect(gw) as (reader, writer):
        writer.write(call(gw, CHAT, {**events(*STREAM), "X-Echo-Gate": "1"}, trailers=True))
        status, head = await read_head(reader)
        first = await read_chunk(reader)
        await relay.cut()
        gw.echo.gate.set()
        got = await read_rest(reader, status, head, first or b"")
    assert got.complete and got.trailers["x-meter-charged"] == str(MAX)  # as it stood
    assert await gw.metric("meter_gateway_refund_errors_total") == 1
    await relay.start()
    await until(lambda: gw.runtime.metrics.refunds_pending.value == 0, within=15)
    await assert_charged(gw, STREAM_COST)
    await relay.cut()


# -- the openai SDK ------------------------------------------------------------------------------


async def test_the_openai_sdk_streams_through_the_gateway_and_is_charged_its_usage(
    metered: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await metered()
    assert gw.account is not None
    async with openai.AsyncOpenAI(
        base_url=str(gw.url / "v1"), api_key=gw.account.key, max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Hello?"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={**events(*STREAM), "X-Echo-Gate": "1"},
        )
        assert stream.response.headers["X-Meter-Charged"] == str(MAX)
        assert stream.response.headers["X-Meter-Settlement"] == "deferred"
        chunks = aiter(stream)
        async with asyncio.timeout(10):
            first = await anext(chunks)
        # The first chunk is in the client's hands while the upstream holds the rest.
        assert first.choices[0].delta.content == "Hel" and not gw.echo.gate.is_set()
        gw.echo.gate.set()
        rest = [c async for c in chunks]
        assert [c.choices[0].delta.content for c in rest[:-1]] == ["lo"]
        assert rest[-1].usage is not None
        assert (rest[-1].usage.prompt_tokens, rest[-1].usage.completion_tokens) == (120, 30)
        await assert_charged(gw, STREAM_COST)

        # Not streamed: the JSON body's usage, settled before the answer.
        reply = await client.chat.completions.with_raw_response.create(
            model="m",
            messages=[{"role": "user", "content": "Hello?"}],
            extra_headers={"X-Echo-Json": orjson.dumps({"usage": usage(10, 5)["usage"]}).decode()},
        )
        assert reply.headers["X-Meter-Charged"] == str(10 * IN + 5 * OUT)
        assert reply.parse().usage is not None
    assert await gw.balance() == BALANCE - STREAM_COST - (10 * IN + 5 * OUT)
