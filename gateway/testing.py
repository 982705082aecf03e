"""An echo upstream and account provisioning: for the tests, local runs and benchmarks.

``echo_app()`` answers every request with what it received (JSON: method, raw
path, headers, body length and SHA-256, streamed in, never buffered), and
obeys a few request headers so tests can script it:

    X-Echo-Status: 503           answer with this status
    X-Echo-Units: 42             set X-Units-Used: 42 (any text, for the garbage cases)
    X-Echo-Headers: [["A","b"]]  add these response headers (JSON pairs)
    X-Echo-Stream: 5000000       answer with this many bytes, chunked, instead of JSON
    X-Echo-Gate: 1               with X-Echo-Stream: send one chunk, then wait for
                                 ``EchoState.gate`` before the rest
    X-Echo-Abort-After: 100000   with X-Echo-Stream: drop the connection after this many bytes
    X-Echo-Hang: 1               answer only once ``EchoState.hang`` is set (counted in
                                 ``EchoState.hanging`` while it waits)
    X-Echo-Small: 1              answer "ok" at once (the benchmark's upstream)
    X-Echo-Json: {"usage": {}}   merge these keys into the JSON answer; with X-Echo-Gate: 1
                                 sent chunked in two parts, the second once ``gate`` is set
    X-Echo-Events: ["a", {}]     answer text/event-stream, one write per event (``data: ``
                                 and the item: a string as it is, else its JSON), then the
                                 end; with X-Echo-Gate: 1, each event after the first once
                                 ``gate`` is set; with X-Echo-Abort-After: N, the connection
                                 dropped after N events

``scripted_upstream`` answers every request with the same bytes, for framings
aiohttp does not send (trailers), in parts a test can hold back.

``EchoState`` counts the requests that arrived and signals the first request
and the first body chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from gateway.metrics import GatewayMetrics
from gateway.raw_server import RawServer
from gateway.runtime import Runtime, open_runtime
from meter import apikeys, keys
from meter.live_state import AccountConfig, KeyRecord, LiveState
from meter.settings import Settings

STREAM_CHUNK = 1 << 16


def pattern_bytes(n: int, offset: int = 0) -> bytes:
    """Deterministic bytes, so both ends can check a streamed body without keeping it."""
    return bytes((offset + i) % 251 for i in range(n))


@dataclass
class EchoState:
    received: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    first_body_chunk: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    hang: asyncio.Event = field(default_factory=asyncio.Event)
    hanging: int = 0  # requests waiting for ``hang``


ECHO = web.AppKey("echo", EchoState)


async def until(condition: Callable[[], object], within: float = 5.0) -> None:
    """Wait for something a server does in its own time (a connection it closes, a
    request it has read), checking every few milliseconds; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "it did not happen in time"
        await asyncio.sleep(0.005)


def echo_app() -> web.Application:
    app = web.Application()
    app[ECHO] = EchoState()
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


async def _echo(request: web.Request) -> web.StreamResponse:
    state = request.app[ECHO]
    state.received += 1
    state.arrived.set()
    h = request.headers
    if h.get("X-Echo-Small"):
        return web.Response(body=b"ok")
    if h.get("X-Echo-Hang"):
        state.hanging += 1
        try:
            await state.hang.wait()
        finally:
            state.hanging -= 1
    digest, size = hashlib.sha256(), 0
    async for chunk in request.content.iter_any():
        if size == 0:
            state.first_body_chunk.set()
        digest.update(chunk)
        size += len(chunk)
    out_headers: list[tuple[str, str]] = [
        (str(k), str(v)) for k, v in orjson.loads(h.get("X-Echo-Headers", "[]"))
    ]
    if "X-Echo-Units" in h:
        out_headers.append(("X-Units-Used", h["X-Echo-Units"]))
    status = int(h.get("X-Echo-Status", "200"))
    if "X-Echo-Stream" in h:
        return await _stream(request, state, status, out_headers, int(h["X-Echo-Stream"]))
    if "X-Echo-Events" in h:
        return await _events(request, state, status, out_headers, orjson.loads(h["X-Echo-Events"]))
    doc = {
        "method": request.method,
        "path": request.raw_path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_bytes": size,
        "body_sha256": digest.hexdigest(),
    }
    if "X-Echo-Json" in h:
        doc.update(orjson.loads(h["X-Echo-Json"]))
        if h.get("X-Echo-Gate"):
            return await _in_two_parts(request, state, status, out_headers, orjson.dumps(doc))
    response = web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")
    for name, value in out_headers:
        response.headers.add(name, value)
    return response


async def _chunked(
    request: web.Request,
    status: int,
    out_headers: list[tuple[str, str]],
    content_type: str | None = None,
) -> web.StreamResponse:
    """A chunked answer's head, sent: the status, the scripted headers."""
    response = web.StreamResponse(status=status)
    if content_type is not None:
        response.headers["Content-Type"] = content_type
    for name, value in out_headers:
        response.headers.add(name, value)
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


async def _stream(
    request: web.Request,
    state: EchoState,
    status: int,
    out_headers: list[tuple[str, str]],
    total: int,
) -> web.StreamResponse:
    response = await _chunked(request, status, out_headers)
    sent = 0
    abort_after = int(request.headers.get("X-Echo-Abort-After", total + 1))
    while sent < total:
        if sent >= abort_after and request.transport is not None:
            request.transport.abort()
            return response
        n = min(STREAM_CHUNK, total - sent)
        await response.write(pattern_bytes(n, sent))
        sent += n
        if request.headers.get("X-Echo-Gate"):
            await state.gate.wait()
    await response.write_eof()
    return response


async def _in_two_parts(
    request: web.Request,
    state: EchoState,
    status: int,
    out_headers: list[tuple[str, str]],
    body: bytes,
) -> web.StreamResponse:
    response = await _chunked(request, status, out_headers, "application/json")
    half = len(body) // 2
    await response.write(body[:half])
    await state.gate.wait()
    await response.write(body[half:])
    await response.write_eof()
    return response


async def _events(
    request: web.Request,
    state: EchoState,
    status: int,
    out_headers: list[tuple[str, str]],
    events: list[object],
) -> web.StreamResponse:
    response = await _chunked(request, status, out_headers, "text/event-stream")
    abort_after = int(request.headers.get("X-Echo-Abort-After", len(events) + 1))
    for i, event in enumerate(events):
        if i >= abort_after and request.transport is not None:
            request.transport.abort()
            return response
        if i and request.headers.get("X-Echo-Gate"):
            await state.gate.wait()
        data = event.encode() if isinstance(event, str) else orjson.dumps(event)
        await response.write(b"data: " + data + b"\n\n")
    await response.write_eof()
    return response


@contextlib.asynccontextmanager
async def scripted_upstream(
    *answer: bytes, gate: asyncio.Event | None = None
) -> AsyncIterator[str]:
    """An upstream on a loopback port (its URL) that reads each request (a body only by
    Content-Length) and answers the parts of ``answer``, byte for byte, keeping the
    connection; with ``gate``, each part after the first once the gate is set."""

    serving: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        serving[task] = writer
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and int(value):
                        await reader.readexactly(int(value))
                for i, part in enumerate(answer):
                    if i and gate is not None:
                        await gate.wait()
                    writer.write(part)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            serving.pop(task, None)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in serving.values():
            writer.transport.abort()
        await asyncio.gather(*serving, return_exceptions=True)
        await server.wait_closed()


# -- provisioning straight into Redis (what the admin API does after Postgres) ------------


@dataclass(frozen=True, slots=True)
class Provisioned:
    key: str  # the secret API key, as a client sends it
    record: KeyRecord


async def provision(
    state: LiveState,
    *,
    account_id: str = "acct_1",
    project_id: str = "proj_1",
    key_id: str = "key_1",
    shards: int = 16,
    balance: int = 0,
    overage_line: int = 0,
    daily_hard_limit: int | None = None,
    suspended: bool = False,
    payment_method_required: bool = False,
) -> Provisioned:
    shard = keys.shard_of(account_id, shards)
    await state.sync_account(
        shard,
        account_id,
        AccountConfig(
            version=1,
            overage_line=overage_line,
            daily_hard_limit=daily_hard_limit,
            daily_notify_threshold=None,
            low_balance_threshold=None,
            suspended=suspended,
            payment_method_required=payment_method_required,
        ),
    )
    if balance:
        await state.credit(shard, account_id, f"seed-{account_id}", balance)
    return await add_key(state, KeyRecord(key_id, project_id, account_id, shard))


async def add_key(state: LiveState, record: KeyRecord) -> Provisioned:
    key = apikeys.generate()
    await state.put_api_key(apikeys.digest(key), record)
    return Provisioned(key, record)


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings, *, clock: Callable[[], float] = time.time, backlog: int = 4096
) -> AsyncIterator[tuple[str, Runtime]]:
    """The gateway's server in this process on a free loopback port: (base URL, runtime).
    The backlog is deep: race tests connect thousands of clients at once."""
    async with open_runtime(Runtime(settings, GatewayMetrics()), clock=clock) as runtime:
        server = RawServer(runtime)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = await server.start(sock=sock, backlog=backlog)
        try:
            yield f"http://127.0.0.1:{port}", runtime
        finally:
            runtime.draining = True
            await server.shutdown(1)
