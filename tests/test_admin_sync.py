"""Postgres first, then Redis: a write whose Redis step failed is repaired by sync, never twice.

"Redis down" is an app pointed at a closed port: Postgres commits, the Redis
step fails, the API still answers (Meter-Live-Sync: pending). Then the sync
function runs against the real Redis, called directly (no sleeping).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from test_admin_support import AUTH, NOW, Clock, call, new_account, new_key, new_project, settings

from admin import repository as repo
from admin.app import create_app
from admin.context import FIRST_SYNC_DONE
from admin.sync import SyncReport, apply_account, sync_forever, sync_once, sync_with_settings
from meter import apikeys, keys
from meter.live_state import Call, KeyRecord, LiveState
from meter.local_servers import free_port
from meter.money import Outcome, utc_day

DAY = utc_day(NOW)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
async def down(aiohttp_client: Any, database_url: str) -> TestClient[Any, Any]:
    """The admin API with Redis unreachable."""
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(settings(dead_redis, database_url), clock=Clock())
    )
    return client


@pytest.fixture
async def up(aiohttp_client: Any, redis_url: str, database_url: str) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(settings(redis_url, database_url), clock=Clock())
    )
    return client


async def pending_write(
    client: TestClient[Any, Any], method: str, path: str, body: Any = None, status: int = 200
) -> dict[str, Any]:
    response = await client.request(method, path, json=body, headers=AUTH)
    assert response.status == status, await response.text()
    assert response.headers["Meter-Live-Sync"] == "pending"
    doc: dict[str, Any] = await response.json()
    return doc


async def redis_version(live_state: LiveState, shard: int, account_id: str) -> int:
    raw: Any = await live_state.redis.hget(keys.account(shard, account_id), "ver")
    return int(raw)


async def unsynced(pool: asyncpg.Pool) -> tuple[int, int, int]:
    return (
        await pool.fetchval("select count(*) from accounts where redis_version < config_version"),
        await pool.fetchval("select count(*) from api_keys where not redis_synced"),
        await pool.fetchval("select count(*) from ledger_entries where not redis_applied"),
    )


async def test_writes_committed_while_redis_was_down_are_applied_once_by_sync(
    down: TestClient[Any, Any], pool: asyncpg.Pool, live_state: LiveState
) -> None:
    account = await pending_write(down, "POST", "/v1/accounts", {"name": "Acme"}, 201)
    aid = account["id"]
    project = await call(down, "POST", f"/v1/accounts/{aid}/projects", {"name": "web"}, status=201)
    kept = await pending_write(down, "POST", f"/v1/projects/{project['id']}/keys", status=201)
    revoked = await pending_write(down, "POST", f"/v1/projects/{project['id']}/keys", status=201)
    await pending_write(down, "DELETE", f"/v1/keys/{revoked['id']}")
    credit = {"amount": 4_000_000, "description": "top-up", "idempotency_key": "a"}
    await pending_write(down, "POST", f"/v1/accounts/{aid}/credits", credit, 201)
    limits = {"daily_hard_limit": 3_000_000, "overage_line": 1_000_000, "daily_notify_threshold": 5}
    await pending_write(down, "PUT", f"/v1/accounts/{aid}/limits", limits)
    await pending_write(down, "POST", f"/v1/accounts/{aid}/suspend")
    metrics = await (await down.get("/metrics")).text()
    assert 'meter_admin_live_writes_deferred_total{kind="credit"} 1.0' in metrics
    assert 'meter_admin_live_writes_deferred_total{kind="account"} 3.0' in metrics

    # Recorded in Postgres, nothing in Redis.
    assert await unsynced(pool) == (1, 2, 1)
    assert await live_state.redis.keys("*") == []

    report = await sync_once(pool, live_state)

    assert report == SyncReport(accounts=1, keys=2, credits=1)
    assert await unsynced(pool) == (0, 0, 0)
    state = await live_state.read_account(account["shard"], aid)
    assert state is not None
    assert (state.balance, state.daily_hard_limit, state.overage_line, state.suspended) == (
        4_000_000,
        3_000_000,
        1_000_000,
        True,
    )
    version = await pool.fetchval("select config_version from accounts where id = $1", aid)
    assert await redis_version(live_state, account["shard"], aid) == version
    for key in (kept, revoked):
        record = await live_state.get_api_key(apikeys.digest(key["key"]))
        assert record == KeyRecord(key["id"], project["id"], aid, account["shard"])

    # A second pass finds nothing and credits nothing more.
    assert await sync_once(pool, live_state) == SyncReport()
    state = await live_state.read_account(account["shard"], aid)
    assert state is not None and state.balance == 4_000_000


async def test_the_synced_revocation_and_suspension_reach_the_admission_script(
    down: TestClient[Any, Any], pool: asyncpg.Pool, live_state: LiveState
) -> None:
    account = await pending_write(down, "POST", "/v1/accounts", {"name": "Acme"}, 201)
    aid = account["id"]
    project = await call(down, "POST", f"/v1/accounts/{aid}/projects", {"name": "web"}, status=201)
    kept = await pending_write(down, "POST", f"/v1/projects/{project['id']}/keys", status=201)
    revoked = await pending_write(down, "POST", f"/v1/projects/{project['id']}/keys", status=201)
    await pending_write(down, "DELETE", f"/v1/keys/{revoked['id']}")
    credit = {"amount": 1_000, "description": "top-up", "idempotency_key": "a"}
    await pending_write(down, "POST", f"/v1/accounts/{aid}/credits", credit, 201)
    await sync_once(pool, live_state)

    def call_with(key: dict[str, Any]) -> Call:
        return Call(account["shard"], aid, project["id"], key["id"], "chat", 10)

    assert (await live_state.admit(call_with(revoked), DAY)).outcome is Outcome.KEY_REVOKED
    assert (await live_state.admit(call_with(kept), DAY)).outcome is Outcome.ADMITTED


async def test_a_lost_mark_is_reapplied_without_crediting_twice(
    up: TestClient[Any, Any], pool: asyncpg.Pool, live_state: LiveState
) -> None:
    """A crash after Redis applied but before Postgres was marked: the retry is harmless."""
    account = await new_account(up)
    key = await new_key(up, (await new_project(up, account["id"]))["id"])
    await call(up, "DELETE", f"/v1/keys/{key['id']}", status=200)
    body = {"amount": 3_000_000, "description": "top-up", "idempotency_key": "x"}
    await call(up, "POST", f"/v1/accounts/{account['id']}/credits", body, status=201)
    await pool.execute("update accounts set redis_version = 0")
    await pool.execute("update api_keys set redis_synced = false")
    await pool.execute("update ledger_entries set redis_applied = false")

    assert await sync_once(pool, live_state) == SyncReport(accounts=1, keys=1, credits=1)

    state = await live_state.read_account(account["shard"], account["id"])
    assert state is not None and state.balance == 3_000_000
    assert await unsynced(pool) == (0, 0, 0)


async def test_a_credit_whose_account_redis_lost_recreates_the_account_first(
    up: TestClient[Any, Any], pool: asyncpg.Pool, live_state: LiveState
) -> None:
    account = await new_account(up)
    limits = {"daily_hard_limit": 7, "overage_line": 0, "daily_notify_threshold": None}
    await call(up, "PUT", f"/v1/accounts/{account['id']}/limits", limits, status=200)
    body = {"amount": 3_000_000, "description": "top-up", "idempotency_key": "x"}
    await call(up, "POST", f"/v1/accounts/{account['id']}/credits", body, status=201)
    await live_state.redis.flushall()  # Redis lost everything after the config was marked applied
    await pool.execute("update ledger_entries set redis_applied = false")

    assert await sync_once(pool, live_state) == SyncReport(credits=1)

    state = await live_state.read_account(account["shard"], account["id"])
    assert state is not None
    assert (state.balance, state.daily_hard_limit) == (3_000_000, 7)


async def test_a_retried_credit_request_applies_what_redis_missed(
    down: TestClient[Any, Any], up: TestClient[Any, Any], pool: asyncpg.Pool, live_state: LiveState
) -> None:
    """The client retries after Redis comes back: the replay finishes the Redis step, once."""
    account = await pending_write(down, "POST", "/v1/accounts", {"name": "Acme"}, 201)
    path = f"/v1/accounts/{account['id']}/credits"
    body = {"amount": 1_500_000, "description": "top-up", "idempotency_key": "retry-me"}
    first = await pending_write(down, "POST", path, body, 201)

    replay = await up.post(path, json=body, headers=AUTH)
    again = await up.post(path, json=body, headers=AUTH)

    assert (replay.status, again.status) == (200, 200)
    assert "Meter-Live-Sync" not in replay.headers
    assert (await replay.json())["id"] == first["id"]
    state = await live_state.read_account(account["shard"], account["id"])
    assert state is not None and state.balance == 1_500_000
    assert await sync_once(pool, live_state) == SyncReport()  # nothing left behind


async def test_an_older_config_never_overwrites_a_newer_one(
    up: TestClient[Any, Any], pool: asyncpg.Pool, live_state: LiveState
) -> None:
    account = await new_account(up)
    stale = await repo.get_account(pool, account["id"])
    assert stale is not None and stale.config_version == 1
    await call(up, "POST", f"/v1/accounts/{account['id']}/suspend", status=200)

    await apply_account(pool, live_state, stale)  # a late retry of version 1

    state = await live_state.read_account(account["shard"], account["id"])
    assert state is not None and state.suspended
    assert (
        await pool.fetchval("select redis_version from accounts where id = $1", account["id"]) == 2
    )


async def test_concurrent_limit_updates_land_in_postgres_order(
    up: TestClient[Any, Any], pool: asyncpg.Pool, live_state: LiveState
) -> None:
    account = await new_account(up)
    path = f"/v1/accounts/{account['id']}/limits"
    await asyncio.gather(
        *(
            call(
                up,
                "PUT",
                path,
                {"daily_hard_limit": i, "overage_line": i, "daily_notify_threshold": i},
                status=200,
            )
            for i in range(1, 31)
        )
    )
    final = await repo.get_account(pool, account["id"])
    assert final is not None and final.config_version == 31
    state = await live_state.read_account(account["shard"], account["id"])
    assert state is not None
    assert (state.daily_hard_limit, state.overage_line, state.daily_notify_threshold) == (
        final.daily_hard_limit,
        final.overage_line,
        final.daily_notify_threshold,
    )
    assert await redis_version(live_state, final.shard, final.id) == 31
    assert final.redis_version == 31


async def run_until(loop: Any, done: asyncio.Event) -> None:
    task = asyncio.create_task(loop)
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_sync_forever_survives_failures_then_repairs(
    down: TestClient[Any, Any], pool: asyncpg.Pool, live_state: LiveState
) -> None:
    await pending_write(down, "POST", "/v1/accounts", {"name": "Acme"}, 201)
    failures: list[BaseException] = []
    reports: list[SyncReport] = []
    failed_twice, repaired_then_idle = asyncio.Event(), asyncio.Event()

    def on_failure(exc: BaseException) -> None:
        failures.append(exc)
        if len(failures) == 2:
            failed_twice.set()

    def on_report(report: SyncReport) -> None:
        reports.append(report)
        if len(reports) == 2:
            repaired_then_idle.set()

    dead = LiveState.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    try:
        await run_until(sync_forever(pool, dead, 0.01, on_failure=on_failure), failed_twice)
    finally:
        await dead.close()
    assert await unsynced(pool) == (1, 0, 0)

    await run_until(sync_forever(pool, live_state, 0.01, on_report=on_report), repaired_then_idle)

    assert reports == [SyncReport(accounts=1), SyncReport()]
    assert await unsynced(pool) == (0, 0, 0)


async def test_sync_with_settings_is_one_standalone_pass(
    down: TestClient[Any, Any], redis_url: str, database_url: str, live_state: LiveState
) -> None:
    account = await pending_write(down, "POST", "/v1/accounts", {"name": "Acme"}, 201)
    report = await sync_with_settings(settings(redis_url, database_url))
    assert report == SyncReport(accounts=1)
    assert await live_state.read_account(account["shard"], account["id"]) is not None


async def test_the_app_syncs_at_start_up(
    down: TestClient[Any, Any],
    aiohttp_client: Any,
    redis_url: str,
    database_url: str,
    pool: asyncpg.Pool,
) -> None:
    await pending_write(down, "POST", "/v1/accounts", {"name": "Acme"}, 201)
    client = await aiohttp_client(create_app(settings(redis_url, database_url)))
    await asyncio.wait_for(client.app[FIRST_SYNC_DONE].wait(), 10)
    text = await (await client.get("/metrics")).text()
    assert 'meter_admin_sync_repairs_total{kind="account"} 1.0' in text
    assert await unsynced(pool) == (0, 0, 0)
