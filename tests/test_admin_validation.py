"""Pure parts of the admin API: body parsing, ids, tokens, roles, the live balance. No I/O.

The request models (``admin.models``) are strict: an amount is a JSON integer as
written (``5``), never ``5.0``, ``5e0``, ``true`` or ``"5"``. The generated
document's schemas (``admin.operations.document()``) are checked against what
``declared.parse_body`` accepts, character by character for the text patterns.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import jsonschema_rs
import orjson
import pytest
from pydantic import BaseModel

from admin import access, declared, ids, models, operations
from admin.access import ActorType, Permission, Principal, Role
from admin.auth import TokenAuthenticator
from admin.errors import (
    BadRequest,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthorized,
    UnsupportedMediaType,
)
from admin.provisioning import live_balance
from admin.tax_registrations import COUNTRY_CODES, check_country
from ledger.errors import BadCursor, BadQuery
from ledger.history_query import transactions_query, usage_query
from meter.money import AccountState
from meter.settings import Settings

JSON = "application/json"


def parse(model: type[BaseModel], doc: Any, content_type: str = JSON) -> Any:
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return declared.parse_body(model, raw, content_type)


def refused_fields(model: type[BaseModel], doc: Any) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        parse(model, doc)
    return [f for f, _ in info.value.errors]


# -- the body -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "body", "content_type", "expected"),
    [
        (models.NewProject, b'{"name": "a"}', JSON, {"name": "a"}),
        (models.NewProject, b'{"name": "a"}', "application/merge-patch+json", {"name": "a"}),
        (models.NoBody, b"", JSON, {}),
        (models.NoBody, b"  \n", "", {}),  # no body: its content type does not matter
        (models.NoBody, b"{}", JSON, {}),
    ],
)
def test_parse_body_accepts(
    model: type[BaseModel], body: bytes, content_type: str, expected: dict[str, Any]
) -> None:
    assert declared.parse_body(model, body, content_type).model_dump() == expected


@pytest.mark.parametrize(
    ("model", "body", "content_type", "error"),
    [
        (models.NewProject, b"", JSON, BadRequest),  # a required body left out
        (models.NewProject, b" ", JSON, BadRequest),
        (models.NewProject, b"{", JSON, BadRequest),
        (models.NewProject, b'{"name": "x"} x', JSON, BadRequest),
        (models.NewProject, b'{"name": "\xff"}', JSON, BadRequest),
        (models.NewProject, b"[]", JSON, BadRequest),
        (models.NewProject, b"null", JSON, BadRequest),
        (models.NewProject, b'"name"', JSON, BadRequest),
        (models.NewProject, b"NaN", JSON, BadRequest),
        (models.NoBody, b"[]", JSON, BadRequest),
        (models.NewProject, b'{"name": "a"}', "text/plain", UnsupportedMediaType),
        (models.NewProject, b'{"name": "a"}', "application/octet-stream", UnsupportedMediaType),
        (models.NewProject, b'{"name": "a"}', "", UnsupportedMediaType),
        (models.NoBody, b"{}", "application/x-www-form-urlencoded", UnsupportedMediaType),
    ],
)
def test_parse_body_refuses(
    model: type[BaseModel], body: bytes, content_type: str, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        declared.parse_body(model, body, content_type)
    assert type(info.value) is error  # 400 is not 422, and neither is the other


def test_a_body_nested_past_the_parsers_limit_is_a_bad_request() -> None:
    deep = b"[" * 1000 + b"]" * 1000
    with pytest.raises(BadRequest):
        declared.parse_body(models.NewProject, b'{"name": "a", "y": ' + deep + b"}", JSON)


def test_no_fields_means_none() -> None:
    assert refused_fields(models.NoBody, {"anything": 1}) == ["anything"]


# -- amounts: JSON integers as written ----------------------------------------------------------

CREDIT = {"amount": 1, "description": "d", "idempotency_key": "k"}


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        (b"1", 1),
        (b"5", 5),
        (str(models.MAX_CREDIT_MICROS).encode(), models.MAX_CREDIT_MICROS),
        (b"5.0", None),
        (b"5e0", None),
        (b"5E+0", None),
        (b"50e-1", None),
        (b"1.0", None),
        (b"-0.0", None),
        (b"1.5", None),
        (b"5.000000000000000001", None),  # a double would read 5.0
        (b"1e-9999", None),
        (str(models.MAX_CREDIT_MICROS + 1).encode(), None),
        (b"1000000000000000000000000000000", None),  # beyond 64 bits
        (b"0", None),
        (b"-1", None),
        (b"true", None),
        (b"false", None),
        (b'"1"', None),
        (b"null", None),
        (b"[1]", None),
        (b'{"micros": 1}', None),
    ],
)
def test_credit_amount(amount: bytes, expected: int | None) -> None:
    body = b'{"amount": ' + amount + b', "description": "d", "idempotency_key": "k"}'
    if expected is not None:
        parsed = parse(models.NewCredit, body).amount
        assert parsed == expected and type(parsed) is int
    else:
        assert refused_fields(models.NewCredit, body) == ["amount"]


def test_credit_defaults_to_kind_credit_and_accepts_grant() -> None:
    assert parse(models.NewCredit, CREDIT).kind == "credit"
    assert parse(models.NewCredit, {**CREDIT, "kind": "grant"}).kind == "grant"
    assert refused_fields(models.NewCredit, {**CREDIT, "kind": "usage"}) == ["kind"]


LIMITS = {"overage_line": 0, "daily_hard_limit": None, "daily_notify_threshold": None}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"overage_line": None}, "overage_line"),
        ({"overage_line": -1}, "overage_line"),
        ({"overage_line": 7.0}, "overage_line"),
        ({"daily_hard_limit": True}, "daily_hard_limit"),
        ({"daily_hard_limit": 2.5}, "daily_hard_limit"),
        ({"daily_hard_limit": 1e6}, "daily_hard_limit"),
        ({"daily_notify_threshold": "5"}, "daily_notify_threshold"),
        ({"daily_notify_threshold": models.MAX_LIMIT_MICROS + 1}, "daily_notify_threshold"),
        ({"low_balance_threshold": -1}, "low_balance_threshold"),
        ({"low_balance_threshold": 5.0}, "low_balance_threshold"),
        ({"daily_hard_limt": 5}, "daily_hard_limt"),
    ],
)
def test_limits_refuse(change: dict[str, Any], field: str) -> None:
    assert refused_fields(models.Limits, {**LIMITS, **change}) == [field]


def test_limits_accept_the_bounds() -> None:
    top = models.MAX_LIMIT_MICROS
    limits = parse(
        models.Limits, {"overage_line": top, "daily_hard_limit": 0, "daily_notify_threshold": top}
    )
    assert (limits.overage_line, limits.daily_hard_limit) == (top, 0)


def test_limits_tell_a_left_out_threshold_from_a_null_one() -> None:
    left_out = parse(models.Limits, LIMITS)
    cleared = parse(models.Limits, {**LIMITS, "low_balance_threshold": None})
    set_ = parse(models.Limits, {**LIMITS, "low_balance_threshold": 5, "daily_hard_limit": 0})
    given = "low_balance_threshold"
    assert (given in left_out.model_fields_set, given in cleared.model_fields_set) == (False, True)
    assert (set_.low_balance_threshold, set_.daily_hard_limit) == (5, 0)
    assert type(set_.low_balance_threshold) is int


def test_limits_require_all_three() -> None:
    assert sorted(refused_fields(models.Limits, {})) == [
        "daily_hard_limit",
        "daily_notify_threshold",
        "overage_line",
    ]


def test_every_wrong_field_is_reported_at_once() -> None:
    with pytest.raises(InvalidInput) as info:
        parse(models.NewCredit, {"amount": 5.0, "description": 5, "extra": True})
    assert dict(info.value.errors) == {
        "amount": info.value.errors[0][1],
        "description": info.value.errors[1][1],
        "idempotency_key": "required",
        "extra": "unknown field",
    }
    assert info.value.status == 422 and len(info.value.extra["errors"]) == 4


@pytest.mark.parametrize(
    ("doc", "ok"),
    [
        ({"name": "Acme"}, True),
        ({"name": "Acme", "billing_email": "a@b.co"}, True),
        ({"name": "Acme", "billing_email": None}, True),
        ({"name": "Acme", "billing_email": "a@b"}, False),
        ({"name": "Acme", "billing_email": "a b@c.co"}, False),
        ({"name": "Acme", "billing_email": "@c.co"}, False),
        ({"name": "Acme", "billing_email": "a@b..co"}, False),
        ({"name": "Acme", "billing_email": "a@b.co."}, False),
        ({"name": "Acme", "billing_email": "a@b@c.co"}, False),
        ({"name": "Acme", "billing_email": "a@b.co\n"}, False),
        ({"name": "Acme", "billing_email": "a\u00a0b@c.co"}, False),
        ({"name": "Acme", "billing_email": "   "}, False),
        ({"name": "Acme", "billing_email": ""}, False),
        ({"name": "Acme", "billing_email": 5}, False),
        ({"name": "Acme", "billing_email": "a@" + "b" * models.MAX_EMAIL_CHARS + ".co"}, False),
        ({"name": "x" * models.MAX_NAME_CHARS}, True),
        ({"name": "x" * (models.MAX_NAME_CHARS + 1)}, False),
        ({"name": "tab\there"}, False),
        ({"name": "nel\x85here"}, False),
        ({"name": "del\x7f"}, False),
        ({"name": "nul\x00"}, False),
        ({"name": "trailing newline\n"}, False),
        ({"name": ""}, False),
        ({"name": " \u00a0\u3000"}, False),
        ({"name": 5}, False),
        ({"name": None}, False),
        ({"name": ["a"]}, False),
        ({"name": "\ufeff"}, True),
        ({"name": " Acme \u2003"}, True),
        ({"name": "\U0001f600"}, True),
        ({}, False),
    ],
)
def test_new_account(doc: dict[str, Any], ok: bool) -> None:
    if ok:
        assert parse(models.NewAccount, doc).name == doc["name"]
    else:
        fields = refused_fields(models.NewAccount, doc)
        assert fields == ["billing_email" if "billing_email" in doc else "name"]


# -- ids ----------------------------------------------------------------------------------------


def test_new_ids_are_prefixed_random_and_well_formed() -> None:
    made = {ids.new_id(ids.ACCOUNT) for _ in range(1000)}
    assert len(made) == 1000
    assert all(ids.well_formed(i, "acct") and len(i) == 5 + ids.RANDOM_CHARS for i in made)


@pytest.mark.parametrize(
    ("value", "prefix", "ok"),
    [
        ("acct_abc123", "acct", True),
        ("acct_", "acct", False),
        ("proj_abc", "acct", False),
        ("acct_a-b", "acct", False),
        ("acct_" + "a" * 65, "acct", False),
        ("acct_ab\x00", "acct", False),
        ("acct_abç", "acct", False),
    ],
)
def test_well_formed_ids(value: str, prefix: str, ok: bool) -> None:
    assert ids.well_formed(value, prefix) is ok


# -- tokens: the bootstrap one here; database tokens in the integration tests -------------------


class People:
    """What the authenticator asks of ``admin.people.People``: who a stored token is."""

    def __init__(self, known: dict[str, Principal] | None = None) -> None:
        self.known = known or {}
        self.asked: list[str] = []

    async def principal_of(self, token: str) -> Principal | None:
        self.asked.append(token)
        return self.known.get(token)


@pytest.fixture
def authenticator() -> TokenAuthenticator:
    return TokenAuthenticator.from_settings(Settings.from_env({"METER_ADMIN_TOKEN": "s3cret"}))


async def authenticate(auth: TokenAuthenticator, header: str | None, people: People) -> Principal:
    return await auth.authenticate(header, people)  # type: ignore[arg-type]


@pytest.mark.parametrize("header", ["Bearer s3cret", "bearer s3cret", "  Bearer   s3cret  "])
async def test_the_bootstrap_token_is_the_operator(
    authenticator: TokenAuthenticator, header: str
) -> None:
    people = People()
    assert await authenticate(authenticator, header, people) is access.BOOTSTRAP
    assert people.asked == []  # compared in constant time, never looked up


@pytest.mark.parametrize("header", [None, "", "s3cret", "Bearer", "Bearer  ", "Basic s3cret"])
async def test_a_malformed_header_is_refused_unread(
    authenticator: TokenAuthenticator, header: str | None
) -> None:
    people = People()
    with pytest.raises(Unauthorized) as info:
        await authenticate(authenticator, header, people)
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert people.asked == []


@pytest.mark.parametrize("token", ["s3cre", "s3cret2", "S3CRET", "mta_unknown"])
async def test_another_token_is_looked_up_and_refused_when_unknown(
    authenticator: TokenAuthenticator, token: str
) -> None:
    people = People()
    with pytest.raises(Unauthorized):
        await authenticate(authenticator, f"Bearer {token}", people)
    assert people.asked == [token]


async def test_a_stored_token_is_its_principal(authenticator: TokenAuthenticator) -> None:
    viewer = Principal(ActorType.ACCOUNT_TOKEN, "tok_1", "ci", Role.VIEWER, "acct_1")
    people = People({"mta_known": viewer})
    assert await authenticate(authenticator, "Bearer mta_known", people) is viewer


async def test_an_empty_configured_token_matches_nothing() -> None:
    empty = TokenAuthenticator.from_settings(Settings.from_env({}))
    with pytest.raises(Unauthorized):
        await authenticate(empty, "Bearer ", People())
    with pytest.raises(Unauthorized):
        await authenticate(empty, "Bearer x", People())


# -- roles: the one check ----------------------------------------------------------------------

OPERATOR = access.BOOTSTRAP
READONLY = Principal(ActorType.OPERATOR_TOKEN, "tok_r", "r", Role.OPERATOR_READONLY)


def member(role: Role, account: str = "acct_1") -> Principal:
    return Principal(ActorType.ACCOUNT_TOKEN, f"tok_{role}", str(role), role, account)


def test_require_over_every_account_is_for_operators_only() -> None:
    access.require(OPERATOR, Permission.OPERATOR_WRITE)
    access.require(READONLY, Permission.OPERATOR_READ)
    with pytest.raises(Forbidden):
        access.require(READONLY, Permission.OPERATOR_WRITE)
    with pytest.raises(Forbidden):
        access.require(member(Role.OWNER), Permission.READ)  # even what its role holds


@pytest.mark.parametrize(
    ("principal", "owner", "permission", "outcome"),
    [
        (OPERATOR, "acct_1", Permission.ACCOUNT_DELETE, None),
        (OPERATOR, None, Permission.READ, NotFound),
        (READONLY, "acct_2", Permission.READ, None),
        (READONLY, "acct_2", Permission.KEYS_WRITE, Forbidden),
        (member(Role.OWNER), "acct_1", Permission.MEMBERS_WRITE, None),
        (member(Role.OWNER), "acct_1", Permission.OPERATOR_WRITE, Forbidden),
        (member(Role.ADMIN), "acct_1", Permission.KEYS_WRITE, None),
        (member(Role.ADMIN), "acct_1", Permission.MEMBERS_WRITE, Forbidden),
        (member(Role.BILLING), "acct_1", Permission.PROFILE_WRITE, None),
        (member(Role.BILLING), "acct_1", Permission.LIMITS_WRITE, Forbidden),
        (member(Role.VIEWER), "acct_1", Permission.READ, None),
        (member(Role.VIEWER), "acct_1", Permission.TOKENS_READ, Forbidden),
        # Another account's object is not found, even for what the role may not do.
        (member(Role.OWNER), "acct_2", Permission.READ, NotFound),
        (member(Role.VIEWER), "acct_2", Permission.MEMBERS_WRITE, NotFound),
        (member(Role.OWNER), None, Permission.READ, NotFound),
    ],
)
def test_require_on(
    principal: Principal, owner: str | None, permission: Permission, outcome: type[Exception] | None
) -> None:
    if outcome is None:
        access.require_on(principal, permission, owner, "no account")
        return
    with pytest.raises(outcome) as info:
        access.require_on(principal, permission, owner, "no account 'x'")
    if outcome is NotFound:
        assert info.value.detail == "no account 'x'"  # the same words as a missing one


@pytest.mark.parametrize(
    ("principal", "allowed"),
    [
        (OPERATOR, set(Role)),
        (READONLY, {Role.OPERATOR_READONLY, Role.VIEWER}),
        (member(Role.OWNER), {Role.OWNER, Role.ADMIN, Role.BILLING, Role.VIEWER}),
        (member(Role.ADMIN), {Role.ADMIN, Role.VIEWER}),
        (member(Role.BILLING), {Role.BILLING, Role.VIEWER}),
        (member(Role.VIEWER), {Role.VIEWER}),
    ],
)
def test_a_role_hands_out_no_more_than_it_holds(principal: Principal, allowed: set[Role]) -> None:
    assert {r for r in Role if access.assignable(principal, r)} == allowed


# -- the live balance ---------------------------------------------------------------------------

DAY = 19_783
NOW = DAY * 86_400 + 3_600.0


@pytest.mark.parametrize(
    ("state", "now", "spent", "left", "available"),
    [
        (AccountState(balance=10, day=DAY, spent_today=4), NOW, 4, None, 10),
        (AccountState(balance=10, overage_line=5), NOW, 0, None, 15),
        (AccountState(balance=-3, overage_line=5), NOW, 0, None, 2),
        (AccountState(balance=-9, overage_line=5), NOW, 0, None, 0),
        (AccountState(balance=10, daily_hard_limit=6, day=DAY, spent_today=4), NOW, 4, 2, 2),
        # A new UTC day: nothing spent yet, the whole limit is back.
        (
            AccountState(balance=10, daily_hard_limit=6, day=DAY, spent_today=4),
            NOW + 86_400,
            0,
            6,
            6,
        ),
        # A clock behind the stored day never rolls the counter back.
        (
            AccountState(balance=10, daily_hard_limit=6, day=DAY, spent_today=4),
            NOW - 86_400,
            4,
            2,
            2,
        ),
    ],
)
def test_live_balance(
    state: AccountState, now: float, spent: int, left: int | None, available: int
) -> None:
    b = live_balance("acct_x", state, now)
    assert (b.spent_today, b.limit_remaining, b.available) == (spent, left, available)
    assert b.balance == state.balance and b.status == "active"


# -- the OpenAPI document's rules are the server's ---------------------------------------------
# jsonschema-rs (schemathesis' validator) says what the document allows; parse_body must
# accept exactly that. Every code point of the BMP but the surrogates, which no JSON text
# carries alone, and a stride through the planes above, which no rule names.

SCHEMAS: dict[str, Any] = operations.document()["components"]["schemas"]
CODE_POINTS = [
    chr(i) for i in [*range(0xD800), *range(0xE000, 0x10000, 1), *range(0x10000, 0x110000, 97)]
]


def _document_allows(schema: dict[str, Any]) -> Any:
    rule = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return jsonschema_rs.validator_for(rule, validate_formats=True).is_valid


def _accepted(model: type[BaseModel], body: bytes) -> bool:
    try:
        declared.parse_body(model, body, JSON)
    except InvalidInput:
        return False
    return True


def _body_allows(name: str) -> Any:
    """The document's schema for ``name``'s body, its ``$ref``s resolved in place."""
    rule = {"$schema": "https://json-schema.org/draft/2020-12/schema", **SCHEMAS[name]}
    rule["$defs"] = SCHEMAS
    text = orjson.dumps(rule).replace(b"#/components/schemas/", b"#/$defs/")
    return jsonschema_rs.validator_for(orjson.loads(text), validate_formats=True).is_valid


@pytest.mark.parametrize(
    ("model", "field", "template"),
    [
        (models.NewProject, "name", "{}"),
        (models.NewProject, "name", "x{}y"),
        (models.NewProject, "name", "x{}"),  # "x\n": Python's $ matches before it
        (models.NewAccount, "billing_email", "a{}b@c.co"),
        (models.NewAccount, "billing_email", "ab@c{}d.co"),
        (models.NewAccount, "billing_email", "a@b.co{}"),
        (models.BillingProfileIn, "postal_code", "{}"),
        (models.NewTaxId, "value", "D{}"),
    ],
)
def test_text_patterns_agree_with_the_server_on_every_character(
    model: type[BaseModel], field: str, template: str
) -> None:
    prop = SCHEMAS[model.__name__]["properties"][field]
    allows = _document_allows(prop)
    base = {
        models.NewProject: {},
        models.NewAccount: {"name": "n"},
        models.BillingProfileIn: {},
        models.NewTaxId: {"type": "eu_vat", "country": "DE", "value": "DE1"},
    }[model]
    disagree = [
        hex(ord(c))
        for c in CODE_POINTS
        if allows(template.format(c))
        != _accepted(model, orjson.dumps({**base, field: template.format(c)}))
    ]
    assert disagree == []


def test_the_countries_the_document_lists_are_the_ones_the_server_accepts() -> None:
    """The model checks the shape (``^[A-Z]{2}$``); ``admin.profiles`` checks the list."""
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    codes = [a + b for a in letters for b in letters]
    for model in (models.NewTaxId, models.BillingProfileIn):
        prop = SCHEMAS[model.__name__]["properties"]["country"]
        allows = _document_allows(prop)
        listed = {c for c in codes if allows(c)}
        assert listed == set(COUNTRY_CODES) == {c for c in codes if _country_ok(c)}


def _country_ok(code: str) -> bool:
    try:
        check_country(code)
    except ValueError:
        return False
    return True


# Whole bodies: a JSON document the schema allows is parsed; one it refuses is a 422.
# The one known difference is written out: JSON Schema counts 5.0 as an integer.
BODIES: list[tuple[type[BaseModel], bytes]] = [
    (models.NewCredit, b'{"amount": 5, "description": "d", "idempotency_key": "k"}'),
    (models.NewCredit, b'{"amount": 5, "description": "d", "idempotency_key": "k", "x": 1}'),
    (models.NewCredit, b'{"amount": 5, "description": "d"}'),
    (models.NewCredit, b'{"amount": true, "description": "d", "idempotency_key": "k"}'),
    (models.NewCredit, b'{"amount": "5", "description": "d", "idempotency_key": "k"}'),
    (models.NewCredit, b'{"amount": 5.5, "description": "d", "idempotency_key": "k"}'),
    (models.NewCredit, b'{"amount": 5, "description": "d", "idempotency_key": "k", "kind": null}'),
    (models.Limits, b'{"overage_line": 0, "daily_hard_limit": null, "daily_notify_threshold": 1}'),
    (models.Limits, b'{"overage_line": 0, "daily_hard_limit": null}'),
    (models.Limits, b'{"overage_line": null, "daily_hard_limit": 1, "daily_notify_threshold": 1}'),
    (models.NewAccount, b'{"name": "a", "billing_email": null}'),
    (models.NewMember, b'{"email": "a@b.co", "name": "n", "role": "owner"}'),
    (models.NewMember, b'{"email": "a@b.co", "name": "n", "role": "operator"}'),
    (models.NewAccountToken, b'{"name": "n", "role": "operator"}'),
    (models.NewOperatorToken, b'{"name": "n", "role": "operator-readonly"}'),
    (models.NewOperatorToken, b'{"name": "n", "role": "owner"}'),
    (models.BillingProfileIn, b"{}"),
    (models.BillingProfileIn, b'{"country": "de", "invoice_email": null}'),
    (models.NewTaxId, b'{"type": "eu_vat", "country": "DE", "value": "DE123"}'),
    (models.NoBody, b"{}"),
    (models.NoBody, b'{"a": 1}'),
]
INTEGRAL_FLOATS = [
    (models.NewCredit, b'{"amount": 5.0, "description": "d", "idempotency_key": "k"}'),
    (models.NewCredit, b'{"amount": 5e0, "description": "d", "idempotency_key": "k"}'),
    (models.Limits, b'{"overage_line": 1e3, "daily_hard_limit": 2.0, "daily_notify_threshold": 0}'),
]


@pytest.mark.parametrize(("model", "body"), BODIES)
def test_the_document_allows_the_bodies_the_server_accepts(
    model: type[BaseModel], body: bytes
) -> None:
    assert _body_allows(model.__name__)(orjson.loads(body)) is _accepted(model, body)


@pytest.mark.parametrize(("model", "body"), INTEGRAL_FLOATS)
def test_an_integral_float_is_the_one_thing_the_document_allows_and_the_server_refuses(
    model: type[BaseModel], body: bytes
) -> None:
    assert _body_allows(model.__name__)(orjson.loads(body))
    assert not _accepted(model, body)


def test_every_request_schema_is_an_input_model_refusing_unknown_fields() -> None:
    bodies = {
        op["requestBody"]["content"][JSON]["schema"]["$ref"].rsplit("/", 1)[1]
        for path in operations.document()["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and "requestBody" in op
    }
    assert bodies and all(SCHEMAS[b]["additionalProperties"] is False for b in bodies)
    assert all(issubclass(getattr(models, b), models.Input) for b in bodies)


# -- query parameters ----------------------------------------------------------------------------


def _query_schema(path: str, name: str) -> dict[str, Any]:
    operation = operations.document()["paths"][path]["get"]
    (param,) = [p for p in operation["parameters"] if p["name"] == name]
    schema: dict[str, Any] = param["schema"]
    return schema


def _days(first: date, count: int) -> list[str]:
    return [(first + timedelta(days=n)).isoformat() for n in range(count)]


DATES = [
    *_days(date(1969, 12, 25), 14),
    *_days(date(2023, 2, 26), 6),
    *_days(date(2024, 2, 26), 6),
    "2023-02-29",
    "2024-04-31",
    "2024-13-01",
    "2024-00-10",
    "9999-12-31",
    "0000-01-01",
    "0001-01-01",
    "20240101",
    "2024-W01-1",
    "2024-001",
    "2024-1-01",
    " 2024-01-01",
    "2024-01-01\n",
    "2024-01-01T00:00:00Z",
    "\uff12\uff10\uff12\uff14-01-01",  # fullwidth digits: int() reads them, the pattern does not
    "",
]
CURSORS = ["t1.5", "t1.0", "t1.007", "t1." + "9" * 19, "t1." + "9" * 20, "t1.", "t2.5", "t1.-5"]
CURSORS += ["t1.\u00b2", "t1.5\n", " t1.5", "dDE6MTIzNDU", "", "le_5"]


@pytest.mark.parametrize("text", DATES)
def test_usage_dates_the_document_allows_are_the_ones_accepted(text: str) -> None:
    path = "/v1/accounts/{account_id}/usage"
    allows = _document_allows(_query_schema(path, "from")) and _document_allows(
        _query_schema(path, "to")
    )
    try:
        usage_query({"from": text, "to": text}, date(2025, 1, 1))
        accepted = True
    except BadQuery as exc:
        assert {f for f, _ in exc.errors} == {"from", "to"}
        accepted = False
    assert accepted is allows(text)


@pytest.mark.parametrize("text", CURSORS)
def test_cursors_the_document_allows_are_the_ones_accepted(text: str) -> None:
    allows = _document_allows(_query_schema("/v1/accounts/{account_id}/transactions", "cursor"))
    try:
        transactions_query({"cursor": text})
        accepted = True
    except BadCursor:
        accepted = False
    assert accepted is allows(text)


@pytest.mark.parametrize(
    ("limit", "ok"), [("1", True), ("100", True), ("0", False), ("x", False), ("\u00b2", False)]
)
def test_limits_the_document_allows_are_the_ones_accepted(limit: str, ok: bool) -> None:
    schema = _query_schema("/v1/accounts/{account_id}/transactions", "limit")
    allows = _document_allows(schema)(int(limit)) if limit.isascii() and limit.isdigit() else False
    try:
        transactions_query({"limit": limit})
        accepted = True
    except BadQuery:
        accepted = False
    assert accepted is ok is allows
