"""``python -m gateway`` as a real process: JSON logs, graceful drain on SIGTERM, workers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.testing import ECHO, Provisioned, add_key, echo_app, provision, until
from meter import keys, local_servers
from meter.live_state import KeyRecord, LiveState
from meter.local_servers import free_port
from meter.money import usd

ROOT = Path(__file__).resolve().parent.parent


class GatewayProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.logs: list[dict[str, Any]] = []

    async def log_line(self, msg: str) -> dict[str, Any]:
        """Read the JSON log until a line with this message (the process's own signal)."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(20):
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"process ended before logging {msg!r}: {self.logs}")
                doc = orjson.loads(raw)  # every line is JSON
                self.logs.append(doc)
                if doc.get("msg") == msg:
                    return dict(doc)

    async def refused_start_up(self) -> str:
        """The one line a gateway that refused to start wrote (exit code 2)."""
        assert await asyncio.wait_for(self.proc.wait(), 20) == 2
        assert self.proc.stderr is not None
        lines = (await self.proc.stderr.read()).decode().strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]


@pytest.fixture
async def upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[TestServer]:
    server = await aiohttp_server(echo_app())
    yield server
    server.app[ECHO].hang.set()


@pytest.fixture
async def spawn(
    redis_url: str, upstream: TestServer
) -> AsyncIterator[Callable[..., Awaitable[GatewayProcess]]]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(**env: str) -> GatewayProcess:
        port = free_port()
        environ = {
            "PATH": os.environ.get("PATH", ""),
            "METER_REDIS_URL": redis_url,
            "METER_UPSTREAM_URL": str(upstream.make_url("/")),
            "METER_GATEWAY_PORT": str(port),
            "METER_GATEWAY_METRICS_PORT": "0",
            "METER_SHUTDOWN_GRACE": "20",
            **env,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            cwd=ROOT,
            env=environ,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        return GatewayProcess(proc, port)

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigterm_drains_in_flight_calls(
    spawn: Callable[..., Awaitable[GatewayProcess]], upstream: TestServer, live_state: LiveState
) -> None:
    account = await provision(live_state, balance=10_000)
    gw = await spawn()
    listening = await gw.log_line("gateway listening")
    assert (listening["level"], listening["port"]) == ("info", gw.port)
    echo = upstream.app[ECHO]
    async with aiohttp.ClientSession() as http:
        in_flight = asyncio.create_task(
            http.get(
                gw.url + "/slow",
                headers={"X-API-Key": account.key, "X-Echo-Hang": "1"},
            )
        )
        async with asyncio.timeout(10):
            await echo.arrived.wait()  # the call is at the upstream
        gw.proc.send_signal(signal.SIGTERM)
        await gw.log_line("gateway draining")
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(gw.url + "/_meter/healthz")  # no longer accepting
        echo.hang.set()
        response = await in_flight
        assert response.status == 200
        assert response.headers["X-Meter-Charged"] == "1000"
        assert (await response.json())["path"] == "/slow"
    await gw.log_line("gateway stopped")
    assert await asyncio.wait_for(gw.proc.wait(), 10) == 0


async def test_workers_share_the_port_and_are_restarted(
    spawn: Callable[..., Awaitable[GatewayProcess]], live_state: LiveState
) -> None:
    account = await provision(live_state, balance=10_000)
    gw = await spawn(METER_GATEWAY_WORKERS="2")
    pids = {(await gw.log_line("gateway listening"))["pid"] for _ in range(2)}
    assert len(pids) == 2 and gw.proc.pid not in pids
    seen: set[int] = set()
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection per request
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(40):
            async with http.get(gw.url + "/_meter/healthz") as response:
                seen.add((await response.json())["pid"])
        async with http.get(gw.url + "/x", headers={"X-API-Key": account.key}) as response:
            assert response.status == 200
    assert seen == pids  # the kernel spread the connections over both workers
    # A worker that dies is replaced.
    dead = min(pids)
    os.kill(dead, signal.SIGKILL)
    exited = await gw.log_line("gateway worker exited; restarting")
    assert exited["code"] == -signal.SIGKILL
    replacement = (await gw.log_line("gateway listening"))["pid"]
    assert replacement not in pids
    pids = pids - {dead} | {replacement}
    gw.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(gw.proc.wait(), 20) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# The built-in price table's routes, in turn: two calls in a row never share a route.
# All POSTs: aiohttp's client sends an idempotent request again, on a new connection,
# when a kept-alive one drops it, and the gateway rightly charges both.
TRAFFIC = (
    ("POST", "/v1/chat/completions", "chat"),  # variable: reserves 100,000
    ("POST", "/v1/things", "default"),
    ("POST", "/v1/embeddings", "embeddings"),
)


@dataclass
class Sent:
    route: str
    status: int | None = None  # None: the connection went before an answer (cut)
    charged: int | None = None


async def _calls(
    url: str, key: Provisioned, stop: asyncio.Event, sent: list[Sent], answered: list[int]
) -> None:
    """One call at a time with one key, over one keep-alive connection (a new one after a
    cut), until ``stop``."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        i = 0
        while not stop.is_set():
            method, path, route = TRAFFIC[i % len(TRAFFIC)]
            i += 1
            call = Sent(route)
            sent.append(call)
            headers = {"X-API-Key": key.key, "X-Echo-Units": str(i % 5_000)}
            try:
                async with http.request(method, url + path, headers=headers) as response:
                    await response.read()
                    call.status = response.status
                    call.charged = int(response.headers["X-Meter-Charged"])
                    answered[0] += 1
            except aiohttp.ClientConnectionError:
                pass


async def _hang_on(url: str, key: Provisioned, pid: int, count: int) -> list[asyncio.Task[Sent]]:
    """``count`` chat calls that wait at the upstream, each on a connection of the worker
    ``pid`` (asked with /_meter/healthz on that connection first)."""
    calls: list[asyncio.Task[Sent]] = []

    async def hang(http: aiohttp.ClientSession) -> Sent:
        call = Sent("chat")
        headers = {"X-API-Key": key.key, "X-Echo-Hang": "1", "X-Echo-Units": "7"}
        try:
            async with http.post(url + "/v1/chat/completions", headers=headers) as response:
                await response.read()
                call.status = response.status
                call.charged = int(response.headers["X-Meter-Charged"])
        except aiohttp.ClientConnectionError:
            pass
        finally:
            await http.close()
        return call

    for _ in range(200):
        if len(calls) == count:
            return calls
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        async with http.get(url + "/_meter/healthz") as response:
            served_by = (await response.json())["pid"]
        if served_by == pid:
            calls.append(asyncio.create_task(hang(http)))
        else:
            await http.close()
    raise AssertionError(f"no connection to worker {pid} in 200 tries")


async def test_a_worker_killed_mid_traffic_loses_and_doubles_nothing(
    spawn: Callable[..., Awaitable[GatewayProcess]], upstream: TestServer, live_state: LiveState
) -> None:
    """kill -9 of one of two workers while calls flow through both and some wait at the
    upstream. Redis and its usage stream (what the ledger books) stay exact: every answered
    call is charged what its answer says, once; a call the kill cut is charged nothing if it
    had not been admitted, else what stood when it was cut: a variable-cost call forwarded
    and not settled keeps its reserve (nobody can say what the upstream did)."""
    first = await provision(live_state, balance=usd(1000))
    shard = first.record.shard
    callers = [first] + [
        await add_key(live_state, KeyRecord(f"key_{i}", "proj_1", "acct_1", shard))
        for i in range(2, 9)
    ]
    waiter = await add_key(live_state, KeyRecord("key_hang", "proj_1", "acct_1", shard))
    gw = await spawn(METER_GATEWAY_WORKERS="2")
    pids = sorted([(await gw.log_line("gateway listening"))["pid"] for _ in range(2)])
    victim, survivor = pids
    echo = upstream.app[ECHO]
    doomed = await _hang_on(gw.url, waiter, victim, 2)
    kept = await _hang_on(gw.url, waiter, survivor, 1)
    stop = asyncio.Event()
    sent: dict[str, list[Sent]] = {c.record.key_id: [] for c in callers}
    answered = [0]
    traffic = [
        asyncio.create_task(_calls(gw.url, c, stop, sent[c.record.key_id], answered))
        for c in callers
    ]
    await until(lambda: echo.hanging == 3 and answered[0] >= 40, within=20)
    os.kill(victim, signal.SIGKILL)
    exited = await gw.log_line("gateway worker exited; restarting")
    assert exited["code"] == -signal.SIGKILL
    assert (await gw.log_line("gateway listening"))["pid"] not in pids
    after = answered[0]
    await until(lambda: answered[0] >= after + 40, within=20)
    stop.set()
    await asyncio.gather(*traffic)
    echo.hang.set()
    doomed_calls = [await t for t in doomed]
    kept_calls = [await t for t in kept]

    state = await live_state.read_account(shard, "acct_1")
    assert state is not None
    drop = usd(1000) - state.balance
    entries = await live_state.redis.xrange(keys.usage_stream(shard))
    eids = [eid.decode() for eid, _ in entries]
    events = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
    debits = [e for e in events if e["t"] == "d"]
    by_eid = dict(zip(eids, events, strict=True))
    refunded: dict[str, int] = {}
    for e in events:
        if e["t"] == "r":
            assert e["o"] not in refunded  # given back at most once
            assert by_eid[e["o"]]["t"] == "d" and by_eid[e["o"]]["k"] == e["k"]
            refunded[e["o"]] = int(e["m"])
    assert {e["t"] for e in events} <= {"d", "r"}
    # Redis and its stream agree, micro for micro.
    assert drop == sum(int(e["m"]) for e in debits) - sum(refunded.values())

    standing = 0  # what the cut calls that had been admitted were left charged
    cut = 0
    for key_id, calls in [*sent.items(), ("key_hang", [*doomed_calls, *kept_calls])]:
        mine = [eid for eid in eids if by_eid[eid]["t"] == "d" and by_eid[eid]["k"] == key_id]
        if key_id == "key_hang":  # their order is not the order of the list
            mine.sort(key=lambda eid: eid not in refunded)
            calls = sorted(calls, key=lambda c: c.status is None)
        j = 0
        for call in calls:
            if call.status is not None:
                assert call.status == 200, call
                eid = mine[j]
                j += 1
                assert by_eid[eid]["r"] == call.route
                assert int(by_eid[eid]["m"]) - refunded.get(eid, 0) == call.charged
            else:
                cut += 1
                if j < len(mine) and by_eid[mine[j]]["r"] == call.route:
                    eid = mine[j]  # admitted before the cut
                    j += 1
                    standing += int(by_eid[eid]["m"]) - refunded.get(eid, 0)
        assert j == len(mine), key_id  # no debit that no call accounts for
    # The calls waiting at the upstream in the killed worker: forwarded, never settled.
    assert [c.status for c in doomed_calls] == [None, None]
    assert [(c.status, c.charged) for c in kept_calls] == [(200, 70)]
    answered_charged = sum(c.charged or 0 for calls in [*sent.values(), kept_calls] for c in calls)
    assert drop == answered_charged + standing
    assert standing >= 2 * 100_000 and cut >= 2
    assert answered[0] >= 80
    gw.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(gw.proc.wait(), 20) == 0


async def test_workers_stop_when_the_supervisor_is_killed(
    spawn: Callable[..., Awaitable[GatewayProcess]], live_state: LiveState
) -> None:
    """A supervisor killed outright leaves no worker serving on the port."""
    account = await provision(live_state, balance=10_000)
    gw = await spawn(METER_GATEWAY_WORKERS="2")
    pids = [(await gw.log_line("gateway listening"))["pid"] for _ in range(2)]
    gw.proc.kill()
    assert await asyncio.wait_for(gw.proc.wait(), 20) == -signal.SIGKILL
    for _ in range(2):
        await gw.log_line("gateway stopped")  # each drained, as on SIGTERM
    await until(lambda: not any(local_servers.alive(pid) for pid in pids), within=20)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(gw.url + "/x", headers={"X-API-Key": account.key})


async def test_bad_price_table_stops_start_up_with_one_line(
    spawn: Callable[..., Awaitable[GatewayProcess]], tmp_path: Path
) -> None:
    bad = tmp_path / "prices.toml"
    bad.write_text("[default]\nprice = -1\n")
    gw = await spawn(METER_PRICES=str(bad))
    line = await gw.refused_start_up()
    assert "METER_PRICES=" in line and "[default]: price" in line


async def test_a_refund_waiting_in_a_worker_killed_outright_is_given_back_by_its_successor(
    spawn: Callable[..., Awaitable[GatewayProcess]],
    upstream: TestServer,
    live_state: LiveState,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Redis goes away while a call is at the upstream; the upstream fails it, so its price
    is owed back, and the refund waits for Redis. The worker is killed outright before
    Redis returns: the worker the supervisor starts in its place claims the refund from
    the spool and gives it back, once."""
    from test_gateway import TcpRelay

    relay = TcpRelay(URL(redis_url).port or 6379)
    relay_port = await relay.start()
    account = await provision(live_state, balance=100_000)
    spool = tmp_path / "spool"
    gw = await spawn(
        METER_GATEWAY_WORKERS="2",
        METER_REDIS_URL=f"redis://127.0.0.1:{relay_port}/0",
        METER_REDIS_TIMEOUT="0.5",
        METER_REFUND_SPOOL_DIR=str(spool),
    )
    for _ in range(2):
        await gw.log_line("gateway listening")
    echo = upstream.app[ECHO]
    headers = {"X-API-Key": account.key, "X-Echo-Hang": "1", "X-Echo-Status": "503"}
    async with aiohttp.ClientSession() as http:
        call = asyncio.ensure_future(http.post(gw.url + "/v1/things", headers=headers))
        await until(lambda: echo.hanging == 1, within=10)
        await relay.cut()
        echo.hang.set()
        response = await call
        assert (response.status, response.headers["X-Meter-Charged"]) == (503, "1000")
    victim = (await gw.log_line("refund deferred"))["pid"]
    os.kill(victim, signal.SIGKILL)
    exited = await gw.log_line("gateway worker exited; restarting")
    assert (exited["worker_pid"], exited["code"]) == (victim, -signal.SIGKILL)
    claimed = await gw.log_line("refunds claimed from a stopped worker's spool")
    assert claimed["pid"] != victim and claimed["waiting"] == 1
    rec = account.record
    assert (await live_state.read_account(rec.shard, rec.account_id)).balance == 99_000  # type: ignore[union-attr]
    await relay.start()
    applied = await gw.log_line("refund applied late")
    assert applied["pid"] == claimed["pid"] and applied["micros"] == 1_000
    assert (await live_state.read_account(rec.shard, rec.account_id)).balance == 100_000  # type: ignore[union-attr]
    entries = await live_state.redis.xrange(keys.usage_stream(rec.shard))
    assert [fields[b"t"] for _, fields in entries] == [b"d", b"r"]
    gw.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(gw.proc.wait(), 20) == 0
    assert list(spool.iterdir()) == []  # both workers stopped with nothing waiting
    await relay.cut()


async def test_a_redis_ca_file_that_cannot_be_read_stops_start_up_with_one_line(
    spawn: Callable[..., Awaitable[GatewayProcess]], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    gw = await spawn(METER_REDIS_URL=f"rediss://:hunter2@localhost:1/0?ssl_ca_certs={missing}")
    line = await gw.refused_start_up()
    assert f"METER_REDIS_URL: TLS: ssl_ca_certs={missing}" in line and "hunter2" not in line
