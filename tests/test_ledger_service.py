"""`python -m ledger` as a real process: probes, metrics, JSON logs, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path

import aiohttp
import asyncpg
from ledger_fixtures import (
    caught_up,
    ledger_settings,
    make_traffic,
    provision,
    start_worker_process,
    wait_for,
)

from meter.live_state import LiveState
from meter.local_servers import free_port
from meter.money import usd

SHARDS = 4


async def test_the_service_serves_probes_and_metrics_and_stops_on_sigterm(
    live_state: LiveState, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    db = await asyncpg.connect(database_url)
    try:
        accts = [await provision(db, live_state, f"acct_{i}", SHARDS, usd(10)) for i in range(4)]
        await make_traffic(live_state, accts, 100, rng=random.Random(1))
        port = free_port()
        settings = ledger_settings(redis_url, database_url)
        log = tmp_path / "ledger.log"
        proc = start_worker_process(
            settings, log, METER_LEDGER_PORT=str(port), METER_LOG_LEVEL="info"
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:

                async def ready() -> bool:
                    try:
                        async with http.get(f"{base}/readyz") as r:
                            return (
                                r.status == 200 and len((await r.json())["owned_shards"]) == SHARDS
                            )
                    except aiohttp.ClientConnectionError:
                        return False

                await wait_for(ready, what="/readyz")
                await wait_for(lambda: caught_up(db, live_state, SHARDS), what="catch up")
                async with http.get(f"{base}/healthz") as r:
                    assert r.status == 200 and (await r.json()) == {"status": "ok"}
                async with http.get(f"{base}/metrics") as r:
                    text = await r.text()
                    assert r.status == 200 and r.content_type == "text/plain"
                assert "meter_ledger_events_applied_total" in text
                assert "meter_ledger_lag_seconds" in text
                assert "meter_ledger_owned_shards 4.0" in text
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            while proc.poll() is None:
                assert time.monotonic() - started < 10
                await asyncio.sleep(0.02)
            assert proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        messages = [line["msg"] for line in lines]
        assert "ledger worker started" in messages and "ledger worker stopping" in messages
        assert {"ts", "level", "logger"} <= set(lines[0])
        # Every lock went with the process.
        assert await db.fetchval("select count(*) from pg_locks where locktype = 'advisory'") == 0
    finally:
        await db.close()


async def test_readyz_says_unavailable_without_postgres(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    settings = ledger_settings(redis_url, f"postgresql://meter@127.0.0.1:{free_port()}/meter")
    proc = start_worker_process(settings, tmp_path / "ledger.log", METER_LEDGER_PORT=str(port))
    try:
        async with aiohttp.ClientSession() as http:

            async def answered() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                        return r.status == 503 and (await r.json())["unavailable"] == ["postgres"]
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(answered, what="/readyz answering 503")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
