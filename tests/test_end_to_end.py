"""The whole product in one test process: admin API -> gateway -> upstream -> ledger -> history.

Real Redis and Postgres (fixtures), the real admin API and gateway over HTTP on
loopback, the echo upstream, and the ledger worker; nothing of ours is replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from ledger_fixtures import caught_up, running_worker, wait_for

from admin.app import create_app as create_admin
from gateway.testing import running_gateway
from ledger.reconcile import reconcile
from ledger.worker import redis_client
from meter import echo_upstream
from meter.live_state import LiveState
from meter.money import usd
from meter.settings import Secret, Settings

TOKEN = "e2e-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHARDS = 4


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    server = await echo_upstream.serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


@pytest.fixture
def settings(redis_url: str, database_url: str, upstream_url: str) -> Settings:
    return Settings.from_env(
        {},
        redis_url=redis_url,
        database_url=database_url,
        upstream_url=upstream_url,
        admin_token=Secret(TOKEN),
        shards=SHARDS,
        ledger_batch=200,
        ledger_max_wait=0.02,
        ledger_lock_retry=0.1,
        reconcile_interval=0.0,
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        yield session


async def admin_call(
    http: aiohttp.ClientSession,
    base: str,
    method: str,
    path: str,
    body: Any = None,
    status: int = 200,
) -> Any:
    async with http.request(method, base + path, json=body, headers=AUTH) as resp:
        doc = await resp.json(content_type=None)
        assert resp.status == status, doc
        return doc


async def test_a_metered_call_from_provisioning_to_the_balance_history(
    settings: Settings, http: aiohttp.ClientSession, database_url: str
) -> None:
    admin = TestServer(create_admin(settings))
    await admin.start_server()
    gateway = AsyncExitStack()
    try:
        a = str(admin.make_url("")).rstrip("/")
        g, _ = await gateway.enter_async_context(running_gateway(settings))
        account = await admin_call(http, a, "POST", "/v1/accounts", {"name": "E2E"}, 201)
        project = await admin_call(
            http, a, "POST", f"/v1/accounts/{account['id']}/projects", {"name": "p"}, 201
        )
        key = await admin_call(http, a, "POST", f"/v1/projects/{project['id']}/keys", None, 201)
        await admin_call(
            http,
            a,
            "POST",
            f"/v1/accounts/{account['id']}/credits",
            {"amount": usd(1), "description": "Welcome credits", "idempotency_key": "welcome"},
            201,
        )

        # 40 concurrent calls to a fixed-price route; the default price of the table decides
        # how many fit in $1. Whatever it is, admitted x price must be exactly what left.
        async def one() -> tuple[int, int]:
            async with http.post(
                g + "/v1/chat/completions",
                data=b"{}",
                headers={"Authorization": f"Bearer {key['key']}"},
            ) as resp:
                await resp.read()
                return resp.status, int(resp.headers.get("X-Meter-Charged", "0"))

        results = await asyncio.gather(*(one() for _ in range(40)))
        admitted = [charged for status, charged in results if status == 200]
        assert admitted and all(status in (200, 402) for status, _ in results)
        spent = sum(admitted)

        balance = await admin_call(http, a, "GET", f"/v1/accounts/{account['id']}/balance")
        assert balance["balance"] == usd(1) - spent

        # The ledger books it: one usage entry (or a few) summing to exactly what was charged.
        async with running_worker(settings):
            conn = await asyncpg.connect(database_url)
            try:
                state = LiveState.from_url(settings.redis_url)
                try:
                    await wait_for(lambda: caught_up(conn, state, SHARDS), what="ledger caught up")
                finally:
                    await state.close()
            finally:
                await conn.close()

        history = await admin_call(
            http, a, "GET", f"/v1/accounts/{account['id']}/transactions?limit=50"
        )
        kinds = [t["kind"] for t in history["data"]]
        assert kinds[-1] == "credit" and set(kinds[:-1]) == {"usage"}
        assert sum(t["amount"] for t in history["data"] if t["kind"] == "usage") == -spent
        assert history["data"][0]["balance_after"] == usd(1) - spent
        assert history["next_cursor"] is None

        usage = await admin_call(
            http, a, "GET", f"/v1/accounts/{account['id']}/usage?group_by=route"
        )
        assert sum(r["calls"] for r in usage["data"]) == len(admitted)
        assert sum(r["amount"] for r in usage["data"]) == spent
        assert usage["today"]["amount"] == spent

        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        client = redis_client(settings)
        try:
            report = await reconcile(pool, client)
            assert report.ok, report.render()
        finally:
            await client.aclose()
            await pool.close()
    finally:
        await gateway.aclose()
        await admin.close()


async def test_history_routes_refuse_bad_input(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    admin = TestServer(create_admin(settings))
    await admin.start_server()
    try:
        a = str(admin.make_url("")).rstrip("/")
        account = await admin_call(http, a, "POST", "/v1/accounts", {"name": "E2E"}, 201)
        for path, status in [
            (f"/v1/accounts/{account['id']}/transactions?cursor=garbage", 400),
            (f"/v1/accounts/{account['id']}/transactions?limit=-1", 400),
            (f"/v1/accounts/{account['id']}/usage?group_by=week", 400),
            (f"/v1/accounts/{account['id']}/usage?from=2024-13-01", 400),
            ("/v1/accounts/acct_doesnotexist000000000000/transactions", 404),
            ("/v1/accounts/acct_doesnotexist000000000000/usage", 404),
        ]:
            async with http.get(a + path, headers=AUTH) as resp:
                assert resp.status == status, (path, await resp.text())
                assert resp.content_type == "application/problem+json"
        async with http.get(a + f"/v1/accounts/{account['id']}/transactions") as resp:
            assert resp.status == 401
        empty = await admin_call(http, a, "GET", f"/v1/accounts/{account['id']}/transactions")
        assert empty == {"data": [], "next_cursor": None}
    finally:
        await admin.close()
