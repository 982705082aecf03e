"""Pure parts of the admin API: input parsing, ids, token checks, the live balance math. No I/O."""

from __future__ import annotations

from datetime import date, timedelta
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


# -- amounts: JSON integers only ----------------------------------------------------------------

CREDIT = {"amount": 1, "description": "d", "idempotency_key": "k"}


@pytest.mark.parametrize(
    ("amount", "ok"),
    [
        (1, True),
        (validation.MAX_CREDIT_MICROS, True),
        (validation.MAX_CREDIT_MICROS + 1, False),
        (0, False),
        (-1, False),
        (True, False),
        (False, False),
        (1.0, False),
        (1.5, False),
        ("1", False),
        (None, False),
        ([1], False),
        ({"micros": 1}, False),
    ],
)
def test_credit_amount(amount: Any, ok: bool) -> None:
    doc = {**CREDIT, "amount": amount}
    if ok:
        assert validation.credit(doc).amount == amount
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
        ({"daily_hard_limit": 2.0}, "daily_hard_limit"),
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
    set_ = validation.limits({**LIMITS, "low_balance_threshold": 5, "daily_hard_limit": 0})
    assert (left_out.low_balance_threshold_given, cleared.low_balance_threshold_given) == (
        False,
        True,
    )
    assert (set_.low_balance_threshold, set_.daily_hard_limit) == (5, 0)


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
        ({"name": "x" * validation.MAX_NAME_CHARS}, True),
        ({"name": "x" * (validation.MAX_NAME_CHARS + 1)}, False),
        ({"name": "tab\there"}, False),
        ({"name": ""}, False),
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
# accept exactly that.


def _document_allows(schema: dict[str, Any]) -> Any:
    rule = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return jsonschema_rs.validator_for(rule, validate_formats=True).is_valid


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
