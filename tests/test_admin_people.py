"""Members, the last-owner rule, ETags, the billing profile, tax ids, account states, audit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from test_admin_support import AUTH, call, new_account, new_project, snapshot, start

from meter.live_state import LiveState


@pytest.fixture
async def client(aiohttp_client: Any, redis_url: str, database_url: str) -> Any:
    return await start(aiohttp_client, redis_url, database_url)


async def member(
    client: TestClient[Any, Any], aid: str, email: str, role: str, *, status: int = 201
) -> dict[str, Any]:
    found: dict[str, Any] = await call(
        client,
        "POST",
        f"/v1/accounts/{aid}/members",
        {"email": email, "name": email.split("@")[0], "role": role},
        status=status,
    )
    return found


# -- members ----------------------------------------------------------------------------


async def test_the_last_owner_can_be_neither_removed_nor_demoted(
    client: TestClient[Any, Any],
) -> None:
    aid = (await new_account(client))["id"]
    owner = await member(client, aid, "ann@acme.test", "owner")
    path = f"/v1/accounts/{aid}/members/{owner['id']}"
    demoted = await call(client, "PATCH", path, {"role": "admin"}, status=409)
    assert demoted["type"].endswith("/last-owner")
    await call(client, "DELETE", path, status=409)
    second = await member(client, aid, "bob@acme.test", "owner")
    changed = await call(client, "PATCH", path, {"role": "viewer"}, status=200)
    assert changed["role"] == "viewer"
    await call(client, "DELETE", f"/v1/accounts/{aid}/members/{second['id']}", status=409)
    listed = await call(client, "GET", f"/v1/accounts/{aid}/members", status=200)
    assert sorted((m["email"], m["role"]) for m in listed["data"]) == [
        ("ann@acme.test", "viewer"),
        ("bob@acme.test", "owner"),
    ]


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    client: TestClient[Any, Any],
) -> None:
    aid = (await new_account(client))["id"]
    for _ in range(5):
        a = await member(client, aid, f"a{_}@x.test", "owner")
        b = await member(client, aid, f"b{_}@x.test", "owner")
        # Any earlier round's survivor steps down, so a and b are the only owners.
        listed = await call(client, "GET", f"/v1/accounts/{aid}/members", status=200)
        for m in listed["data"]:
            if m["role"] == "owner" and m["id"] not in (a["id"], b["id"]):
                await call(
                    client,
                    "PATCH",
                    f"/v1/accounts/{aid}/members/{m['id']}",
                    {"role": "viewer"},
                    status=200,
                )
        answers = await asyncio.gather(
            *(
                client.patch(
                    f"/v1/accounts/{aid}/members/{m['id']}", json={"role": "admin"}, headers=AUTH
                )
                for m in (a, b)
            )
        )
        assert sorted(r.status for r in answers) == [200, 409]
        listed = await call(client, "GET", f"/v1/accounts/{aid}/members", status=200)
        assert [m["role"] for m in listed["data"]].count("owner") == 1


async def test_one_person_in_two_accounts_and_no_double_membership(
    client: TestClient[Any, Any],
) -> None:
    first, second = (
        (await new_account(client, "One"))["id"],
        (await new_account(client, "Two"))["id"],
    )
    m1 = await member(client, first, "Sam@Example.test", "owner")
    m2 = await member(client, second, "sam@example.test", "viewer")
    assert m1["person_id"] == m2["person_id"] and m1["id"] != m2["id"]
    again = await member(client, first, "SAM@example.test", "viewer", status=409)
    assert "already a member" in again["detail"]


# -- ETags ------------------------------------------------------------------------------


async def test_a_stale_if_match_is_refused_and_changes_nothing(
    client: TestClient[Any, Any], database_url: str, redis_url: str
) -> None:
    aid = (await new_account(client))["id"]
    read = await client.get(f"/v1/accounts/{aid}", headers=AUTH)
    etag = read.headers["ETag"]
    limits = {"overage_line": 0, "daily_hard_limit": 7, "daily_notify_threshold": None}
    first = await client.put(
        f"/v1/accounts/{aid}/limits", json=limits, headers={**AUTH, "If-Match": etag}
    )
    assert first.status == 200 and first.headers["ETag"] != etag
    before = await snapshot(database_url, redis_url)
    stale = await client.put(
        f"/v1/accounts/{aid}/limits",
        json={**limits, "daily_hard_limit": 9},
        headers={**AUTH, "If-Match": etag},
    )
    assert stale.status == 412 and (await stale.json())["type"].endswith("/precondition-failed")
    assert await snapshot(database_url, redis_url) == before
    renamed = await client.patch(
        f"/v1/accounts/{aid}", json={"name": "Acme 2"}, headers={**AUTH, "If-Match": etag}
    )
    assert renamed.status == 412
    fresh = await client.patch(
        f"/v1/accounts/{aid}",
        json={"name": "Acme 2"},
        headers={**AUTH, "If-Match": first.headers["ETag"]},
    )
    assert fresh.status == 200 and (await fresh.json())["name"] == "Acme 2"


async def test_the_billing_profile_round_trips_with_its_etag(
    client: TestClient[Any, Any], database_url: str, redis_url: str
) -> None:
    aid = (await new_account(client))["id"]
    path = f"/v1/accounts/{aid}/billing-profile"
    empty = await client.get(path, headers=AUTH)
    body = await empty.json()
    assert body["legal_name"] is None and body["invoice_email"] == "billing@acme.test"
    profile = {
        "legal_name": "Acme GmbH",
        "address_line1": "Hauptstr. 1",
        "city": "Berlin",
        "postal_code": "10115",
        "country": "DE",
        "po_number": "PO-7",
        "invoice_email": "invoices@acme.test",
    }
    put = await client.put(path, json=profile, headers={**AUTH, "If-Match": empty.headers["ETag"]})
    assert put.status == 200
    saved = await put.json()
    assert {k: saved[k] for k in profile} == profile and saved["address_line2"] is None
    account = await call(client, "GET", f"/v1/accounts/{aid}", status=200)
    assert account["billing_email"] == "invoices@acme.test"
    before = await snapshot(database_url, redis_url)
    stale = await client.put(
        path, json=profile, headers={**AUTH, "If-Match": empty.headers["ETag"]}
    )
    assert stale.status == 412
    bad = await client.put(
        path, json={"country": "XX", "postal_code": "", "invoice_email": "nope"}, headers=AUTH
    )
    assert bad.status == 422
    fields = {e["field"] for e in (await bad.json())["errors"]}
    assert fields == {"country", "postal_code", "invoice_email"}  # every one at once
    assert await snapshot(database_url, redis_url) == before


# -- tax ids ----------------------------------------------------------------------------


async def test_tax_ids_are_checked_registered_once_verified_and_removed(
    client: TestClient[Any, Any],
) -> None:
    aid = (await new_account(client))["id"]
    path = f"/v1/accounts/{aid}/tax-ids"
    bad = await call(
        client,
        "POST",
        path,
        {"type": "eu_vat", "country": "DE", "value": "DE136695977"},
        status=422,
    )
    assert [e["field"] for e in bad["errors"]] == ["value"] and "check" in bad["detail"]
    wrong_country = await call(
        client,
        "POST",
        path,
        {"type": "au_abn", "country": "NZ", "value": "83 914 571 673"},
        status=422,
    )
    assert [e["field"] for e in wrong_country["errors"]] == ["country"]
    added = await call(
        client,
        "POST",
        path,
        {"type": "eu_vat", "country": "DE", "value": "de 136 695 976", "description": "HQ"},
        status=201,
    )
    assert added["value"] == "DE136695976" and added["status"] == "unverified"
    await call(
        client,
        "POST",
        path,
        {"type": "eu_vat", "country": "DE", "value": "DE136695976"},
        status=409,
    )
    verified = await call(client, "POST", f"{path}/{added['id']}/verify", status=200)
    assert verified["status"] == "verified" and verified["verified_at"] is not None
    await call(client, "DELETE", f"{path}/{added['id']}", status=200)
    assert (await call(client, "GET", path, status=200))["data"] == []
    await call(client, "DELETE", f"{path}/{added['id']}", status=404)


# -- account states ---------------------------------------------------------------------


async def test_deletion_request_and_close(
    client: TestClient[Any, Any], live_state: LiveState
) -> None:
    account = await new_account(client)
    aid = account["id"]
    project = await new_project(client, aid)
    requested = await call(client, "POST", f"/v1/accounts/{aid}/deletion-request", status=200)
    assert requested["status"] == "pending_deletion" and requested["deletion_requested_at"]
    listed = await call(client, "GET", "/v1/accounts?status=pending_deletion", status=200)
    assert [a["id"] for a in listed["data"]] == [aid]
    cancelled = await call(
        client, "POST", f"/v1/accounts/{aid}/deletion-request/cancel", status=200
    )
    assert cancelled["status"] == "active" and cancelled["deletion_requested_at"] is None
    await call(
        client,
        "POST",
        f"/v1/accounts/{aid}/credits",
        {"amount": 5, "description": "d", "idempotency_key": "k"},
        status=201,
    )
    closed = await call(client, "POST", f"/v1/accounts/{aid}/close", status=200)
    assert closed["status"] == "closed" and closed["closed_at"] and closed["balance"] == 5
    state = await live_state.read_account(account["shard"], aid)
    assert state is not None and state.suspended  # the gateway refuses its keys at once
    for method, path in (
        ("POST", f"/v1/projects/{project['id']}/keys"),
        ("POST", f"/v1/accounts/{aid}/resume"),
        ("POST", f"/v1/accounts/{aid}/deletion-request"),
    ):
        await call(client, method, path, status=409)
    history = await call(client, "GET", f"/v1/accounts/{aid}/transactions", status=200)
    assert [t["amount"] for t in history["data"]] == [5]  # nothing deleted from the ledger


async def test_accounts_are_listed_by_cursor_and_filtered(client: TestClient[Any, Any]) -> None:
    made = sorted([(await new_account(client, f"Shop {i}"))["id"] for i in range(5)])
    other = (await new_account(client, "Other_Co"))["id"]
    seen: list[str] = []
    cursor = ""
    while True:
        page = await call(client, "GET", f"/v1/accounts?limit=2{cursor}", status=200)
        seen += [a["id"] for a in page["data"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == sorted([*made, other])
    shops = await call(client, "GET", "/v1/accounts?name=shop", status=200)
    assert [a["id"] for a in shops["data"]] == made
    literal = await call(client, "GET", "/v1/accounts?name=r_c", status=200)
    assert [a["id"] for a in literal["data"]] == [other]  # _ is not a wildcard
    bad = await call(client, "GET", "/v1/accounts?limit=0&status=gone", status=422)
    assert {e["field"] for e in bad["errors"]} == {"limit", "status"}


# -- the audit log ----------------------------------------------------------------------


async def test_the_audit_log_says_who_what_before_after_and_from_where(
    client: TestClient[Any, Any],
) -> None:
    aid = (await new_account(client))["id"]
    limits = {"overage_line": 0, "daily_hard_limit": 3, "daily_notify_threshold": None}
    changed = await client.put(
        f"/v1/accounts/{aid}/limits", json=limits, headers={**AUTH, "X-Request-Id": "req-42"}
    )
    assert changed.headers["X-Request-Id"] == "req-42"
    for i in range(4):
        await call(client, "PATCH", f"/v1/accounts/{aid}", {"name": f"N{i}"}, status=200)
    page = await call(client, "GET", f"/v1/accounts/{aid}/audit-log?limit=3", status=200)
    assert [e["action"] for e in page["data"]] == ["account.rename"] * 3
    rest = await call(
        client, "GET", f"/v1/accounts/{aid}/audit-log?cursor={page['next_cursor']}", status=200
    )
    assert [e["action"] for e in rest["data"]] == [
        "account.rename",
        "account.limits",
        "account.create",
    ] and rest["next_cursor"] is None
    entry = rest["data"][1]
    assert entry["request_id"] == "req-42" and entry["client_addr"] == "127.0.0.1"
    assert (entry["actor_type"], entry["actor_id"]) == ("operator", "bootstrap")
    assert entry["before"]["daily_hard_limit"] is None and entry["after"]["daily_hard_limit"] == 3
    everything = await call(client, "GET", "/v1/audit-log?limit=200", status=200)
    assert {e["id"] for e in page["data"] + rest["data"]} <= {e["id"] for e in everything["data"]}
