"""Who is emailed what: the notification settings and opt-ins through the real admin API
on real Postgres, and ``recipients``, the rule the dispatcher asks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from test_admin_support import AUTH, call, new_account, start

from notifications import events
from notifications.preferences import chosen_types, recipients, unique_addresses


@dataclass
class World:
    client: TestClient[Any, Any]
    pool: asyncpg.Pool
    account: str
    members: dict[str, str]  # role -> member id
    other: str  # another account
    other_member: str

    def settings_path(self, account: str | None = None) -> str:
        return f"/v1/accounts/{account or self.account}/notification-settings"

    def opt_ins_path(self, member: str, account: str | None = None) -> str:
        return f"/v1/accounts/{account or self.account}/members/{member}/notification-subscriptions"

    async def token(self, role: str) -> dict[str, str]:
        made = await call(
            self.client,
            "POST",
            f"/v1/accounts/{self.account}/tokens",
            {"name": role, "role": role},
            status=201,
        )
        return {"Authorization": f"Bearer {made['token']}"}


async def _member(client: TestClient[Any, Any], account: str, email: str, role: str) -> str:
    made = await call(
        client,
        "POST",
        f"/v1/accounts/{account}/members",
        {"email": email, "name": role.title(), "role": role},
        status=201,
    )
    return str(made["id"])


@pytest.fixture
async def w(aiohttp_client: Any, redis_url: str, database_url: str) -> AsyncIterator[World]:
    client = await start(aiohttp_client, redis_url, database_url)
    account = (await new_account(client))["id"]
    members = {
        role: await _member(client, account, f"{role}@acme.test", role)
        for role in ("owner", "admin", "billing", "viewer")
    }
    other = (await new_account(client, "Other"))["id"]
    other_member = await _member(client, other, "someone@other.test", "owner")
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        yield World(client, pool, account, members, other, other_member)
    finally:
        await pool.close()


# -- pure parts -----------------------------------------------------------------------


def test_addresses_are_unique_whatever_their_case_first_spelling_kept() -> None:
    given = ["Ann@Example.com", None, "bob@example.com", "ann@example.COM", "", "BOB@example.com"]
    assert unique_addresses(given) == ["Ann@Example.com", "bob@example.com"]


def test_chosen_types_are_each_once_in_the_catalogues_order() -> None:
    assert chosen_types(["credits.added", "balance.low", "credits.added"]) == (
        "balance.low",
        "credits.added",
    )
    assert list(events.EVENT_TYPES).index("balance.low") < list(events.EVENT_TYPES).index(
        "credits.added"
    )


# -- the API --------------------------------------------------------------------------


async def test_unset_the_mail_goes_to_the_billing_email_and_nobody_opted_in(w: World) -> None:
    response = await w.client.get(w.settings_path(), headers=await w.token("viewer"))
    assert response.status == 200 and response.headers["ETag"] == '"n0"'
    body = await response.json()
    assert body["invoice_email"] is None
    assert body["billing_email"] == body["recipient"] == "billing@acme.test"
    assert [(m["email"], m["role"], m["event_types"]) for m in body["members"]] == [
        (f"{role}@acme.test", role, []) for role in ("owner", "admin", "billing", "viewer")
    ]


async def test_the_invoice_email_is_set_then_cleared_back_to_the_billing_email(w: World) -> None:
    headers = await w.token("billing")
    first = await w.client.put(
        w.settings_path(), json={"invoice_email": "invoices@acme.test"}, headers=headers
    )
    assert first.status == 200, await first.text()
    assert first.headers["ETag"] == '"n1"'
    body = await first.json()
    assert body["invoice_email"] == body["recipient"] == "invoices@acme.test"
    cleared = await call(w.client, "PUT", w.settings_path(), {"invoice_email": None}, status=200)
    assert cleared["invoice_email"] is None and cleared["recipient"] == "billing@acme.test"
    audited = await w.pool.fetch(
        "select actor_id, after from audit_log where action = 'notification_settings.update'"
        " and account_id = $1 order by id",
        w.account,
    )
    assert len(audited) == 2 and audited[1]["actor_id"] == "bootstrap"
    assert "invoices@acme.test" in audited[0]["after"]


@pytest.mark.parametrize(
    "body",
    [{"invoice_email": "not an address"}, {"invoice_email": "a@b"}, {}, {"invoice_email": 5}],
)
async def test_a_bad_invoice_email_is_422_and_changes_nothing(w: World, body: Any) -> None:
    refused = await call(w.client, "PUT", w.settings_path(), body, status=422)
    assert [e["field"] for e in refused["errors"]] == ["invoice_email"]
    after = await call(w.client, "GET", w.settings_path(), status=200)
    assert after["invoice_email"] is None
    assert await w.pool.fetchval("select count(*) from notification_settings") == 0


async def test_a_write_based_on_a_stale_read_is_412(w: World) -> None:
    read = await w.client.get(w.settings_path(), headers=AUTH)
    etag = read.headers["ETag"]
    await call(w.client, "PUT", w.settings_path(), {"invoice_email": "one@acme.test"}, status=200)
    stale = await call(
        w.client,
        "PUT",
        w.settings_path(),
        {"invoice_email": "two@acme.test"},
        status=412,
        headers={"If-Match": etag},
    )
    assert '"n1"' in stale["detail"]
    now = (await w.client.get(w.settings_path(), headers=AUTH)).headers["ETag"]
    assert now == '"n1"'
    fresh = await call(
        w.client,
        "PUT",
        w.settings_path(),
        {"invoice_email": "two@acme.test"},
        status=200,
        headers={"If-Match": now},
    )
    assert fresh["invoice_email"] == "two@acme.test"


async def test_a_member_opts_in_and_out(w: World) -> None:
    viewer = w.members["viewer"]
    chosen = await call(
        w.client,
        "PUT",
        w.opt_ins_path(viewer),
        {"event_types": ["credits.added", "balance.low", "credits.added"]},
        status=200,
    )
    assert chosen["member_id"] == viewer and chosen["email"] == "viewer@acme.test"
    assert chosen["event_types"] == ["balance.low", "credits.added"]
    listed = await call(w.client, "GET", w.settings_path(), status=200)
    by_id = {m["member_id"]: m["event_types"] for m in listed["members"]}
    assert by_id[viewer] == ["balance.low", "credits.added"]
    assert by_id[w.members["owner"]] == []
    none = await call(w.client, "PUT", w.opt_ins_path(viewer), {"event_types": []}, status=200)
    assert none["event_types"] == []
    assert await w.pool.fetchval("select count(*) from notification_subscriptions") == 0


async def test_an_unknown_event_type_is_422_and_changes_nothing(w: World) -> None:
    viewer = w.members["viewer"]
    await call(
        w.client, "PUT", w.opt_ins_path(viewer), {"event_types": ["balance.low"]}, status=200
    )
    refused = await call(
        w.client,
        "PUT",
        w.opt_ins_path(viewer),
        {"event_types": ["credits.added", "balance.lowish"]},
        status=422,
    )
    assert [e["field"] for e in refused["errors"]] == ["event_types"]
    rows = await w.pool.fetch("select event_type from notification_subscriptions")
    assert [r["event_type"] for r in rows] == ["balance.low"]


async def test_another_accounts_member_and_account_are_not_found(w: World) -> None:
    await call(
        w.client,
        "PUT",
        w.opt_ins_path(w.other_member),
        {"event_types": ["balance.low"]},
        status=404,
    )
    await call(
        w.client,
        "PUT",
        w.opt_ins_path("mem_doesnotexist0000000000"),
        {"event_types": ["balance.low"]},
        status=404,
    )
    owner_token = await w.token("owner")
    for method, path, body in [
        ("GET", w.settings_path(w.other), None),
        ("PUT", w.settings_path(w.other), {"invoice_email": "x@acme.test"}),
        ("PUT", w.opt_ins_path(w.other_member, w.other), {"event_types": []}),
    ]:
        response = await w.client.request(method, path, json=body, headers=owner_token)
        assert response.status == 404, (method, path, await response.text())
    assert await w.pool.fetchval("select count(*) from notification_subscriptions") == 0
    assert await w.pool.fetchval("select count(*) from notification_settings") == 0


async def test_a_viewer_token_may_read_but_not_write(w: World) -> None:
    viewer = await w.token("viewer")
    for path, body in [
        (w.settings_path(), {"invoice_email": "x@acme.test"}),
        (w.opt_ins_path(w.members["viewer"]), {"event_types": ["balance.low"]}),
    ]:
        response = await w.client.put(path, json=body, headers=viewer)
        assert response.status == 403, await response.text()


# -- recipients -------------------------------------------------------------------------


async def test_recipients_follow_the_rule_each_address_once(w: World) -> None:
    def opt_in(role: str, *types: str) -> Any:
        return call(
            w.client,
            "PUT",
            w.opt_ins_path(w.members[role]),
            {"event_types": list(types)},
            status=200,
        )

    await opt_in("viewer", "balance.low", "credits.added", "webhook_endpoint.disabled")
    await opt_in("owner", "webhook_endpoint.disabled")
    async with w.pool.acquire() as conn:
        # EMAILED: the billing address first, then who opted in.
        assert await recipients(conn, w.account, "balance.low") == [
            "billing@acme.test",
            "viewer@acme.test",
        ]
        # Not EMAILED: only who opted in.
        assert await recipients(conn, w.account, "credits.added") == ["viewer@acme.test"]
        assert await recipients(conn, w.account, "recharge.succeeded") == []
        # TO_OWNERS: the owners (an owner who also opted in, once), then the others.
        assert await recipients(conn, w.account, "webhook_endpoint.disabled") == [
            "owner@acme.test",
            "viewer@acme.test",
        ]
        await call(
            w.client, "PUT", w.settings_path(), {"invoice_email": "Viewer@Acme.test"}, status=200
        )
        # The invoice email replaces the billing email; the viewer's own address is the
        # same one written otherwise: one message.
        assert await recipients(conn, w.account, "balance.low") == ["Viewer@Acme.test"]
        assert await recipients(conn, w.other, "balance.low") == ["billing@acme.test"]
