"""The pipelined Redis client against real Redis servers (and two tiny fake ones for bad input).

Destructive tests (pause, kill, passwords, sockets) run on a Redis of their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis as redis_sync
import trustme
from conftest import TlsRedis
from fake_redis import fake_server

from meter import local_servers, program_paths
from meter.live_state import StateUnavailable
from meter.redis_address import RedisAddress, TlsOptions
from meter.redis_pipe import (
    RedisNotSent,
    RedisPipe,
    RedisReplyError,
    RedisTimeout,
    RedisUnreachable,
)
from meter.scripts import LuaScript


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[local_servers.RedisServer]:
    server = local_servers.start_redis(tmp_path / "redis")
    yield server
    server.stop(kill=True)


@pytest.fixture
async def pipe(redis_url: str) -> AsyncIterator[RedisPipe]:
    p = RedisPipe(redis_url, timeout=5.0)
    yield p
    await p.close()


def sync_client(url: str) -> redis_sync.Redis:
    return redis_sync.Redis.from_url(url)


def command_calls(url: str, command: str) -> int:
    with sync_client(url) as client:
        stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


# -- addresses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6390/0", RedisAddress("127.0.0.1", 6390)),
        ("redis://localhost", RedisAddress("localhost", 6379)),
        ("redis://h:1/7", RedisAddress("h", 1, db=7)),
        ("redis://:s%40cret@h:1/2", RedisAddress("h", 1, db=2, password="s@cret")),
        ("redis://alice:pw@h:1", RedisAddress("h", 1, username="alice", password="pw")),
        ("unix:///run/redis.sock?db=3", RedisAddress(path="/run/redis.sock", db=3)),
        ("rediss://h:1/2", RedisAddress("h", 1, db=2, tls=TlsOptions())),
        (
            "rediss://h?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none&ssl_check_hostname=false",
            RedisAddress("h", tls=TlsOptions("/ca.pem", cert_reqs="none", check_hostname=False)),
        ),
        (
            "rediss://h?ssl_certfile=/c.pem&ssl_keyfile=/c.key&socket_timeout=3",  # redis-py's
            RedisAddress("h", tls=TlsOptions(certfile="/c.pem", keyfile="/c.key")),
        ),
    ],
)
def test_address_from_url(url: str, expected: RedisAddress) -> None:
    assert RedisAddress.from_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://h",
        "unix://",
        "rediss://h?ssl_cert_reqs=maybe",
        "rediss://h?ssl_check_hostname=perhaps",
    ],
)
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        RedisAddress.from_url(url)


def test_password_never_reaches_a_repr() -> None:
    address = RedisAddress.from_url("redis://alice:hunter2@h:1/0")
    assert "hunter2" not in repr(address) and "hunter2" not in str(address)


# -- replies ------------------------------------------------------------------------


async def test_every_reply_type(pipe: RedisPipe) -> None:
    binary = b"a\r\nb\x00\xff" * 3
    big = b"x" * (1 << 20)  # arrives in many reads
    assert await pipe.execute("PING") == b"PONG"  # simple string
    assert await pipe.execute("SET", "bin", binary) == b"OK"
    assert await pipe.execute("GET", "bin") == binary  # bulk string, binary safe
    assert await pipe.execute("SET", "empty", b"") == b"OK"
    assert await pipe.execute("GET", "empty") == b""
    assert await pipe.execute("GET", "missing") is None  # nil bulk
    assert await pipe.execute("INCRBY", "n", -5) == -5  # integer
    assert await pipe.execute("INCRBY", "n", 2**62) == 2**62 - 5
    assert await pipe.execute("RPUSH", "l", "a", "b") == 2
    assert await pipe.execute("LRANGE", "l", 0, -1) == [b"a", b"b"]  # array
    assert await pipe.execute("LRANGE", "none", 0, -1) == []  # empty array
    assert await pipe.execute("XREAD", "COUNT", 1, "STREAMS", "none", "0") is None  # nil array
    nested = await pipe.execute("EVAL", "return {1, {2, 'x', {}}, false, 'y'}", 0)
    assert nested == [1, [2, b"x", []], None, b"y"]
    assert await pipe.execute("EVAL", "return redis.status_reply('FINE')", 0) == b"FINE"
    inner = await pipe.execute("EVAL", "return {1, redis.error_reply('inner boom')}", 0)
    assert inner[0] == 1 and isinstance(inner[1], RedisReplyError) and str(inner[1]) == "inner boom"
    assert await pipe.execute("SET", "big", big) == b"OK"
    assert await pipe.execute("GET", "big") == big


async def test_error_reply_fails_only_its_command(pipe: RedisPipe) -> None:
    before = pipe.submit("SET", "k", "v")
    bad = pipe.submit("INCR", "k")
    after = pipe.submit("GET", "k")
    assert await before == b"OK"
    with pytest.raises(RedisReplyError, match="not an integer") as info:
        await bad
    assert isinstance(info.value, StateUnavailable)  # the gateway's 503
    assert await after == b"v"


async def test_many_concurrent_commands_keep_their_order(pipe: RedisPipe, redis_url: str) -> None:
    async def one(i: int) -> None:
        key = f"k{i}"
        set_, get, incr, echo = await asyncio.gather(
            pipe.submit("SET", key, i),
            pipe.submit("GET", key),
            pipe.submit("INCRBY", key, i),
            pipe.submit("ECHO", f"e{i}"),
        )
        assert (set_, get, incr, echo) == (b"OK", str(i).encode(), 2 * i, f"e{i}".encode())

    await pipe.execute("PING")  # connected
    with sync_client(redis_url) as client:
        clients_before = client.info("clients")["connected_clients"]
        await asyncio.gather(*(one(i) for i in range(2000)))
        assert client.info("clients")["connected_clients"] == clients_before  # one connection
    assert pipe.in_flight == 0


async def test_a_cancelled_caller_does_not_shift_the_replies(pipe: RedisPipe) -> None:
    first = pipe.submit("ECHO", "one")
    second = pipe.submit("ECHO", "two")
    first.cancel()
    assert await second == b"two"
    assert await pipe.execute("ECHO", "three") == b"three"


async def test_commands_spread_over_several_connections(redis_url: str) -> None:
    p = RedisPipe(redis_url, connections=3)
    try:
        names = await asyncio.gather(*(p.submit("CLIENT", "ID") for _ in range(9)))
        assert len(set(names)) == 3
    finally:
        await p.close()


# -- scripts ------------------------------------------------------------------------


def lua(name: str, source: str) -> LuaScript:
    return LuaScript(name, source, hashlib.sha1(source.encode()).hexdigest())


COUNTER = lua("counter", "return redis.call('INCR', KEYS[1])")


async def test_evalsha_loads_the_script_once_after_a_flush(pipe: RedisPipe, redis_url: str) -> None:
    assert await pipe.evalsha(COUNTER, ["c"], []) == 1
    with sync_client(redis_url) as client:
        client.script_flush()
    loads = command_calls(redis_url, "script|load")
    replies = await asyncio.gather(*(pipe.evalsha(COUNTER, ["c"], []) for _ in range(50)))
    assert sorted(replies) == list(range(2, 52))  # every script ran exactly once
    assert command_calls(redis_url, "script|load") == loads + 1


async def test_script_errors_are_reply_errors(pipe: RedisPipe) -> None:
    broken = LuaScript("broken", "return redis.call('NOPE')", "0" * 40)
    with pytest.raises(RedisReplyError):
        await pipe.evalsha(broken, [], [])
    assert await pipe.execute("PING") == b"PONG"


class Sink:
    """A reply sink that is not a future: what the admission batcher's batches are."""

    def __init__(self) -> None:
        self.results: list[object] = []
        self.errors: list[BaseException] = []
        self.arrived = asyncio.Event()

    def done(self) -> bool:
        return self.arrived.is_set()

    def set_result(self, result: object) -> None:
        self.results.append(result)
        self.arrived.set()

    def set_exception(self, exception: BaseException) -> None:
        self.errors.append(exception)
        self.arrived.set()


async def test_a_reply_sink_gets_each_reply_once(pipe: RedisPipe, redis_url: str) -> None:
    sinks = [Sink() for _ in range(3)]
    for sink in sinks:
        pipe.evalsha_to(sink, COUNTER, ["s"], [])
    for sink in sinks:
        await sink.arrived.wait()
    assert [(s.results, s.errors) for s in sinks] == [([1], []), ([2], []), ([3], [])]
    with sync_client(redis_url) as client:
        client.script_flush()
    after_flush = Sink()  # NOSCRIPT is not an answer: the script is loaded and run, once
    pipe.evalsha_to(after_flush, COUNTER, ["s"], [])
    await after_flush.arrived.wait()
    assert (after_flush.results, after_flush.errors) == ([4], [])


async def test_a_reply_sink_gets_errors(pipe: RedisPipe) -> None:
    broken = Sink()
    pipe.evalsha_to(broken, lua("broken", "return redis.call('NOPE')"), [], [])
    await broken.arrived.wait()
    assert broken.results == [] and isinstance(broken.errors[0], RedisReplyError)
    await pipe.close()
    late = Sink()
    pipe.evalsha_to(late, COUNTER, ["s"], [])
    assert late.results == [] and isinstance(late.errors[0], RedisUnreachable)  # at once


# -- connecting, failing, reconnecting ----------------------------------------------


async def test_nothing_listening_is_unavailable() -> None:
    p = RedisPipe(f"redis://127.0.0.1:{local_servers.free_port()}/0", timeout=2)
    try:
        with pytest.raises(RedisNotSent, match="cannot connect"):  # it cannot have run
            await p.execute("PING")
    finally:
        await p.close()


async def test_password_and_database_from_the_url(own_redis: local_servers.RedisServer) -> None:
    with sync_client(own_redis.url) as admin:
        admin.execute_command("ACL", "SETUSER", "alice", "on", ">wonder", "~*", "&*", "+@all")
        admin.config_set("requirepass", "s3cret")
    port = own_redis.port
    by_password = RedisPipe(f"redis://:s3cret@127.0.0.1:{port}/3")
    by_user = RedisPipe(f"redis://alice:wonder@127.0.0.1:{port}/5")
    try:
        assert await by_password.execute("SET", "where", "db3") == b"OK"
        assert await by_user.execute("SET", "where", "db5") == b"OK"
        for db, value in [(3, b"db3"), (5, b"db5"), (0, None)]:
            url = f"redis://:s3cret@127.0.0.1:{port}/{db}"
            with sync_client(url) as check:
                assert check.get("where") == value
    finally:
        await by_password.close()
        await by_user.close()


@pytest.mark.parametrize("credentials", ["", ":wrong@", "alice:wrong@"])
async def test_refused_credentials_are_unavailable(
    own_redis: local_servers.RedisServer, credentials: str
) -> None:
    with sync_client(own_redis.url) as admin:
        admin.config_set("requirepass", "s3cret")
    p = RedisPipe(f"redis://{credentials}127.0.0.1:{own_redis.port}/0")
    try:
        with pytest.raises(StateUnavailable):
            await p.execute("PING")
    finally:
        await p.close()


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[Path]:
    binary = program_paths.find_redis_server()
    assert binary is not None
    sock = tmp_path / "redis.sock"
    args = [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(tmp_path)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():  # server start-up
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        yield sock
    finally:
        proc.kill()
        proc.wait()


async def test_commands_over_tls(tls_redis: TlsRedis) -> None:
    pipe = RedisPipe(tls_redis.url(), timeout=5.0)
    try:
        assert await pipe.submit("SET", "k", "v") == b"OK"
        assert await pipe.submit("GET", "k") == b"v"
        script = lua("tls", "return ARGV[1]")
        assert await pipe.evalsha(script, [], ["over tls"]) == b"over tls"
    finally:
        await pipe.close()
    with sync_client(tls_redis.server.url) as client:  # the same Redis, over plain TCP
        assert client.get("k") == b"v"


@pytest.mark.parametrize(
    ("query", "works"),
    [({}, False), ({"ssl_cert_reqs": "none"}, True)],
    ids=["verified", "not-verified"],
)
async def test_a_server_certificate_no_trusted_ca_signed_is_refused(
    tls_redis: TlsRedis, tmp_path: Path, query: dict[str, str], works: bool
) -> None:
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    pipe = RedisPipe(tls_redis.url(ssl_ca_certs=str(stranger), **query), timeout=5.0)
    try:
        if works:
            assert await pipe.submit("PING") == b"PONG"
        else:
            with pytest.raises(RedisUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
                await pipe.submit("PING")
    finally:
        await pipe.close()


async def test_a_client_certificate_when_redis_asks_for_one(tls_redis: TlsRedis) -> None:
    with sync_client(tls_redis.server.url) as client:
        client.config_set("tls-auth-clients", "yes")
    anonymous = RedisPipe(tls_redis.url(), timeout=5.0)
    with pytest.raises(RedisUnreachable):
        await anonymous.submit("PING")
    await anonymous.close()
    url = tls_redis.url(
        ssl_certfile=str(tls_redis.client_cert), ssl_keyfile=str(tls_redis.client_key)
    )
    known = RedisPipe(url, timeout=5.0)
    assert await known.submit("PING") == b"PONG"
    await known.close()


@pytest.mark.parametrize("option", ["ssl_ca_certs", "ssl_certfile"])
def test_a_tls_file_that_cannot_be_used_fails_at_once(tmp_path: Path, option: str) -> None:
    for name, text in [("missing.pem", None), ("garbage.pem", "not a certificate")]:
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ValueError, match=f"{option}={path}"):
            RedisPipe(f"rediss://localhost:1/0?{option}={path}")


async def test_unix_socket(unix_redis: Path) -> None:
    p = RedisPipe(f"unix://{unix_redis}?db=2")
    try:
        assert await p.execute("SET", "u", "1") == b"OK"
        with redis_sync.Redis(unix_socket_path=str(unix_redis), db=2) as check:
            assert check.get("u") == b"1"
    finally:
        await p.close()


async def test_timeout_fails_everything_in_flight_then_reconnects(
    own_redis: local_servers.RedisServer,
) -> None:
    p = RedisPipe(own_redis.url, timeout=0.2)
    admin = sync_client(own_redis.url)
    try:
        assert await p.execute("PING") == b"PONG"
        admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")  # writes wait; reads answer
        loop = asyncio.get_running_loop()
        started = loop.time()
        stuck = [p.submit("INCR", "n") for _ in range(10)]
        results = await asyncio.gather(*stuck, return_exceptions=True)
        elapsed = loop.time() - started
        assert all(isinstance(r, RedisTimeout) for r in results), results
        assert 0.19 <= elapsed < 0.2 + 0.4
        admin.execute_command("CLIENT", "UNPAUSE")
        assert await p.execute("PING") == b"PONG"  # a new connection
    finally:
        admin.close()
        await p.close()


async def test_calls_in_flight_fail_when_redis_dies_and_work_after_restart(
    own_redis: local_servers.RedisServer,
) -> None:
    p = RedisPipe(own_redis.url, timeout=5)
    try:
        assert await p.execute("PING") == b"PONG"
        with sync_client(own_redis.url) as admin:
            admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        in_flight = [p.submit("INCR", "n") for _ in range(20)]
        await asyncio.sleep(0)  # one loop pass: the commands are written
        own_redis.stop(kill=True)
        results = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(isinstance(r, RedisUnreachable) for r in results), results
        assert not any(isinstance(r, RedisNotSent) for r in results)  # written: may have run
        with pytest.raises(RedisUnreachable):
            await p.execute("PING")
        restarted = local_servers.start_redis(own_redis.dir, port=own_redis.port)
        own_redis.proc = restarted.proc
        assert await p.execute("PING") == b"PONG"
    finally:
        await p.close()


async def test_close_fails_what_is_in_flight_and_what_comes_after(
    own_redis: local_servers.RedisServer,
) -> None:
    p = RedisPipe(own_redis.url)
    assert await p.execute("PING") == b"PONG"
    with sync_client(own_redis.url) as admin:
        admin.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    first = p.submit("INCR", "n")
    second = p.submit("INCR", "n")
    await asyncio.sleep(0)  # one loop pass: both are written
    third = p.submit("INCR", "n")  # queued in this pass, not written yet
    await p.close()
    for written in (first, second):
        with pytest.raises(RedisUnreachable, match="closed") as info:
            await written
        assert not isinstance(info.value, RedisNotSent)
    with pytest.raises(RedisNotSent, match="closed"):
        await third
    with pytest.raises(RedisNotSent, match="closed"):
        await p.execute("PING")
    await p.close()  # twice is fine


# -- a server that speaks nonsense ----------------------------------------------------


async def _read_then(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, data: bytes
) -> None:
    await reader.read(1024)
    writer.write(data)
    await writer.drain()
    writer.close()


async def test_a_protocol_error_fails_the_connection() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_then(writer, reader, b"?what\r\n")

    async with fake_server(garbage) as url:
        p = RedisPipe(url)
        try:
            with pytest.raises(RedisUnreachable, match="protocol error"):
                await p.execute("PING")
        finally:
            await p.close()


async def test_a_reply_nobody_asked_for_fails_the_connection() -> None:
    connections = []

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await _read_then(writer, reader, b"+PONG\r\n+EXTRA\r\n")

    async with fake_server(chatty) as url:
        p = RedisPipe(url)
        try:
            assert await p.execute("PING") == b"PONG"
            assert await p.execute("PING") == b"PONG"
            assert len(connections) == 2  # the first one was dropped
        finally:
            await p.close()


async def test_a_server_hanging_up_fails_the_call() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_then(writer, reader, b"")

    async with fake_server(hang_up) as url:
        p = RedisPipe(url)
        try:
            with pytest.raises(RedisUnreachable, match="lost"):
                await p.execute("PING")
        finally:
            await p.close()
