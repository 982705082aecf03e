"""Credits are idempotent by key: retries and races credit once, in Postgres and in Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from test_admin_support import AUTH, PROBLEM, add_credit, call, new_account, snapshot, start

from meter import keys
from meter.live_state import LiveState


@pytest.fixture
async def client(aiohttp_client: Any, redis_url: str, database_url: str) -> Any:
    return await start(aiohttp_client, redis_url, database_url)


async def ledger(database_url: str, account_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(
            await conn.fetch(
                "select * from ledger_entries where account_id = $1 order by id", account_id
            )
        )
    finally:
        await conn.close()


async def live_balance(live_state: LiveState, account: dict[str, Any]) -> int:
    state = await live_state.read_account(account["shard"], account["id"])
    assert state is not None
    return state.balance


async def test_the_same_key_twice_returns_the_same_entry_and_credits_once(
    client: TestClient[Any, Any], database_url: str, live_state: LiveState
) -> None:
    account = await new_account(client)
    path = f"/v1/accounts/{account['id']}/credits"
    body = {"amount": 2_500_000, "description": "top-up", "idempotency_key": "order-17"}
    first = await client.post(path, json=body, headers=AUTH)
    again = await client.post(path, json=body, headers=AUTH)

    assert (first.status, again.status) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await first.json() == await again.json()
    assert len(await ledger(database_url, account["id"])) == 1
    assert await live_balance(live_state, account) == 2_500_000
    account_now = await call(client, "GET", f"/v1/accounts/{account['id']}", status=200)
    assert account_now["balance"] == 2_500_000


@pytest.mark.parametrize(
    "change",
    [{"amount": 2_500_001}, {"description": "something else"}, {"kind": "grant"}],
    ids=["amount", "description", "kind"],
)
async def test_the_same_key_with_a_different_request_is_409(
    client: TestClient[Any, Any], database_url: str, redis_url: str, change: dict[str, Any]
) -> None:
    account = await new_account(client)
    path = f"/v1/accounts/{account['id']}/credits"
    body = {"amount": 2_500_000, "description": "top-up", "idempotency_key": "order-17"}
    first = await call(client, "POST", path, body, status=201)
    before = await snapshot(database_url, redis_url)

    response = await client.post(path, json={**body, **change}, headers=AUTH)

    assert response.status == 409 and response.content_type == PROBLEM
    problem = await response.json(content_type=None)
    assert (
        problem["type"].endswith("/idempotency-key-reused") and problem["entry_id"] == first["id"]
    )
    assert await snapshot(database_url, redis_url) == before


async def test_keys_are_scoped_to_the_account(
    client: TestClient[Any, Any], live_state: LiveState
) -> None:
    first, second = await new_account(client, "A"), await new_account(client, "B")
    one = await add_credit(client, first["id"], 1_000, "shared-key")
    two = await add_credit(client, second["id"], 1_000, "shared-key")
    assert one["id"] != two["id"]
    assert await live_balance(live_state, first) == await live_balance(live_state, second) == 1_000


async def test_concurrent_requests_with_one_key_credit_once(
    client: TestClient[Any, Any], database_url: str, live_state: LiveState
) -> None:
    account = await new_account(client)
    path = f"/v1/accounts/{account['id']}/credits"
    body = {"amount": 1_000_000, "description": "top-up", "idempotency_key": "race"}

    async def one() -> tuple[int, dict[str, Any]]:
        response = await client.post(path, json=body, headers=AUTH)
        return response.status, await response.json()

    results = await asyncio.gather(*(one() for _ in range(20)))

    assert sorted(status for status, _ in results) == [200] * 19 + [201]
    assert len({entry["id"] for _, entry in results}) == 1
    assert len(await ledger(database_url, account["id"])) == 1
    assert await live_balance(live_state, account) == 1_000_000


async def test_concurrent_credits_with_different_keys_all_land_with_exact_balances(
    client: TestClient[Any, Any], database_url: str, live_state: LiveState
) -> None:
    account = await new_account(client)
    amounts = [1_000 * (i + 1) for i in range(20)]
    entries = await asyncio.gather(
        *(add_credit(client, account["id"], amount, f"k{i}") for i, amount in enumerate(amounts))
    )
    total = sum(amounts)
    rows = await ledger(database_url, account["id"])
    assert len(rows) == 20
    # Serialised by the account row lock: each balance_after is the running sum in id order.
    running = 0
    for row in rows:
        running += row["amount"]
        assert row["balance_after"] == running
    assert max(e["balance_after"] for e in entries) == total
    assert await live_balance(live_state, account) == total
    assert (await call(client, "GET", f"/v1/accounts/{account['id']}", status=200))[
        "balance"
    ] == total


async def test_redis_remembers_the_credit_by_its_ledger_entry_id(
    client: TestClient[Any, Any], database_url: str, live_state: LiveState
) -> None:
    """The id contract every credit writer shares (meter.keys.credit_id): le_<entry id>."""
    account = await new_account(client)
    entry = await add_credit(client, account["id"], 1_000, "k")
    (row,) = await ledger(database_url, account["id"])
    assert entry["id"] == keys.credit_id(row["id"]) == f"le_{row['id']}"
    members = await live_state.redis.zrange(
        keys.credits_applied(account["shard"], account["id"]), 0, -1
    )
    assert members == [entry["id"].encode()]
    assert row["redis_applied"] is True


async def test_a_credits_id_is_the_same_in_the_balance_history(
    client: TestClient[Any, Any],
) -> None:
    """One form of a ledger entry's id everywhere: the credit response's, verbatim."""
    account = await new_account(client)
    first = await add_credit(client, account["id"], 1_000, "first")
    second = await add_credit(client, account["id"], 2_000, "second")
    replay = await add_credit(client, account["id"], 2_000, "second", status=200)
    history = await call(client, "GET", f"/v1/accounts/{account['id']}/transactions", status=200)
    assert (
        [t["id"] for t in history["data"]]
        == [second["id"], first["id"]]
        == [
            replay["id"],
            first["id"],
        ]
    )
    assert all(isinstance(t["id"], str) and t["id"].startswith("le_") for t in history["data"])
    page = await call(
        client, "GET", f"/v1/accounts/{account['id']}/transactions?limit=1", status=200
    )
    older = await call(
        client,
        "GET",
        f"/v1/accounts/{account['id']}/transactions?cursor={page['next_cursor']}",
        status=200,
    )
    assert [t["id"] for t in page["data"] + older["data"]] == [second["id"], first["id"]]
