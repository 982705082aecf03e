"""Shared helpers of the admin API tests (no tests here; imported by ``test_admin_*.py``)."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from admin.app import create_app
from meter.settings import Settings

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"
MAX_BODY = 2048
# 2024-03-01T12:00:00Z: a fixed "now" for the balance's day roll-over.
NOW = 1_709_294_400.0
RETURN_URLS = "https://app.example.test/billing,http://127.0.0.1"
RETURN_URL = "https://app.example.test/billing/done"
ANY_2XX = -200  # for ``call``: any 2xx status


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(redis_url: str, database_url: str, **env: str) -> Settings:
    values = {
        "METER_REDIS_URL": redis_url,
        "METER_DATABASE_URL": database_url,
        "METER_ADMIN_TOKEN": TOKEN,
        "METER_SHARDS": "4",
        "METER_ADMIN_MAX_BODY_BYTES": str(MAX_BODY),
        "METER_REDIS_TIMEOUT": "0.5",
        "METER_PORTAL_RETURN_URLS": RETURN_URLS,
        **env,
    }
    return Settings.from_env(values)


def stripe_env(double: Any) -> dict[str, str]:
    """The settings that point payments at the Stripe double (tests/stripe_fixtures.py)."""
    return {
        "METER_STRIPE_SECRET_KEY": double.secret_key,
        "METER_STRIPE_PUBLISHABLE_KEY": double.publishable_key,
        "METER_STRIPE_API_BASE": double.api_base,
        "METER_STRIPE_WEBHOOK_SECRET": "whsec_admin_tests_0123456789",
    }


async def start(
    aiohttp_client: Any,
    redis_url: str,
    database_url: str,
    clock: Clock | None = None,
    **env: str,
) -> TestClient[Any, Any]:
    app = create_app(settings(redis_url, database_url, **env), clock=clock or Clock())
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


async def call(
    client: TestClient[Any, Any],
    method: str,
    path: str,
    body: Any = None,
    *,
    status: int,
    headers: dict[str, str] | None = None,
) -> Any:
    """One authenticated JSON request; asserts the status and returns the decoded body."""
    response = await client.request(method, path, json=body, headers={**AUTH, **(headers or {})})
    text = await response.text()
    if status == ANY_2XX:
        assert 200 <= response.status < 300, text
    else:
        assert response.status == status, text
    return await response.json(content_type=None)


async def new_account(client: TestClient[Any, Any], name: str = "Acme") -> dict[str, Any]:
    account: dict[str, Any] = await call(
        client,
        "POST",
        "/v1/accounts",
        {"name": name, "billing_email": "billing@acme.test"},
        status=201,
    )
    return account


async def new_project(client: TestClient[Any, Any], account_id: str) -> dict[str, Any]:
    project: dict[str, Any] = await call(
        client, "POST", f"/v1/accounts/{account_id}/projects", {"name": "web"}, status=201
    )
    return project


async def new_key(client: TestClient[Any, Any], project_id: str) -> dict[str, Any]:
    key: dict[str, Any] = await call(client, "POST", f"/v1/projects/{project_id}/keys", status=201)
    return key


async def add_credit(
    client: TestClient[Any, Any], account_id: str, amount: int, key: str, *, status: int = 201
) -> dict[str, Any]:
    entry: dict[str, Any] = await call(
        client,
        "POST",
        f"/v1/accounts/{account_id}/credits",
        {"amount": amount, "description": "top-up", "idempotency_key": key},
        status=status,
    )
    return entry


async def postgres_rows(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the schema, so a table a new route writes is compared too."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            "select tablename from pg_tables where schemaname = current_schema() order by 1"
        )
        return {
            t["tablename"]: [
                tuple(r) for r in await conn.fetch(f'select * from "{t["tablename"]}" order by 1')
            ]
            for t in tables
        }
    finally:
        await conn.close()


async def redis_contents(redis_url: str) -> dict[Any, Any]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    try:
        out: dict[Any, Any] = {}
        for key in sorted(await client.keys("*")):
            raw_kind: Any = await client.type(key)
            kind = raw_kind.decode()
            if kind == "hash":
                out[key] = await client.hgetall(key)
            elif kind == "zset":
                out[key] = await client.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                out[key] = await client.xrange(key)
            else:
                out[key] = (kind, await client.dump(key))
        return out
    finally:
        await client.aclose()


async def snapshot(database_url: str, redis_url: str) -> tuple[Any, Any]:
    """Everything the admin API can change: compare before and after a refused request."""
    return await postgres_rows(database_url), await redis_contents(redis_url)
