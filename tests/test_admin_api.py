"""Every admin route's happy path, through the real HTTP stack, Postgres and Redis."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from test_admin_support import (
    AUTH,
    NOW,
    PROBLEM,
    Clock,
    add_credit,
    call,
    new_account,
    new_key,
    new_project,
    settings,
    start,
)

from admin import operations as openapi
from admin.app import create_app
from admin.provisioning import Provisioning
from meter import apikeys, keys
from meter.live_state import Call, KeyRecord, LiveState
from meter.local_servers import free_port
from meter.money import Outcome, utc_day

DAY = utc_day(NOW)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(aiohttp_client: Any, redis_url: str, database_url: str, clock: Clock) -> Any:
    return await start(aiohttp_client, redis_url, database_url, clock)


def a_call(account: dict[str, Any], key: dict[str, Any], price: int) -> Call:
    return Call(account["shard"], account["id"], key["project_id"], key["id"], "chat", price)


# -- accounts ------------------------------------------------------------------------


async def test_create_account_writes_postgres_then_redis(
    client: TestClient[Any, Any], db: Any, live_state: LiveState
) -> None:
    account = await new_account(client)
    assert account["id"].startswith("acct_") and len(account["id"]) == 27
    assert account["shard"] == keys.shard_of(account["id"], 4)
    assert {
        k: account[k] for k in ("name", "billing_email", "status", "balance", "overage_line")
    } == {
        "name": "Acme",
        "billing_email": "billing@acme.test",
        "status": "active",
        "balance": 0,
        "overage_line": 0,
    }
    assert account["daily_hard_limit"] is None and account["daily_notify_threshold"] is None
    assert account["created_at"].endswith("Z")
    row = await db.fetchrow("select * from accounts where id = $1", account["id"])
    assert (row["shard"], row["config_version"], row["redis_version"]) == (account["shard"], 1, 1)
    state = await live_state.read_account(account["shard"], account["id"])
    assert state is not None
    assert (state.balance, state.suspended, state.daily_hard_limit) == (0, False, None)


async def test_account_ids_are_random_and_email_is_optional(client: TestClient[Any, Any]) -> None:
    first = await call(client, "POST", "/v1/accounts", {"name": "A"}, status=201)
    second = await call(
        client, "POST", "/v1/accounts", {"name": "A", "billing_email": None}, status=201
    )
    assert first["id"] != second["id"]
    assert first["billing_email"] is None and second["billing_email"] is None


async def test_get_account_returns_what_was_created(client: TestClient[Any, Any]) -> None:
    account = await new_account(client)
    assert await call(client, "GET", f"/v1/accounts/{account['id']}", status=200) == account


# -- projects and keys ---------------------------------------------------------------


async def test_create_project(client: TestClient[Any, Any], db: Any) -> None:
    account = await new_account(client)
    project = await new_project(client, account["id"])
    assert project["id"].startswith("proj_")
    assert (project["account_id"], project["name"]) == (account["id"], "web")
    row = await db.fetchrow("select account_id, name from projects where id = $1", project["id"])
    assert tuple(row) == (account["id"], "web")


async def test_create_key_stores_only_its_hash_and_puts_the_record_in_redis(
    client: TestClient[Any, Any], db: Any, live_state: LiveState
) -> None:
    account = await new_account(client)
    project = await new_project(client, account["id"])
    response = await client.post(f"/v1/projects/{project['id']}/keys", headers=AUTH)
    assert response.status == 201
    assert response.headers["Cache-Control"] == "no-store"
    key = await response.json()
    assert apikeys.well_formed(key["key"])
    assert key["prefix"] == apikeys.visible_prefix(key["key"]) and key["id"].startswith("key_")
    assert (key["project_id"], key["account_id"], key["revoked_at"]) == (
        project["id"],
        account["id"],
        None,
    )
    row = await db.fetchrow("select * from api_keys where id = $1", key["id"])
    assert row["key_hash"] == apikeys.digest(key["key"]) and row["redis_synced"] is True
    assert key["key"] not in [str(v) for v in row.values()]
    record = await live_state.get_api_key(apikeys.digest(key["key"]))
    assert record == KeyRecord(key["id"], project["id"], account["id"], account["shard"])


async def test_list_keys_never_shows_a_secret(client: TestClient[Any, Any]) -> None:
    account = await new_account(client)
    project = await new_project(client, account["id"])
    created = [await new_key(client, project["id"]) for _ in range(2)]
    listed = await call(client, "GET", f"/v1/projects/{project['id']}/keys", status=200)
    assert sorted(k["id"] for k in listed["data"]) == sorted(k["id"] for k in created)
    assert all("key" not in k for k in listed["data"])
    assert not any(c["key"] in orjson.dumps(listed).decode() for c in created)


async def test_revoke_key_takes_effect_in_the_admission_script_and_is_idempotent(
    client: TestClient[Any, Any], db: Any, live_state: LiveState
) -> None:
    account = await new_account(client)
    project = await new_project(client, account["id"])
    revoked, kept = await new_key(client, project["id"]), await new_key(client, project["id"])
    await add_credit(client, account["id"], 10_000_000, "seed")
    assert (await live_state.admit(a_call(account, revoked, 1000), DAY)).outcome is Outcome.ADMITTED

    first = await call(client, "DELETE", f"/v1/keys/{revoked['id']}", status=200)
    again = await call(client, "DELETE", f"/v1/keys/{revoked['id']}", status=200)

    assert first["revoked_at"] is not None and again == first
    assert (
        await live_state.admit(a_call(account, revoked, 1000), DAY)
    ).outcome is Outcome.KEY_REVOKED
    assert (await live_state.admit(a_call(account, kept, 1000), DAY)).outcome is Outcome.ADMITTED
    row = await db.fetchrow(
        "select revoked_at, redis_synced from api_keys where id = $1", revoked["id"]
    )
    assert row["revoked_at"] is not None and row["redis_synced"] is True


# -- limits, suspension ----------------------------------------------------------------


async def test_limits_land_in_postgres_and_redis(
    client: TestClient[Any, Any], db: Any, live_state: LiveState
) -> None:
    account = await new_account(client)
    path = f"/v1/accounts/{account['id']}/limits"
    body = {
        "daily_hard_limit": 5_000_000,
        "overage_line": 2_000_000,
        "daily_notify_threshold": 4_000_000,
    }
    updated = await call(
        client, "PUT", path, {**body, "low_balance_threshold": 1_000_000}, status=200
    )
    assert {k: updated[k] for k in body} == body
    assert updated["low_balance_threshold"] == 1_000_000 and updated["config_version"] == 2
    state = await live_state.read_account(account["shard"], account["id"])
    assert state is not None
    assert (state.daily_hard_limit, state.overage_line, state.daily_notify_threshold) == (
        5_000_000,
        2_000_000,
        4_000_000,
    )
    assert state.low_balance_threshold == 1_000_000

    # Left out: the low-balance threshold stays; null: no limit.
    cleared = {"daily_hard_limit": None, "overage_line": 0, "daily_notify_threshold": None}
    again = await call(client, "PUT", path, cleared, status=200)
    assert again["low_balance_threshold"] == 1_000_000 and again["daily_hard_limit"] is None
    state = await live_state.read_account(account["shard"], account["id"])
    assert state is not None
    assert (state.daily_hard_limit, state.overage_line, state.low_balance_threshold) == (
        None,
        0,
        1_000_000,
    )
    row = await db.fetchrow(
        "select config_version, redis_version from accounts where id = $1", account["id"]
    )
    assert tuple(row) == (3, 3)


async def test_suspend_and_resume_reach_the_admission_script(
    client: TestClient[Any, Any], live_state: LiveState
) -> None:
    account = await new_account(client)
    key = await new_key(client, (await new_project(client, account["id"]))["id"])
    await add_credit(client, account["id"], 1_000_000, "seed")

    suspended = await call(client, "POST", f"/v1/accounts/{account['id']}/suspend", status=200)
    assert suspended["status"] == "suspended"
    assert (await live_state.admit(a_call(account, key, 1), DAY)).outcome is Outcome.SUSPENDED

    resumed = await call(client, "POST", f"/v1/accounts/{account['id']}/resume", {}, status=200)
    assert resumed["status"] == "active" and resumed["config_version"] == 3
    assert (await live_state.admit(a_call(account, key, 1), DAY)).outcome is Outcome.ADMITTED


# -- credits and the live balance ------------------------------------------------------------


async def test_credit_moves_both_balances(
    client: TestClient[Any, Any], db: Any, live_state: LiveState
) -> None:
    account = await new_account(client)
    first = await add_credit(client, account["id"], 7_000_000, "a")
    second = await add_credit(client, account["id"], 3_000_000, "b")
    assert first["id"] == "le_" + first["id"].removeprefix("le_") and first["id"] != second["id"]
    assert (first["amount"], first["balance_after"], first["kind"]) == (
        7_000_000,
        7_000_000,
        "credit",
    )
    assert (second["balance_after"], second["idempotency_key"], second["description"]) == (
        10_000_000,
        "b",
        "top-up",
    )
    assert (
        await db.fetchval("select balance from accounts where id = $1", account["id"]) == 10_000_000
    )
    state = await live_state.read_account(account["shard"], account["id"])
    assert state is not None and state.balance == 10_000_000
    assert (await call(client, "GET", f"/v1/accounts/{account['id']}", status=200))[
        "balance"
    ] == 10_000_000


async def test_grant_kind(client: TestClient[Any, Any]) -> None:
    account = await new_account(client)
    body = {"amount": 5, "description": "welcome", "idempotency_key": "g", "kind": "grant"}
    entry = await call(client, "POST", f"/v1/accounts/{account['id']}/credits", body, status=201)
    assert entry["kind"] == "grant"


async def test_balance_reads_live_values_rolled_to_the_clocks_day(
    client: TestClient[Any, Any], live_state: LiveState, clock: Clock
) -> None:
    account = await new_account(client)
    key = await new_key(client, (await new_project(client, account["id"]))["id"])
    limits = {
        "daily_hard_limit": 3_000_000,
        "overage_line": 500_000,
        "daily_notify_threshold": None,
    }
    await call(client, "PUT", f"/v1/accounts/{account['id']}/limits", limits, status=200)
    await add_credit(client, account["id"], 10_000_000, "seed")
    assert (await live_state.admit(a_call(account, key, 1_000_000), DAY)).admitted

    path = f"/v1/accounts/{account['id']}/balance"
    today = await call(client, "GET", path, status=200)
    assert today == {
        "object": "balance",
        "account_id": account["id"],
        "status": "active",
        "balance": 9_000_000,
        "overage_line": 500_000,
        "daily_hard_limit": 3_000_000,
        "daily_notify_threshold": None,
        "spent_today": 1_000_000,
        "limit_remaining": 2_000_000,
        "available": 2_000_000,
        "day": "2024-03-01",
    }
    clock.now += 86_400
    tomorrow = await call(client, "GET", path, status=200)
    assert (tomorrow["spent_today"], tomorrow["limit_remaining"], tomorrow["available"]) == (
        0,
        3_000_000,
        3_000_000,
    )
    assert tomorrow["day"] == "2024-03-02"


async def test_balance_without_a_limit_is_balance_plus_overage(
    client: TestClient[Any, Any], live_state: LiveState
) -> None:
    account = await new_account(client)
    limits = {"daily_hard_limit": None, "overage_line": 2_000_000, "daily_notify_threshold": None}
    await call(client, "PUT", f"/v1/accounts/{account['id']}/limits", limits, status=200)
    await add_credit(client, account["id"], 1_000_000, "seed")
    balance = await call(client, "GET", f"/v1/accounts/{account['id']}/balance", status=200)
    assert (balance["available"], balance["limit_remaining"]) == (3_000_000, None)


async def test_balance_is_503_when_redis_is_unreachable(
    aiohttp_client: Any, database_url: str
) -> None:
    app = create_app(settings(f"redis://127.0.0.1:{free_port()}/0", database_url), clock=Clock())
    client = await aiohttp_client(app)
    account = await new_account(client)  # recorded in Postgres; Redis left to the sync loop
    response = await client.get(f"/v1/accounts/{account['id']}/balance", headers=AUTH)
    assert response.status == 503 and response.content_type == PROBLEM
    assert (await response.json(content_type=None))["type"].endswith("/live-state-unavailable")
    assert response.headers["Retry-After"] == "1"


async def test_balance_is_503_when_redis_lost_the_account(
    client: TestClient[Any, Any], live_state: LiveState
) -> None:
    account = await new_account(client)
    await live_state.redis.flushall()
    response = await client.get(f"/v1/accounts/{account['id']}/balance", headers=AUTH)
    assert response.status == 503 and response.content_type == PROBLEM


# -- operations: probes, metrics, the API description, errors ------------------------------------


async def test_healthz_and_readyz_need_no_token(client: TestClient[Any, Any]) -> None:
    health = await client.get("/healthz")
    assert health.status == 200 and (await health.json())["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"postgres": "ok", "redis": "ok"}


async def test_readyz_is_503_when_redis_is_down(aiohttp_client: Any, database_url: str) -> None:
    app = create_app(settings(f"redis://127.0.0.1:{free_port()}/0", database_url))
    client = await aiohttp_client(app)
    ready = await client.get("/readyz")
    assert ready.status == 503 and ready.content_type == PROBLEM
    checks = (await ready.json(content_type=None))["checks"]
    assert checks["postgres"] == "ok" and checks["redis"].startswith("error")
    assert (await client.get("/healthz")).status == 200


async def test_metrics_count_requests_by_route_template(client: TestClient[Any, Any]) -> None:
    account = await new_account(client)
    await call(client, "GET", f"/v1/accounts/{account['id']}", status=200)
    await client.get("/v1/accounts/acct_nope")  # 401: no token
    response = await client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    text = await response.text()
    route = 'route="/v1/accounts/{account_id}"'
    assert f'meter_admin_requests_total{{method="GET",{route},status="200"}} 1.0' in text
    assert 'route="/v1/accounts/{account_id}",status="401"} 1.0' in text
    assert account["id"] not in text  # labels are templates, never raw paths
    assert 'meter_admin_request_seconds_count{route="/v1/accounts"} 1.0' in text
    assert "meter_admin_sync_repairs_total" in text


async def test_two_apps_in_one_process_keep_their_own_metrics(
    aiohttp_client: Any, redis_url: str, database_url: str
) -> None:
    first = await start(aiohttp_client, redis_url, database_url)
    second = await start(aiohttp_client, redis_url, database_url)
    await new_account(first)
    assert "/v1/accounts" not in await (await second.get("/metrics")).text()


async def test_openapi_describes_exactly_the_routes_served(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v1/openapi.json")
    assert response.status == 200
    doc = await response.json()
    assert doc["openapi"] == "3.1.0" and doc == orjson.loads(orjson.dumps(openapi.document()))
    described = {
        (m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"
    }
    served = {
        (r.method, r.resource.canonical)
        for r in client.app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    assert described == served
    refs = {
        v.split("/")[-1]
        for v in _walk(doc["paths"]) | _walk(doc["components"]["schemas"])
        if v.startswith("#/components/schemas/")
    }
    assert refs <= set(doc["components"]["schemas"])


def _walk(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_walk(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_walk(v) for v in node)) if node else set()
    return {node} if isinstance(node, str) else set()


async def test_unknown_route_and_wrong_method_are_problems(client: TestClient[Any, Any]) -> None:
    missing = await client.get("/v1/nothing-here", headers=AUTH)
    assert missing.status == 404 and missing.content_type == PROBLEM
    assert (await missing.json(content_type=None))["type"] == "https://meter.dev/problems/not-found"
    wrong = await client.delete("/v1/accounts", headers=AUTH)
    assert wrong.status == 405 and wrong.content_type == PROBLEM
    assert set(wrong.headers["Allow"].split(",")) == {"GET", "POST"}


async def test_unexpected_errors_are_a_logged_500_without_internals(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(self: Provisioning, account_id: str) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Provisioning, "account", broken)
    with caplog.at_level(logging.ERROR, logger="admin.http"):
        response = await client.get("/v1/accounts/acct_abc", headers=AUTH)
    assert response.status == 500 and response.content_type == PROBLEM
    body = await response.text()
    assert "secret internals" not in body and orjson.loads(body)["status"] == 500
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


async def test_postgres_down_is_503_and_redis_is_untouched(
    aiohttp_client: Any, redis_url: str, live_state: LiveState
) -> None:
    dead_postgres = f"postgresql://meter@127.0.0.1:{free_port()}/meter"
    client = await aiohttp_client(create_app(settings(redis_url, dead_postgres)))
    response = await client.post("/v1/accounts", json={"name": "Acme"}, headers=AUTH)
    assert response.status == 503 and response.content_type == PROBLEM
    assert (await response.json(content_type=None))["type"].endswith("/database-unavailable")
    assert (await client.get("/readyz")).status == 503
    assert await live_state.redis.keys("*") == []


async def test_responses_have_exactly_the_documented_fields(client: TestClient[Any, Any]) -> None:
    schemas = openapi.document()["components"]["schemas"]

    def fields(name: str) -> set[str]:
        return set(schemas[name]["properties"])

    account = await new_account(client)
    project = await new_project(client, account["id"])
    key = await new_key(client, project["id"])
    keys_list = await call(client, "GET", f"/v1/projects/{project['id']}/keys", status=200)
    entry = await add_credit(client, account["id"], 1, "k")
    balance = await call(client, "GET", f"/v1/accounts/{account['id']}/balance", status=200)
    assert set(account) == fields("Account") and set(project) == fields("Project")
    assert set(key) == fields("NewApiKey") and set(keys_list) == fields("ApiKeyList")
    assert set(keys_list["data"][0]) == fields("ApiKey")
    assert set(entry) == fields("LedgerEntry") and set(balance) == fields("Balance")
    for name in ("Account", "Project", "ApiKey", "NewApiKey", "LedgerEntry", "Balance"):
        assert set(schemas[name]["required"]) == fields(name), name
