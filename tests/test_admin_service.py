"""``admin.service.main``: refuses bad config in one line; serves; stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import aiohttp
import orjson
import pytest
from test_admin_support import AUTH, TOKEN, settings

from admin.app import create_app
from admin.service import main
from meter.local_servers import free_port
from meter.settings import ConfigError

SERVE = (
    "from admin.service import main; from meter.settings import Settings; main(Settings.from_env())"
)


def test_an_empty_token_stops_start_up_naming_the_variable(
    redis_url: str, database_url: str
) -> None:
    no_token = settings(redis_url, database_url, METER_ADMIN_TOKEN="  ")
    with pytest.raises(ConfigError, match="METER_ADMIN_TOKEN"):
        create_app(no_token)
    with pytest.raises(ConfigError, match="METER_ADMIN_TOKEN") as info:
        main(no_token)
    assert "\n" not in str(info.value)


async def read_log_until(
    stream: asyncio.StreamReader, message: str, seen: list[dict[str, Any]]
) -> None:
    while True:
        line = await stream.readline()
        assert line, f"the service exited before logging {message!r}: {seen}"
        seen.append(orjson.loads(line))  # every line is one JSON object
        if seen[-1]["msg"] == message:
            return


async def test_the_service_serves_and_stops_gracefully_on_sigterm(
    redis_url: str, database_url: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "METER_REDIS_URL": redis_url,
        "METER_DATABASE_URL": database_url,
        "METER_ADMIN_TOKEN": TOKEN,
        "METER_ADMIN_PORT": str(port),
        "METER_SHUTDOWN_GRACE": "5",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVE, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    log: list[dict[str, Any]] = []
    try:
        await asyncio.wait_for(read_log_until(proc.stderr, "admin API listening", log), 30)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/healthz") as health:
                assert health.status == 200
            async with http.post("/v1/accounts", json={"name": "Acme"}, headers=AUTH) as created:
                assert created.status == 201
                assert (await created.json())["id"].startswith("acct_")
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(read_log_until(proc.stderr, "admin API stopped", log), 30)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert all(entry["level"] in {"info", "warning"} for entry in log), log
    assert TOKEN not in orjson.dumps(log).decode()
