"""Pure parts of the admin API: input parsing, ids, token checks, the live balance math. No I/O."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import jsonschema_rs
import pytest

from admin import ids, openapi, validation
from admin.auth import Principal, Role, TokenAuthenticator, authorize
from admin.errors import BadRequest, Forbidden, InvalidInput, Unauthorized, UnsupportedMediaType
from admin.provisioning import live_balance
from ledger.errors import BadCursor, BadQuery
from ledger.history_query import transactions_query, usage_query
from meter.money import AccountState
from meter.settings import Settings

# -- the body -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "required", "expected"),
    [
        (b'{"a": 1}', "application/json", True, {"a": 1}),
        (b'{"a": 1}', "application/merge-patch+json", True, {"a": 1}),
        (b"", "application/json", False, {}),
        (b"  \n", "", False, {}),
        (b"{}", "application/json", False, {}),
    ],
)
def test_json_object_accepts(
    body: bytes, content_type: str, required: bool, expected: dict[str, Any]
) -> None:
    assert validation.json_object(body, content_type, required=required) == expected


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"", "application/json", BadRequest),
        (b"{", "application/json", BadRequest),
        (b"[]", "application/json", BadRequest),
        (b"null", "application/json", BadRequest),
        (b"NaN", "application/json", BadRequest),
        (b'{"a": 1}', "text/plain", UnsupportedMediaType),
        (b'{"a": 1}', "application/octet-stream", UnsupportedMediaType),
    ],
)
def test_json_object_refuses(body: bytes, content_type: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        validation.json_object(body, content_type)


def test_numbers_with_a_fraction_or_exponent_are_read_exactly() -> None:
    doc = validation.json_object(
        b'{"a": 1.00000000000000001, "b": [5e0], "c": 7, "d": 1e-99999999999999999999}',
        "application/json",
    )
    assert doc == {"a": Decimal("1.00000000000000001"), "b": [Decimal(5)], "c": 7, "d": 0.0}
    assert type(doc["c"]) is int and isinstance(doc["a"], Decimal)
    assert validation.json_object(b'{"c": 7}', "application/json") == {"c": 7}


def test_a_float_beside_a_deeply_nested_value_is_a_bad_request() -> None:
    deep = b"[" * 1023 + b"]" * 1023
    with pytest.raises(BadRequest):
        validation.json_object(b'{"x": 1.5, "y": ' + deep + b"}", "application/json")
    assert validation.json_object(b'{"x": 1, "y": ' + deep + b"}", "application/json")["x"] == 1


# -- amounts: whole JSON numbers, as JSON Schema counts integers --------------------------------

CREDIT = {"amount": 1, "description": "d", "idempotency_key": "k"}


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        (1, 1),
        (validation.MAX_CREDIT_MICROS, validation.MAX_CREDIT_MICROS),
        (Decimal("1.0"), 1),
        (Decimal("1E+3"), 1000),
        (Decimal("-0.0"), None),
        (1.0, 1),
        (validation.MAX_CREDIT_MICROS + 1, None),
        (Decimal("1E+13") + 1, None),
        (Decimal("1E+999999"), None),
        (0, None),
        (-1, None),
        (True, None),
        (False, None),
        (Decimal("1.00000000000000001"), None),
        (Decimal("1E-999999"), None),
        (Decimal("NaN"), None),
        (1.5, None),
        ("1", None),
        (None, None),
        ([1], None),
        ({"micros": 1}, None),
    ],
)
def test_credit_amount(amount: Any, expected: int | None) -> None:
    doc = {**CREDIT, "amount": amount}
    if expected is not None:
        parsed = validation.credit(doc).amount
        assert parsed == expected and type(parsed) is int
    else:
        with pytest.raises(InvalidInput) as info:
            validation.credit(doc)
        assert info.value.errors == [("amount", info.value.errors[0][1])]


def test_credit_defaults_to_kind_credit_and_accepts_grant() -> None:
    assert validation.credit(CREDIT).kind == "credit"
    assert validation.credit({**CREDIT, "kind": "grant"}).kind == "grant"


LIMITS = {"overage_line": 0, "daily_hard_limit": None, "daily_notify_threshold": None}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"overage_line": None}, "overage_line"),
        ({"overage_line": -1}, "overage_line"),
        ({"daily_hard_limit": True}, "daily_hard_limit"),
        ({"daily_hard_limit": 2.5}, "daily_hard_limit"),
        ({"daily_hard_limit": Decimal("2.0000000000000000001")}, "daily_hard_limit"),
        ({"daily_notify_threshold": "5"}, "daily_notify_threshold"),
        ({"daily_notify_threshold": validation.MAX_LIMIT_MICROS + 1}, "daily_notify_threshold"),
        ({"low_balance_threshold": -1}, "low_balance_threshold"),
        ({"daily_hard_limt": 5}, "daily_hard_limt"),
    ],
)
def test_limits_refuse(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validation.limits({**LIMITS, **change})
    assert [f for f, _ in info.value.errors] == [field]


def test_limits_tell_a_left_out_threshold_from_a_null_one() -> None:
    left_out = validation.limits(LIMITS)
    cleared = validation.limits({**LIMITS, "low_balance_threshold": None})
    set_ = validation.limits(
        {**LIMITS, "low_balance_threshold": Decimal("5.0"), "daily_hard_limit": 0}
    )
    assert (left_out.low_balance_threshold_given, cleared.low_balance_threshold_given) == (
        False,
        True,
    )
    assert (set_.low_balance_threshold, set_.daily_hard_limit) == (5, 0)
    assert type(set_.low_balance_threshold) is int


def test_limits_require_all_three() -> None:
    with pytest.raises(InvalidInput) as info:
        validation.limits({})
    assert sorted(f for f, _ in info.value.errors) == [
        "daily_hard_limit",
        "daily_notify_threshold",
        "overage_line",
    ]


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
        ({"name": "x" * validation.MAX_NAME_CHARS}, True),
        ({"name": "x" * (validation.MAX_NAME_CHARS + 1)}, False),
        ({"name": "tab\there"}, False),
        ({"name": "nel\x85here"}, False),
        ({"name": "del\x7f"}, False),
        ({"name": "trailing newline\n"}, False),
        ({"name": ""}, False),
        ({"name": " \u00a0\u3000"}, False),
        ({"name": "\ufeff"}, True),
        ({"name": " Acme \u2003"}, True),
        ({"name": "\U0001f600"}, True),
        ({}, False),
    ],
)
def test_new_account(doc: dict[str, Any], ok: bool) -> None:
    if ok:
        assert validation.new_account(doc).name == doc["name"]
    else:
        with pytest.raises(InvalidInput):
            validation.new_account(doc)


def test_no_fields_means_none() -> None:
    validation.no_fields({})
    with pytest.raises(InvalidInput):
        validation.no_fields({"anything": 1})


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


# -- tokens -------------------------------------------------------------------------------------


@pytest.fixture
def authenticator() -> TokenAuthenticator:
    return TokenAuthenticator.from_settings(Settings.from_env({"METER_ADMIN_TOKEN": "s3cret"}))


@pytest.mark.parametrize("header", ["Bearer s3cret", "bearer s3cret", "  Bearer   s3cret  "])
def test_the_token_is_accepted(authenticator: TokenAuthenticator, header: str) -> None:
    assert Role.OPERATOR in authenticator.authenticate(header).roles


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "s3cret",
        "Bearer",
        "Bearer s3cre",
        "Bearer s3cret2",
        "Basic s3cret",
        "Bearer S3CRET",
    ],
)
def test_other_headers_are_refused(authenticator: TokenAuthenticator, header: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        authenticator.authenticate(header)
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_an_empty_configured_token_matches_nothing() -> None:
    empty = TokenAuthenticator.from_settings(Settings.from_env({}))
    with pytest.raises(Unauthorized):
        empty.authenticate("Bearer ")


def test_a_principal_without_the_role_is_forbidden() -> None:
    authorize(Principal("op", frozenset({Role.OPERATOR})), "POST", "/v1/accounts")
    with pytest.raises(Forbidden):
        authorize(Principal("nobody", frozenset()), "POST", "/v1/accounts")


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
# jsonschema-rs (schemathesis' validator) says what the document allows; the parsers must
# accept exactly that. Every code point of the BMP but the surrogates, which no JSON text
# carries alone, and a stride through the planes above, which no rule names.

CODE_POINTS = [
    chr(i) for i in [*range(0xD800), *range(0xE000, 0x10000, 1), *range(0x10000, 0x110000, 97)]
]


def _document_allows(schema: dict[str, Any]) -> Any:
    rule = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return jsonschema_rs.validator_for(rule, validate_formats=True).is_valid


def _accepted(parse: Any, doc: dict[str, Any]) -> bool:
    try:
        parse(doc)
    except InvalidInput:
        return False
    return True


@pytest.mark.parametrize(
    ("schema", "parse", "field", "template"),
    [
        ("NewProject", validation.new_project, "name", "{}"),
        ("NewProject", validation.new_project, "name", "x{}y"),
        ("NewAccount", validation.new_account, "billing_email", "a{}b@c.co"),
        ("NewAccount", validation.new_account, "billing_email", "ab@c{}d.co"),
    ],
)
def test_text_patterns_agree_with_the_server_on_every_character(
    schema: str, parse: Any, field: str, template: str
) -> None:
    allows = _document_allows(openapi.SCHEMAS[schema]["properties"][field])
    base = {"name": "n"} if field != "name" else {}
    disagree = [
        hex(ord(c))
        for c in CODE_POINTS
        if allows(template.format(c)) != _accepted(parse, {**base, field: template.format(c)})
    ]
    assert disagree == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"5", 5),
        (b"5.0", 5),
        (b"5e0", 5),
        (b"5E+0", 5),
        (b"50e-1", 5),
        (b"5.5", None),
        (b"5.000000000000000001", None),  # a double would read 5.0
        (b"-0.0", None),
        (b"1e-9999", None),
    ],
)
def test_amounts_are_the_exact_value_of_the_number_written(
    text: bytes, expected: int | None
) -> None:
    body = b'{"amount": ' + text + b', "description": "d", "idempotency_key": "k"}'
    doc = validation.json_object(body, "application/json")
    if expected is None:
        assert not _accepted(validation.credit, doc)
    else:
        assert validation.credit(doc).amount == expected


def _query_schema(path: str, name: str) -> dict[str, Any]:
    operation = openapi.document()["paths"][path]["get"]
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
