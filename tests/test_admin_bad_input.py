"""Bad input on every admin route: a 4xx application/problem+json answer and nothing changed.

Each case takes a snapshot of every Postgres table and every Redis key the
admin API can touch, sends one bad request, and compares.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from test_admin_support import (
    ANY_2XX,
    AUTH,
    MAX_BODY,
    PROBLEM,
    add_credit,
    call,
    new_account,
    new_key,
    new_project,
    snapshot,
    start,
)

from meter.problems import TYPE_BASE

UNKNOWN = {"account": "acct_" + "Z" * 22, "project": "proj_" + "Z" * 22, "key": "key_" + "Z" * 22}

GOOD: dict[str, dict[str, Any]] = {
    "create_account": {"name": "Other"},
    "create_project": {"name": "cli"},
    "set_limits": {"daily_hard_limit": 1, "overage_line": 2, "daily_notify_threshold": 3},
    "add_credit": {"amount": 1, "description": "more", "idempotency_key": "new-key"},
    "rename_account": {"name": "Renamed"},
    "add_member": {"email": "new@acme.test", "name": "New", "role": "viewer"},
    "create_token": {"name": "ci", "role": "viewer"},
    "create_operator_token": {"name": "ops", "role": "operator-readonly"},
    "put_profile": {"city": "Berlin", "country": "DE"},
    "add_tax_id": {"type": "eu_vat", "country": "DE", "value": "DE136695976"},
}


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # with {account} {project} {key}
    body: str | None  # key of GOOD, or None: the route takes no fields


ROUTES = [
    Route("create_account", "POST", "/v1/accounts", "create_account"),
    Route("get_account", "GET", "/v1/accounts/{account}", None),
    Route("create_project", "POST", "/v1/accounts/{account}/projects", "create_project"),
    Route("create_key", "POST", "/v1/projects/{project}/keys", None),
    Route("list_keys", "GET", "/v1/projects/{project}/keys", None),
    Route("revoke_key", "DELETE", "/v1/keys/{key}", None),
    Route("set_limits", "PUT", "/v1/accounts/{account}/limits", "set_limits"),
    Route("add_credit", "POST", "/v1/accounts/{account}/credits", "add_credit"),
    Route("suspend", "POST", "/v1/accounts/{account}/suspend", None),
    Route("resume", "POST", "/v1/accounts/{account}/resume", None),
    Route("balance", "GET", "/v1/accounts/{account}/balance", None),
    Route("rename_account", "PATCH", "/v1/accounts/{account}", "rename_account"),
    Route("request_deletion", "POST", "/v1/accounts/{account}/deletion-request", None),
    Route("add_member", "POST", "/v1/accounts/{account}/members", "add_member"),
    Route("create_token", "POST", "/v1/accounts/{account}/tokens", "create_token"),
    Route("create_operator_token", "POST", "/v1/operator-tokens", "create_operator_token"),
    Route("put_profile", "PUT", "/v1/accounts/{account}/billing-profile", "put_profile"),
    Route("add_tax_id", "POST", "/v1/accounts/{account}/tax-ids", "add_tax_id"),
]
BY_NAME = {r.name: r for r in ROUTES}


@dataclass(frozen=True)
class Bad:
    """One bad request: raw body bytes (or a JSON value), headers, the answer expected."""

    body: Any = None
    status: int = 422
    slug: str = "invalid-input"
    raw: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    ids: tuple[tuple[str, str], ...] = ()


@pytest.fixture
async def world(
    aiohttp_client: Any, redis_url: str, database_url: str
) -> tuple[TestClient[Any, Any], dict[str, str]]:
    """An account with limits, credits, a project and a key: something that could change."""
    client = await start(aiohttp_client, redis_url, database_url)
    account = await new_account(client)
    project = await new_project(client, account["id"])
    key = await new_key(client, project["id"])
    await add_credit(client, account["id"], 5_000_000, "seed")
    limits = {"daily_hard_limit": 9, "overage_line": 8, "daily_notify_threshold": 7}
    await call(client, "PUT", f"/v1/accounts/{account['id']}/limits", limits, status=200)
    return client, {"account": account["id"], "project": project["id"], "key": key["id"]}


async def assert_refused(
    world: tuple[TestClient[Any, Any], dict[str, str]],
    redis_url: str,
    database_url: str,
    route: Route,
    bad: Bad,
    label: str,
) -> dict[str, Any]:
    client, ids = world
    path = route.path.format(**{**ids, **dict(bad.ids)})
    headers = {**AUTH, **dict(bad.headers)}
    data = bad.raw if bad.raw is not None else None if bad.body is None else orjson.dumps(bad.body)
    if data is not None:
        headers.setdefault("Content-Type", "application/json")
    before = await snapshot(database_url, redis_url)
    response = await client.request(route.method, path, data=data, headers=headers)
    body = await response.read()
    assert response.status == bad.status, (label, body)
    assert response.content_type == PROBLEM, label
    problem: dict[str, Any] = orjson.loads(body)
    assert problem["type"] == TYPE_BASE + bad.slug and problem["status"] == bad.status, label
    assert await snapshot(database_url, redis_url) == before, label
    return problem


def _without(name: str, field: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD[name].items() if k != field}


# -- the cases, route by route ------------------------------------------------------------------

AUTH_CASES = [
    ("no-token", ""),
    ("wrong-token", "Bearer nope"),
    ("token-prefix", "Bearer test-admin"),
    ("token-plus-suffix", "Bearer test-admin-token-0123456789x"),
    ("basic-scheme", "Basic dGVzdDp0ZXN0"),
]

BODY_SHAPE_CASES = [
    ("malformed-json", Bad(raw=b'{"name": ', status=400, slug="bad-request")),
    ("trailing-garbage", Bad(raw=b'{"name": "x"} x', status=400, slug="bad-request")),
    ("json-array", Bad(body=[1, 2], status=400, slug="bad-request")),
    ("json-string", Bad(body="name", status=400, slug="bad-request")),
    ("not-utf8", Bad(raw=b'{"name": "\xff"}', status=400, slug="bad-request")),
    # Nested deeper than the JSON parser's recursion limit: malformed, not a field error.
    (
        "float-and-deep",
        Bad(
            raw=b'{"x": 1.5, "y": ' + b"[" * 1000 + b"]" * 1000 + b"}",  # < MAX_BODY
            status=400,
            slug="bad-request",
        ),
    ),
    (
        "form-encoded",
        Bad(
            raw=b"name=x",
            status=415,
            slug="unsupported-media-type",
            headers=(("Content-Type", "application/x-www-form-urlencoded"),),
        ),
    ),
    (
        "text-plain",
        Bad(
            raw=b'{"name": "x"}',
            status=415,
            slug="unsupported-media-type",
            headers=(("Content-Type", "text/plain"),),
        ),
    ),
]

FIELD_CASES: dict[str, list[tuple[str, Any, str]]] = {
    # route: (label, body, the field the error must name)
    "create_account": [
        ("missing-name", {}, "name"),
        ("null-name", {"name": None}, "name"),
        ("blank-name", {"name": "   "}, "name"),
        ("number-name", {"name": 5}, "name"),
        ("long-name", {"name": "x" * 201}, "name"),
        ("control-chars", {"name": "a\x00b"}, "name"),
        ("c1-control-char", {"name": "a\x85b"}, "name"),
        ("unicode-blank-name", {"name": "\u00a0\u3000"}, "name"),
        ("bad-email", {"name": "A", "billing_email": "not-an-email"}, "billing_email"),
        ("email-double-dot", {"name": "A", "billing_email": "a@b..co"}, "billing_email"),
        ("blank-email", {"name": "A", "billing_email": " "}, "billing_email"),
        ("email-number", {"name": "A", "billing_email": 5}, "billing_email"),
    ],
    "create_project": [
        ("missing-name", {}, "name"),
        ("bool-name", {"name": True}, "name"),
        ("list-name", {"name": ["a"]}, "name"),
    ],
    "set_limits": [
        ("missing-overage", _without("set_limits", "overage_line"), "overage_line"),
        ("missing-hard-limit", _without("set_limits", "daily_hard_limit"), "daily_hard_limit"),
        (
            "missing-notify",
            _without("set_limits", "daily_notify_threshold"),
            "daily_notify_threshold",
        ),
        ("null-overage", {**GOOD["set_limits"], "overage_line": None}, "overage_line"),
        ("negative-overage", {**GOOD["set_limits"], "overage_line": -1}, "overage_line"),
        ("negative-limit", {**GOOD["set_limits"], "daily_hard_limit": -5}, "daily_hard_limit"),
        ("float-limit", {**GOOD["set_limits"], "daily_hard_limit": 1.5}, "daily_hard_limit"),
        ("integral-float", {**GOOD["set_limits"], "overage_line": 7.0}, "overage_line"),
        ("exponent", {**GOOD["set_limits"], "daily_hard_limit": 1e6}, "daily_hard_limit"),
        ("string-limit", {**GOOD["set_limits"], "daily_hard_limit": "5"}, "daily_hard_limit"),
        ("bool-overage", {**GOOD["set_limits"], "overage_line": True}, "overage_line"),
        ("false-limit", {**GOOD["set_limits"], "daily_hard_limit": False}, "daily_hard_limit"),
        ("huge-limit", {**GOOD["set_limits"], "daily_hard_limit": 10**16}, "daily_hard_limit"),
        (
            "bad-low-balance",
            {**GOOD["set_limits"], "low_balance_threshold": "1"},
            "low_balance_threshold",
        ),
        ("misspelt", {**GOOD["set_limits"], "daily_hard_limt": 5}, "daily_hard_limt"),
    ],
    "add_credit": [
        ("zero", {**GOOD["add_credit"], "amount": 0}, "amount"),
        ("negative", {**GOOD["add_credit"], "amount": -5}, "amount"),
        ("float", {**GOOD["add_credit"], "amount": 1.5}, "amount"),
        ("integral-float", {**GOOD["add_credit"], "amount": 5.0}, "amount"),
        ("string", {**GOOD["add_credit"], "amount": "5"}, "amount"),
        ("true", {**GOOD["add_credit"], "amount": True}, "amount"),
        ("false", {**GOOD["add_credit"], "amount": False}, "amount"),
        ("null", {**GOOD["add_credit"], "amount": None}, "amount"),
        ("over-cap", {**GOOD["add_credit"], "amount": 10**13 + 1}, "amount"),
        ("missing-amount", _without("add_credit", "amount"), "amount"),
        ("missing-description", _without("add_credit", "description"), "description"),
        ("missing-idempotency-key", _without("add_credit", "idempotency_key"), "idempotency_key"),
        ("blank-description", {**GOOD["add_credit"], "description": ""}, "description"),
        ("number-key", {**GOOD["add_credit"], "idempotency_key": 5}, "idempotency_key"),
        ("long-key", {**GOOD["add_credit"], "idempotency_key": "k" * 201}, "idempotency_key"),
        ("debit-kind", {**GOOD["add_credit"], "kind": "usage"}, "kind"),
        ("list-kind", {**GOOD["add_credit"], "kind": ["credit"]}, "kind"),
        ("unknown-field", {**GOOD["add_credit"], "surprise": 1}, "surprise"),
    ],
    "create_key": [("any-field", {"name": "ci"}, "name")],
    "suspend": [("any-field", {"reason": "fraud"}, "reason")],
    "resume": [("any-field", {"reason": "paid"}, "reason")],
    "request_deletion": [("any-field", {"reason": "gone"}, "reason")],
    "rename_account": [
        ("missing-name", {}, "name"),
        ("trailing-newline", {"name": "Acme\n"}, "name"),
        ("status-too", {"name": "Acme", "status": "closed"}, "status"),
    ],
    "add_member": [
        ("bad-email", {**GOOD["add_member"], "email": "new@acme"}, "email"),
        ("operator-role", {**GOOD["add_member"], "role": "operator"}, "role"),
        ("missing-role", _without("add_member", "role"), "role"),
    ],
    "create_token": [
        ("operator-role", {**GOOD["create_token"], "role": "operator"}, "role"),
        ("blank-name", {**GOOD["create_token"], "name": " "}, "name"),
    ],
    "create_operator_token": [
        ("account-role", {**GOOD["create_operator_token"], "role": "owner"}, "role"),
        ("missing-name", _without("create_operator_token", "name"), "name"),
    ],
    "put_profile": [
        ("lowercase-country", {"country": "de"}, "country"),
        ("no-such-country", {"country": "AA"}, "country"),
        ("bad-invoice-email", {"invoice_email": "a@b..co"}, "invoice_email"),
        ("long-postal-code", {"postal_code": "1" * 65}, "postal_code"),
        ("unknown-field", {"vat": "DE1"}, "vat"),
    ],
    "add_tax_id": [
        ("unknown-type", {**GOOD["add_tax_id"], "type": "xx_vat"}, "type"),
        ("wrong-country", {**GOOD["add_tax_id"], "country": "US"}, "country"),
        ("bad-check-digits", {**GOOD["add_tax_id"], "value": "DE136695977"}, "value"),
        ("missing-value", _without("add_tax_id", "value"), "value"),
    ],
}

# JSON allows integers orjson cannot write; they are out of range.
BEYOND_64_BITS = (
    b'{"amount": 1000000000000000000000000000000, "description": "x", "idempotency_key": "k"}'
)
# Not a JSON integer (a double would read it as 5.0, and 5.0 is refused as well).
ALMOST_WHOLE = b'{"amount": 5.000000000000000001, "description": "x", "idempotency_key": "k"}'


def cases_for(route: Route) -> list[tuple[str, Bad, str | None]]:
    """(label, bad request, field the problem must name) for every way to get ``route`` wrong."""
    good = GOOD[route.body] if route.body else None
    out: list[tuple[str, Bad, str | None]] = [
        (
            label,
            Bad(body=good, status=401, slug="unauthorized", headers=(("Authorization", h),)),
            None,
        )
        for label, h in AUTH_CASES
    ]
    for kind in ("account", "project", "key"):
        if "{" + kind + "}" not in route.path:
            continue
        other = "acct_abc" if kind != "account" else "proj_abc"
        for label, bad_id in (
            ("unknown", UNKNOWN[kind]),
            ("wrong-prefix", "user_abc"),
            ("other-kind", other),
            ("junk", "a%20b"),
            ("too-long", f"{kind}_" + "a" * 65),
        ):
            out.append(
                (
                    f"{kind}-{label}",
                    Bad(body=good, status=404, slug="not-found", ids=((kind, bad_id),)),
                    None,
                )
            )
    if route.method in {"POST", "PUT", "PATCH"}:
        huge = {**(good or {}), "name": "x" * (MAX_BODY + 1)}
        out.append(("oversize", Bad(body=huge, status=413, slug="payload-too-large"), None))
        out += [(label, bad, None) for label, bad in BODY_SHAPE_CASES]
    if route.body:
        out.append(("empty-body", Bad(raw=b"", status=400, slug="bad-request"), None))
    for label, body, field in FIELD_CASES.get(route.name, []):
        out.append((label, Bad(body=body), field))
    if route.name == "add_credit":
        out.append(("beyond-64-bits", Bad(raw=BEYOND_64_BITS), "amount"))
        out.append(("almost-whole", Bad(raw=ALMOST_WHOLE), "amount"))
    return out


@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
async def test_bad_input_is_a_problem_and_changes_nothing(
    world: Any, redis_url: str, database_url: str, route: Route
) -> None:
    cases = cases_for(route)
    assert len(cases) >= 7
    for label, bad, field in cases:
        problem = await assert_refused(world, redis_url, database_url, route, bad, label)
        if field is not None:
            assert field in [e["field"] for e in problem["errors"]], label


async def test_every_wrong_field_is_reported_at_once(
    world: Any, redis_url: str, database_url: str
) -> None:
    body = {"amount": -1, "description": 5, "extra": True}
    problem = await assert_refused(
        world, redis_url, database_url, BY_NAME["add_credit"], Bad(body=body), "all-at-once"
    )
    assert sorted(e["field"] for e in problem["errors"]) == [
        "amount",
        "description",
        "extra",
        "idempotency_key",
    ]


async def test_the_snapshot_sees_every_good_write(
    world: Any, redis_url: str, database_url: str
) -> None:
    """The control: the same requests done right do change what the snapshot compares."""
    client, ids = world
    writes = [r for r in ROUTES if r.method != "GET"]
    for route in writes:
        before = await snapshot(database_url, redis_url)
        body = GOOD[route.body] if route.body else None
        await call(client, route.method, route.path.format(**ids), body, status=ANY_2XX)
        assert await snapshot(database_url, redis_url) != before, route.name


# -- query parameters of the history routes -----------------------------------------------------

QUERY_CASES = [
    # (route, query string, problem slug, the parameters the problem must name)
    ("transactions", "limit=", "bad-query", ["limit"]),
    ("transactions", "cursor=", "bad-cursor", ["cursor"]),
    ("transactions", "limit=%C2%B2", "bad-query", ["limit"]),  # "²": was a 500
    ("transactions", "limit=0", "bad-query", ["limit"]),
    ("transactions", "cursor=garbage", "bad-cursor", ["cursor"]),
    ("transactions", "limit=&cursor=", "bad-query", ["limit", "cursor"]),
    ("usage", "to=", "bad-query", ["to"]),
    ("usage", "from=", "bad-query", ["from"]),
    ("usage", "group_by=", "bad-query", ["group_by"]),
    ("usage", "from=20240101", "bad-query", ["from"]),
    ("usage", "to=0001-01-01", "bad-query", ["to"]),  # was a 500
    ("usage", "from=2024-02-30", "bad-query", ["from"]),
    ("usage", "from=&to=&group_by=week", "bad-query", ["group_by", "to", "from"]),
    ("usage", "from=2024-03-02&to=2024-03-01", "bad-query", ["from"]),
    ("usage", "from=2000-01-01", "bad-query", ["from"]),  # to: today; more than 731 days
]


@pytest.mark.parametrize(("route", "query", "slug", "fields"), QUERY_CASES)
async def test_malformed_query_parameters_are_a_400_naming_each(
    world: Any, route: str, query: str, slug: str, fields: list[str]
) -> None:
    client, ids = world
    response = await client.get(f"/v1/accounts/{ids['account']}/{route}?{query}", headers=AUTH)
    problem = await response.json(content_type=None)
    assert (response.status, response.content_type) == (400, PROBLEM), problem
    assert problem["type"] == TYPE_BASE + slug
    assert [e["field"] for e in problem["errors"]] == fields


async def test_the_query_parameters_left_out_take_their_defaults(world: Any) -> None:
    client, ids = world
    base = f"/v1/accounts/{ids['account']}"
    await add_credit(client, ids["account"], 1, "second")
    page = await call(client, "GET", f"{base}/transactions?limit=1", status=200)
    assert len(page["data"]) == 1 and page["next_cursor"].startswith("t1.")
    rest = await call(
        client, "GET", f"{base}/transactions?cursor={page['next_cursor']}", status=200
    )
    assert rest["next_cursor"] is None
    usage = await call(client, "GET", f"{base}/usage", status=200)
    assert len(usage["data"]) == 30


# -- numbers: JSON integers as written; 5.0 and 2.5e3 are not -----------------------------------


async def test_whole_numbers_written_with_a_fraction_or_exponent_are_refused(
    world: Any, redis_url: str, database_url: str
) -> None:
    """Strict on purpose (the product issue): an amount is written as an integer."""
    credit = b'{"amount": 2.5e3, "description": "exact", "idempotency_key": "whole"}'
    problem = await assert_refused(
        world, redis_url, database_url, BY_NAME["add_credit"], Bad(raw=credit), "exponent"
    )
    assert [e["field"] for e in problem["errors"]] == ["amount"]
    limits = {"overage_line": 7.0, "daily_hard_limit": 1e6, "daily_notify_threshold": None}
    problem = await assert_refused(
        world, redis_url, database_url, BY_NAME["set_limits"], Bad(body=limits), "fractions"
    )
    assert sorted(e["field"] for e in problem["errors"]) == ["daily_hard_limit", "overage_line"]
    client, ids = world
    exact = {"overage_line": 7, "daily_hard_limit": 1_000_000, "daily_notify_threshold": None}
    account = await call(client, "PUT", f"/v1/accounts/{ids['account']}/limits", exact, status=200)
    assert (account["overage_line"], account["daily_hard_limit"]) == (7, 1_000_000)


# -- requests aiohttp's parser refuses before any handler ---------------------------------------

RAW_REQUESTS = {
    "nul-in-header": b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-A: a\x00b\r\n\r\n",
    "control-char-in-header": b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-A: a\x01b\r\n\r\n",
    "nul-in-target": b"GET /healthz\x00 HTTP/1.1\r\nHost: admin\r\n\r\n",
    "header-without-colon": b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-A\r\n\r\n",
}


@pytest.mark.parametrize("raw", RAW_REQUESTS.values(), ids=RAW_REQUESTS.keys())
async def test_an_unparseable_request_is_a_400_and_one_warning_line(
    aiohttp_client: Any,
    redis_url: str,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
) -> None:
    client = await start(aiohttp_client, redis_url, database_url)
    with caplog.at_level(logging.INFO):
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        writer.write(raw)
        answer = await reader.read()  # to the end: aiohttp closes after a parse error
        writer.close()
        await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.") and answer.split(b" ", 2)[1] == b"400", answer
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelno, r.exc_info) for r in logged] == [(logging.WARNING, None)]
    message = logged[0].getMessage()
    assert message.startswith("malformed request refused with 400: ") and "\n" not in message
    assert (await client.get("/healthz")).status == 200  # and the server serves on
