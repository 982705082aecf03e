"""The grants through the admin API: a credit's grant kind and expiry, the list of
grants, and what a replay or bad input does."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from test_admin_support import call, new_account, start


@pytest.fixture
async def client(aiohttp_client: Any, redis_url: str, database_url: str) -> Any:
    return await start(aiohttp_client, redis_url, database_url)


def credit(key: str, amount: int, **extra: Any) -> dict[str, Any]:
    return {"amount": amount, "description": "grant", "idempotency_key": key, **extra}


async def test_each_credit_is_a_grant_listed_newest_first(client: TestClient[Any, Any]) -> None:
    account = await new_account(client)
    path = f"/v1/accounts/{account['id']}"
    first = await call(client, "POST", path + "/credits", credit("a", 1_000_000), status=201)
    second = await call(
        client,
        "POST",
        path + "/credits",
        credit(
            "b", 2_000_000, kind="grant", grant_kind="included", expires_at="2031-02-01T00:00:00Z"
        ),
        status=201,
    )
    third = await call(
        client,
        "POST",
        path + "/credits",
        credit("c", 3_000_000, kind="grant", expires_at="2031-01-31T19:00:00-05:00"),
        status=201,
    )
    page = await call(client, "GET", path + "/grants?limit=2", status=200)
    assert [(g["kind"], g["amount"], g["remaining"], g["status"]) for g in page["data"]] == [
        ("promotional", 3_000_000, 3_000_000, "live"),
        ("included", 2_000_000, 2_000_000, "live"),
    ]
    assert [g["ledger_entry_id"] for g in page["data"]] == [third["id"], second["id"]]
    assert page["data"][0]["expires_at"] == page["data"][1]["expires_at"]  # the same instant
    assert page["live_remaining"] == 6_000_000
    rest = await call(client, "GET", f"{path}/grants?cursor={page['next_cursor']}", status=200)
    assert [(g["kind"], g["expires_at"], g["ledger_entry_id"]) for g in rest["data"]] == [
        ("purchased", None, first["id"])
    ]
    assert rest["next_cursor"] is None


async def test_a_replay_must_name_the_same_grant(client: TestClient[Any, Any]) -> None:
    account = await new_account(client)
    path = f"/v1/accounts/{account['id']}/credits"
    body = credit("k", 1_000_000, grant_kind="promotional", expires_at="2031-01-01T00:00:00Z")
    await call(client, "POST", path, body, status=201)
    await call(
        client, "POST", path, {**body, "expires_at": "2031-01-01T00:00:00+00:00"}, status=200
    )
    await call(client, "POST", path, {**body, "expires_at": "2031-01-02T00:00:00Z"}, status=409)
    await call(client, "POST", path, {**body, "grant_kind": "included"}, status=409)
    page = await call(client, "GET", f"/v1/accounts/{account['id']}/grants", status=200)
    assert len(page["data"]) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expires_at", "2031-02-30T00:00:00Z"),  # no such day
        ("expires_at", "2031-01-01T00:00:00"),  # no offset
        ("expires_at", "2031-01-01"),
        ("expires_at", 1_900_000_000),
        ("grant_kind", "refund"),  # only the worker makes those
    ],
)
async def test_a_bad_grant_is_refused_naming_the_field(
    client: TestClient[Any, Any], field: str, value: Any
) -> None:
    account = await new_account(client)
    path = f"/v1/accounts/{account['id']}"
    problem = await call(
        client, "POST", path + "/credits", credit("x", 1_000, **{field: value}), status=422
    )
    assert [e["field"] for e in problem["errors"]] == [field]
    assert (await call(client, "GET", path + "/grants", status=200))["data"] == []


async def test_a_bad_cursor_is_refused(client: TestClient[Any, Any]) -> None:
    account = await new_account(client)
    for cursor in ("7", "grt_x", "le_7"):
        problem = await call(
            client, "GET", f"/v1/accounts/{account['id']}/grants?cursor={cursor}", status=400
        )
        assert [e["field"] for e in problem["errors"]] == ["cursor"]
    await call(client, "GET", "/v1/accounts/acct_nobody/grants", status=404)
