"""The portal's sessions through its real HTTP stack: links, cookies, expiry, CSRF."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from portal_support import Provider, csrf_of, path_of, seed, start_admin, start_portal
from test_admin_support import RETURN_URL, call

from admin.portal_links import return_url_allowed


@pytest.fixture
async def provider(aiohttp_client: Any, redis_url: str, database_url: str) -> Provider:
    return await seed(await start_admin(aiohttp_client, redis_url, database_url))


@pytest.fixture
async def portal(aiohttp_client: Any, redis_url: str, database_url: str) -> TestClient[Any, Any]:
    return await start_portal(aiohttp_client, redis_url, database_url)


async def sign_in(portal: TestClient[Any, Any], provider: Provider, role: str = "owner") -> str:
    response = await portal.get(path_of(await provider.link(role)), allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/"
    page = await portal.get("/")
    assert page.status == 200, await page.text()
    return csrf_of(await page.text())


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://app.example.test/billing", True),
        ("https://app.example.test/billing/done?x=1", True),
        ("https://app.example.test/billing-evil", False),
        ("https://app.example.test/", False),
        ("http://app.example.test/billing", False),
        ("https://app.example.test:444/billing", False),
        ("https://evil.test/billing", False),
        ("https://app.example.test@evil.test/billing", False),
        ("https://app.example.test/billing\\@evil", False),
        ("javascript:alert(1)", False),
        ("http://127.0.0.1/anything", True),
        ("http://127.0.0.1:8080/anything", False),
    ],
)
def test_return_urls_must_be_under_an_allowed_prefix(url: str, allowed: bool) -> None:
    rules = ("https://app.example.test/billing", "http://127.0.0.1")
    assert return_url_allowed(url, rules) is allowed


async def test_a_link_is_refused_for_a_return_url_off_the_list_or_another_accounts_member(
    provider: Provider,
) -> None:
    aid, owner = provider.account_id, provider.members["owner"]
    bad = await call(
        provider.admin,
        "POST",
        f"/v1/accounts/{aid}/portal-sessions",
        {"member_id": owner, "return_url": "https://evil.test/"},
        status=422,
    )
    assert bad["errors"][0]["field"] == "return_url"
    other = await seed(provider.admin, "Other")
    await call(
        provider.admin,
        "POST",
        f"/v1/accounts/{other.account_id}/portal-sessions",
        {"member_id": owner, "return_url": RETURN_URL},
        status=404,
    )


async def test_redeeming_sets_a_locked_down_cookie_once(
    aiohttp_client: Any, redis_url: str, database_url: str, provider: Provider
) -> None:
    portal = await start_portal(
        aiohttp_client, redis_url, database_url, METER_PORTAL_COOKIE_SECURE="true"
    )
    link = path_of(await provider.link())
    response = await portal.get(link, allow_redirects=False)
    assert response.status == 303
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-meter_portal=")
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "path"} <= flags
    assert "samesite=lax" in cookie.lower().replace(" ", "")
    assert "domain" not in flags
    again = await portal.get(link, allow_redirects=False)
    assert again.status == 410 and "Set-Cookie" not in again.headers
    assert "expired or was already used" in await again.text()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("select count(*) from portal_sessions") == 1
        actions = [r["action"] for r in await conn.fetch("select action from audit_log")]
        assert actions.count("portal_link.create") == 1
        assert actions.count("portal_link.redeem") == 1
        stored = await conn.fetchval("select token_hash from portal_links")
        assert link.rsplit("/", 1)[1] not in stored
    finally:
        await conn.close()


async def test_an_expired_link_starts_nothing(
    portal: TestClient[Any, Any], provider: Provider, database_url: str
) -> None:
    link = path_of(await provider.link())
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("update portal_links set expires_at = now() - interval '1 second'")
        response = await portal.get(link, allow_redirects=False)
        assert response.status == 410
        assert await conn.fetchval("select count(*) from portal_sessions") == 0
    finally:
        await conn.close()


async def test_idle_and_absolute_timeouts_end_a_session(
    portal: TestClient[Any, Any], provider: Provider, database_url: str
) -> None:
    await sign_in(portal, provider)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "update portal_sessions set last_seen_at = now() - interval '59 minutes'"
        )
        assert (await portal.get("/")).status == 200  # and that slid the idle clock
        await conn.execute(
            "update portal_sessions set last_seen_at = now() - interval '61 minutes'"
        )
        assert (await portal.get("/")).status == 401
        await sign_in(portal, provider)
        await conn.execute(
            "update portal_sessions set expires_at = now() - interval '1 second'"
            " where ended_at is null"
        )
        response = await portal.get("/")
        assert response.status == 401 and "signed out" in await response.text()
    finally:
        await conn.close()


async def test_posts_without_the_csrf_token_change_nothing(
    portal: TestClient[Any, Any], provider: Provider, database_url: str
) -> None:
    csrf = await sign_in(portal, provider)
    for token in (None, "0" * 64, csrf[:-1] + ("0" if csrf[-1] != "0" else "1")):
        form = {"legal_name": "Forged Ltd", "version": "0"}
        if token is not None:
            form["csrf_token"] = token
        response = await portal.post("/billing-profile", data=form)
        assert response.status == 403
    profile = await call(
        provider.admin, "GET", f"/v1/accounts/{provider.account_id}/billing-profile", status=200
    )
    assert profile["legal_name"] is None
    ok = await portal.post(
        "/billing-profile",
        data={"legal_name": "Real Ltd", "version": "0", "csrf_token": csrf},
        allow_redirects=False,
    )
    assert ok.status == 303


async def test_sign_out_everywhere_ends_every_session_of_the_person(
    aiohttp_client: Any, redis_url: str, database_url: str, provider: Provider
) -> None:
    one = await start_portal(aiohttp_client, redis_url, database_url)
    two = await start_portal(aiohttp_client, redis_url, database_url)
    other = await start_portal(aiohttp_client, redis_url, database_url)
    csrf = await sign_in(one, provider)
    await sign_in(two, provider)
    await sign_in(other, provider, "viewer")
    response = await one.post(
        "/sign-out-everywhere", data={"csrf_token": csrf}, allow_redirects=False
    )
    assert response.status == 303 and response.headers["Location"] == "/signed-out"
    assert (await one.get("/")).status == 401
    assert (await two.get("/")).status == 401
    assert (await other.get("/")).status == 200  # another person's session stays


async def test_sign_out_ends_this_session_only(
    aiohttp_client: Any, redis_url: str, database_url: str, provider: Provider
) -> None:
    one = await start_portal(aiohttp_client, redis_url, database_url)
    two = await start_portal(aiohttp_client, redis_url, database_url)
    csrf = await sign_in(one, provider)
    await sign_in(two, provider)
    assert (await one.post("/sign-out", data={"csrf_token": csrf})).status == 200
    assert (await one.get("/")).status == 401
    assert (await two.get("/")).status == 200


async def test_a_role_change_or_removal_takes_effect_on_the_next_request(
    portal: TestClient[Any, Any], provider: Provider
) -> None:
    csrf = await sign_in(portal, provider, "billing")
    assert 'action="/billing-profile"' in await (await portal.get("/billing-profile")).text()
    member = provider.members["billing"]
    path = f"/v1/accounts/{provider.account_id}/members/{member}"
    await call(provider.admin, "PATCH", path, {"role": "viewer"}, status=200)
    page = await (await portal.get("/billing-profile")).text()
    assert 'action="/billing-profile"' not in page
    refused = await portal.post(
        "/billing-profile", data={"legal_name": "X", "version": "0", "csrf_token": csrf}
    )
    assert refused.status == 403
    await call(provider.admin, "DELETE", path, status=200)
    assert (await portal.get("/")).status == 401


async def test_a_member_of_two_accounts_switches_between_them(
    portal: TestClient[Any, Any], provider: Provider
) -> None:
    other = await seed(provider.admin, "Globex")
    await call(
        provider.admin,
        "POST",
        f"/v1/accounts/{other.account_id}/members",
        {"email": "owner@acme.test", "name": "Owner", "role": "viewer"},
        status=201,
    )
    csrf = await sign_in(portal, provider)
    page = await (await portal.get("/")).text()
    assert "Globex" in page and 'action="/switch"' in page
    switched = await portal.post(
        "/switch", data={"account_id": other.account_id, "csrf_token": csrf}
    )
    assert switched.status == 200
    page = await switched.text()
    assert "Globex" in page and "Edit address" not in page  # a viewer there
    stranger = await seed(provider.admin, "Initech")
    refused = await portal.post(
        "/switch", data={"account_id": stranger.account_id, "csrf_token": csrf}
    )
    assert refused.status == 404


async def test_the_last_owner_cannot_leave_and_the_page_says_why(
    portal: TestClient[Any, Any], provider: Provider
) -> None:
    csrf = await sign_in(portal, provider)
    owner = provider.members["owner"]
    response = await portal.post(f"/members/{owner}/remove", data={"csrf_token": csrf})
    assert response.status == 409
    assert "last owner" in await response.text()
    listed = await call(
        provider.admin, "GET", f"/v1/accounts/{provider.account_id}/members", status=200
    )
    assert owner in [m["id"] for m in listed["data"]]
