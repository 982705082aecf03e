"""Shared helpers of the portal tests: an admin API and a portal on one database.

The provider's side is the real admin API (minting links, reading the numbers the
portal must agree with); the customer's side is the real portal app.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient
from test_admin_support import RETURN_URL, call, settings

from admin.app import create_app as create_admin
from meter.settings import Settings
from portal.app import create_app as create_portal

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def portal_settings(redis_url: str, database_url: str, **env: str) -> Settings:
    return settings(redis_url, database_url, **{"METER_PORTAL_COOKIE_SECURE": "false", **env})


@dataclass
class Provider:
    """The admin API as the provider's backend uses it, with a seeded account."""

    admin: TestClient[Any, Any]
    account_id: str
    members: dict[str, str]  # role -> member id

    async def link(self, role: str = "owner", account_id: str | None = None) -> str:
        account = account_id or self.account_id
        minted = await call(
            self.admin,
            "POST",
            f"/v1/accounts/{account}/portal-sessions",
            {"member_id": self.members[role], "return_url": RETURN_URL},
            status=201,
        )
        url: str = minted["url"]
        return url


async def start_admin(
    aiohttp_client: Any, redis_url: str, database_url: str, **env: str
) -> TestClient[Any, Any]:
    app = create_admin(portal_settings(redis_url, database_url, **env), clock=time.time)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


async def start_portal(
    aiohttp_client: Any, redis_url: str, database_url: str, **env: str
) -> TestClient[Any, Any]:
    app = create_portal(portal_settings(redis_url, database_url, **env), clock=time.time)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


async def seed(admin: TestClient[Any, Any], name: str = "Acme") -> Provider:
    """An account with $20 of credits, limits, an owner, an admin, a billing and a viewer."""
    account = await call(
        admin,
        "POST",
        "/v1/accounts",
        {"name": name, "billing_email": "billing@acme.test"},
        status=201,
    )
    aid = account["id"]
    await call(
        admin,
        "PUT",
        f"/v1/accounts/{aid}/limits",
        {"overage_line": 1_000_000, "daily_hard_limit": 5_000_000, "daily_notify_threshold": None},
        status=200,
    )
    await call(
        admin,
        "POST",
        f"/v1/accounts/{aid}/credits",
        {
            "amount": 20_000_000,
            "description": "Welcome credits",
            "idempotency_key": "seed",
            "kind": "grant",
        },
        status=201,
    )
    await call(
        admin,
        "POST",
        f"/v1/accounts/{aid}/credits",
        {"amount": 5_000_000, "description": "Card top-up", "idempotency_key": "seed-2"},
        status=201,
    )
    members = {}
    for role in ("owner", "admin", "billing", "viewer"):
        member = await call(
            admin,
            "POST",
            f"/v1/accounts/{aid}/members",
            {"email": f"{role}@{name.lower()}.test", "name": role.title(), "role": role},
            status=201,
        )
        members[role] = member["id"]
    return Provider(admin, aid, members)


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)
