"""``python -m gateway`` as a real process: JSON logs, graceful drain on SIGTERM, workers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gateway.testing import ECHO, echo_app, provision
from meter.live_state import LiveState
from meter.local_servers import free_port

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


@pytest.fixture
async def upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> AsyncIterator[TestServer]:
    server = await aiohttp_server(echo_app())
    yield server
    server.app[ECHO].hang.set()


@pytest.fixture(params=["raw", "aiohttp"])
def server_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def spawn(
    redis_url: str, upstream: TestServer, server_mode: str
) -> AsyncIterator[Callable[..., Awaitable[GatewayProcess]]]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(**env: str) -> GatewayProcess:
        port = free_port()
        environ = {
            "PATH": os.environ.get("PATH", ""),
            "METER_REDIS_URL": redis_url,
            "METER_UPSTREAM_URL": str(upstream.make_url("/")),
            "METER_GATEWAY_PORT": str(port),
            "METER_SHUTDOWN_GRACE": "20",
            "METER_GATEWAY_SERVER": server_mode,
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


async def test_bad_price_table_stops_start_up_with_one_line(
    spawn: Callable[..., Awaitable[GatewayProcess]], tmp_path: Path
) -> None:
    bad = tmp_path / "prices.toml"
    bad.write_text("[default]\nprice = -1\n")
    gw = await spawn(METER_PRICES=str(bad))
    assert await asyncio.wait_for(gw.proc.wait(), 20) == 2
    assert gw.proc.stderr is not None
    lines = (await gw.proc.stderr.read()).decode().strip().splitlines()
    assert len(lines) == 1 and "METER_PRICES=" in lines[0] and "[default]: price" in lines[0]
