"""The webhook routes through the real admin API: answers, problems, secrets shown once."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from test_admin_support import AUTH, PROBLEM, call, new_account, postgres_rows, start

HOOK_URL = "https://1.1.1.1/meter-hooks"  # public, written as an address: no DNS lookup
PROBLEMS = "https://meter.dev/problems/"


@pytest.fixture
async def client(aiohttp_client: Any, redis_url: str, database_url: str) -> Any:
    return await start(aiohttp_client, redis_url, database_url)


def hooks(account_id: str) -> str:
    return f"/v1/accounts/{account_id}/webhook-endpoints"


async def test_the_secret_is_in_the_create_and_rotate_answers_only(
    client: TestClient[Any, Any],
) -> None:
    aid = (await new_account(client))["id"]
    response = await client.post(
        hooks(aid),
        json={"url": HOOK_URL, "description": "Prod", "event_types": ["balance.low"]},
        headers=AUTH,
    )
    assert response.status == 201 and response.headers["Cache-Control"] == "no-store"
    created = await response.json()
    secret = created["secret"]
    assert secret.startswith("whsec_") and created["secret_prefix"] == secret[:10]
    assert (created["object"], created["event_types"], created["enabled"]) == (
        "webhook_endpoint",
        ["balance.low"],
        True,
    )
    path = f"{hooks(aid)}/{created['id']}"
    read = await call(client, "GET", path, status=200)
    listed = await call(client, "GET", hooks(aid), status=200)
    assert "secret" not in read and [e["id"] for e in listed["data"]] == [created["id"]]
    assert secret not in str(read) + str(listed)
    rotated = await client.post(f"{path}/rotate-secret", headers=AUTH)
    assert rotated.status == 200 and rotated.headers["Cache-Control"] == "no-store"
    body = await rotated.json()
    assert body["secret"] != secret and body["rotating_until"] is not None
    cleared = await call(client, "PATCH", path, {"description": None}, status=200)
    assert cleared["description"] is None and cleared["event_types"] == ["balance.low"]


@pytest.mark.parametrize(
    ("body", "fields", "says"),
    [
        ({"url": "ftp://1.1.1.1/x"}, ["url"], "should match pattern"),
        ({"url": "http://127.0.0.1:9/x"}, ["url"], "127.0.0.1 is a loopback address"),
        ({"url": "http://[::ffff:10.0.0.1]/x"}, ["url"], "is a private address"),
        ({"url": "http://169.254.169.254/"}, ["url"], "cloud metadata"),
        ({"url": HOOK_URL, "event_types": ["no.such"]}, ["event_types"], "not an event type"),
        ({"url": HOOK_URL, "description": "d" * 201}, ["description"], "at most 200"),
        ({"url": HOOK_URL, "secret": "whsec_mine"}, ["secret"], "unknown field"),
        ({"description": "x", "enabled": "yes"}, ["url", "enabled"], "required"),
    ],
)
async def test_bad_input_is_a_problem_naming_each_field_and_changes_nothing(
    client: TestClient[Any, Any],
    database_url: str,
    body: dict[str, Any],
    fields: list[str],
    says: str,
) -> None:
    aid = (await new_account(client))["id"]
    before = await postgres_rows(database_url)
    response = await client.post(hooks(aid), json=body, headers=AUTH)
    assert response.status == 422 and response.content_type == PROBLEM
    problem = await response.json()
    assert problem["type"] == PROBLEMS + "invalid-input"
    assert [e["field"] for e in problem["errors"]] == fields
    assert says in problem["detail"]
    assert await postgres_rows(database_url) == before


async def test_another_accounts_endpoint_is_404_as_a_missing_one(
    client: TestClient[Any, Any],
) -> None:
    mine, theirs = (await new_account(client, "Mine"))["id"], (await new_account(client))["id"]
    other = await call(client, "POST", hooks(theirs), {"url": HOOK_URL}, status=201)
    owner = await call(
        client, "POST", f"/v1/accounts/{mine}/tokens", {"name": "o", "role": "owner"}, status=201
    )
    as_owner = {"Authorization": f"Bearer {owner['token']}"}
    for path in (f"{hooks(mine)}/{other['id']}", f"{hooks(mine)}/we_0000000000000000000000"):
        response = await client.get(path, headers=as_owner)
        assert response.status == 404 and response.content_type == PROBLEM
        problem = await response.json()
        assert problem["detail"] == f"no webhook endpoint {path.rsplit('/', 1)[1]!r}"
    across = await client.get(f"{hooks(theirs)}/{other['id']}", headers=as_owner)
    assert across.status == 404  # their account itself is not found for this token
    viewer = await call(
        client, "POST", f"/v1/accounts/{mine}/tokens", {"name": "v", "role": "viewer"}, status=201
    )
    refused = await client.get(hooks(mine), headers={"Authorization": f"Bearer {viewer['token']}"})
    assert refused.status == 403 and "webhooks:read" in (await refused.json())["detail"]


async def test_a_test_event_enters_the_log_and_retry_waits_for_it_to_finish(
    client: TestClient[Any, Any], database_url: str
) -> None:
    aid = (await new_account(client))["id"]
    endpoint = await call(client, "POST", hooks(aid), {"url": HOOK_URL}, status=201)
    path = f"{hooks(aid)}/{endpoint['id']}"
    sent = await call(client, "POST", f"{path}/test", status=201)
    assert (sent["event_type"], sent["status"], sent["attempt_log"]) == (
        "webhook.test",
        "pending",
        [],
    )
    log = await call(client, "GET", f"{path}/deliveries?limit=1", status=200)
    assert [d["id"] for d in log["data"]] == [sent["id"]] and log["next_cursor"] is None
    busy = await client.post(f"{path}/deliveries/{sent['id']}/retry", headers=AUTH)
    assert busy.status == 409
    assert (await busy.json())["type"] == PROBLEMS + "delivery-pending"
    bad = await client.get(f"{path}/deliveries?cursor=pay_1&limit=0", headers=AUTH)
    assert bad.status == 400
    assert {e["field"] for e in (await bad.json())["errors"]} == {"cursor", "limit"}
    await call(client, "PATCH", path, {"enabled": False}, status=200)
    off = await client.post(f"{path}/test", headers=AUTH)
    assert off.status == 409
    assert (await off.json())["type"] == PROBLEMS + "webhook-endpoint-disabled"
    deleted = await call(client, "DELETE", path, status=200)
    assert deleted["id"] == endpoint["id"]
    await call(client, "GET", path, status=404)
    assert (await call(client, "GET", hooks(aid), status=200))["data"] == []
    rows = await postgres_rows(database_url)
    assert [r[6] for r in rows["notification_deliveries"]] == ["canceled"]
