"""Every request and response shape of the admin API, declared once as pydantic v2 models.

The declarations are the validation (strict: ``5.0``, ``true`` and ``"5"`` are
not amounts; unknown fields are refused; every bad field is reported at once),
the views (responses are these models, read from ``admin.records`` values by
attribute) and the OpenAPI document (``admin.declared.openapi_document``).

Text has no control characters (U+0000-U+001F, U+007F-U+009F) and is not blank;
patterns are matched with Python's ``re`` and written in the subset that
ECMA-262, JSON Schema's dialect, reads alike: no ``\\s``, ``\\w`` or ``\\d``.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from admin.access import ACCOUNT_ROLES, OPERATOR_ROLES
from admin.tax_registrations import check_country
from ledger import history_query
from meter import entry_kinds

# Lua numbers are doubles: every amount Redis adds stays far below 2**53.
MAX_LIMIT_MICROS = 10**15  # $1,000,000,000
MAX_CREDIT_MICROS = 10**13  # $10,000,000 in one credit
MAX_NAME_CHARS = 200
MAX_EMAIL_CHARS = 254
MAX_DESCRIPTION_CHARS = 500
MAX_IDEMPOTENCY_KEY_CHARS = 200
MAX_URL_CHARS = 2000
MAX_FIELD_CHARS = 200
CREDIT_KINDS = ("credit", "grant")
ACCOUNT_STATUSES = ("active", "suspended", "pending_deletion", "closed")

CONTROL = r"\x00-\x1f\x7f-\x9f"
# What str.isspace() calls space, less the control characters already refused.
SPACE = r" \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
TEXT_PATTERN = f"^[^{CONTROL}]*[^{CONTROL}{SPACE}][^{CONTROL}]*$"
_EMAIL_PART = f"[^@.{CONTROL}{SPACE}]+"
EMAIL_PATTERN = f"^[^@{CONTROL}{SPACE}]+@{_EMAIL_PART}(\\.{_EMAIL_PART})+$"

MICROS = "Integer micros (1 USD = 1,000,000), written as a JSON integer (5.0 is refused)."


_TEXT = Field(description="No control characters; not blank.")


def _text(max_chars: int) -> StringConstraints:
    return StringConstraints(min_length=1, max_length=max_chars, pattern=TEXT_PATTERN)


Name = Annotated[str, _text(MAX_NAME_CHARS), _TEXT]
Description = Annotated[str, _text(MAX_DESCRIPTION_CHARS), _TEXT]
IdempotencyKey = Annotated[
    str,
    _text(MAX_IDEMPOTENCY_KEY_CHARS),
    Field(description="Unique per account; a retry with it credits nothing more."),
]
Line = Annotated[str, _text(MAX_FIELD_CHARS), _TEXT]
Short = Annotated[str, _text(64), _TEXT]
Micros = Annotated[int, Field(ge=0, le=MAX_LIMIT_MICROS, description=MICROS)]
CreditMicros = Annotated[int, Field(ge=1, le=MAX_CREDIT_MICROS, description=MICROS)]
CountryCode = Annotated[
    str,
    StringConstraints(pattern="^[A-Z]{2}$"),
    AfterValidator(check_country),
    Field(description="ISO 3166-1 alpha-2, an assigned code (pycountry)."),
]
Email = Annotated[
    str,
    StringConstraints(max_length=MAX_EMAIL_CHARS, pattern=EMAIL_PATTERN),
    Field(description="local@domain.tld: no spaces or control characters, @ once."),
]
ProfileText = Annotated[str | None, Field(description="null: none.")]
AccountRole = Literal["owner", "admin", "billing", "viewer"]
OperatorRole = Literal["operator", "operator-readonly"]
assert set(AccountRole.__args__) == set(ACCOUNT_ROLES)  # type: ignore[attr-defined]
assert set(OperatorRole.__args__) == set(OPERATOR_ROLES)  # type: ignore[attr-defined]


class Input(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", regex_engine="python-re")


class Output(BaseModel):
    model_config = ConfigDict(
        extra="forbid", from_attributes=True, json_schema_serialization_defaults_required=True
    )


# -- requests ----------------------------------------------------------------------------


class NoBody(Input):
    """Routes that take no input accept no body or ``{}``."""


class NewAccount(Input):
    name: Name
    billing_email: Email | None = None


class AccountChanges(Input):
    name: Name


class Limits(Input):
    overage_line: Micros
    daily_hard_limit: Micros | None
    daily_notify_threshold: Micros | None
    low_balance_threshold: Micros | None = Field(
        default=None, description=MICROS + " null: none; left out: unchanged."
    )


class NewCredit(Input):
    amount: CreditMicros
    description: Description
    idempotency_key: IdempotencyKey
    kind: Literal["credit", "grant"] = "credit"


class NewProject(Input):
    name: Name


class NewMember(Input):
    email: Email
    name: Name
    role: AccountRole


class MemberChanges(Input):
    role: AccountRole


class NewAccountToken(Input):
    name: Name
    role: AccountRole


class NewOperatorToken(Input):
    name: Name
    role: OperatorRole


class BillingProfileIn(Input):
    legal_name: Line | None = None
    address_line1: Line | None = None
    address_line2: Line | None = None
    city: Line | None = None
    postal_code: Short | None = None
    state: Line | None = Field(default=None, description="State or region.")
    country: CountryCode | None = None
    po_number: Short | None = Field(default=None, description="Purchase-order number.")
    invoice_email: Email | None = Field(
        default=None, description="Where invoices and billing notices go."
    )


class NewTaxId(Input):
    type: Short = Field(description="eu_vat, gb_vat, au_abn, in_gst, us_ein, ca_bn, ...")
    country: CountryCode
    value: Short
    description: Description | None = None


class NewPortalSession(Input):
    member_id: Annotated[str, StringConstraints(max_length=64, pattern="^mem_[0-9A-Za-z]+$")]
    return_url: Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_CHARS)]


# -- responses ---------------------------------------------------------------------------

Status = Literal["active", "suspended", "pending_deletion", "closed"]


class Account(Output):
    id: str = Field(pattern="^acct_[0-9A-Za-z]+$")
    object: Literal["account"] = "account"
    name: str
    billing_email: str | None
    status: Status = Field(validation_alias="public_status")
    balance: int = Field(description=MICROS + " Book of record (Postgres).")
    overage_line: int
    daily_hard_limit: int | None
    daily_notify_threshold: int | None
    low_balance_threshold: int | None
    shard: int = Field(ge=0)
    config_version: int = Field(ge=1)
    deletion_requested_at: datetime | None
    closed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class AccountPage(Output):
    object: Literal["list"] = "list"
    data: list[Account]
    next_cursor: str | None = Field(description="The cursor of the next page; null on the last.")


class Balance(Output):
    object: Literal["balance"] = "balance"
    account_id: str
    status: Literal["active", "suspended"]
    balance: int = Field(description=MICROS + " Live (Redis).")
    overage_line: int
    daily_hard_limit: int | None
    daily_notify_threshold: int | None
    spent_today: int = Field(ge=0, description=MICROS + " Spent this UTC day.")
    limit_remaining: int | None
    available: int = Field(
        ge=0, description=MICROS + " balance + overage line, capped by the limit left today."
    )
    day: date = Field(description="The UTC day counted.")


class Transaction(Output):
    id: str = Field(pattern=entry_kinds.ENTRY_ID_PATTERN)
    description: str
    created_at: datetime
    amount: int = Field(description=MICROS + " Signed.")
    balance_after: int
    kind: Literal["credit", "grant", "recharge", "usage", "refund", "adjustment"]


class TransactionPage(Output):
    data: list[Transaction]
    next_cursor: str | None = Field(pattern=history_query.CURSOR_PATTERN)


class UsageRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    period: str | None = None
    route: str | None = None
    calls: int = Field(ge=0)
    amount: int = Field(description=MICROS + " Charged.")


class Usage(Output):
    data: list[UsageRow]
    today: dict[str, Any]
    yesterday: dict[str, Any]


class Project(Output):
    id: str = Field(pattern="^proj_[0-9A-Za-z]+$")
    object: Literal["project"] = "project"
    account_id: str
    name: str
    created_at: datetime


class ProjectList(Output):
    object: Literal["list"] = "list"
    data: list[Project]


class ApiKey(Output):
    id: str = Field(pattern="^key_[0-9A-Za-z]+$")
    object: Literal["api_key"] = "api_key"
    prefix: str = Field(description="The key's first characters, to recognise it.")
    project_id: str
    account_id: str
    created_at: datetime
    revoked_at: datetime | None


class NewApiKey(ApiKey):
    key: str = Field(
        pattern="^mtr_[0-9A-Za-z]{38}$",
        description="The API key; shown only here, only its SHA-256 is kept.",
    )


class ApiKeyList(Output):
    object: Literal["list"] = "list"
    data: list[ApiKey]


class LedgerEntry(Output):
    id: str = Field(pattern=entry_kinds.ENTRY_ID_PATTERN, validation_alias="credit_id")
    object: Literal["ledger_entry"] = "ledger_entry"
    account_id: str
    amount: int = Field(description=MICROS + " Signed.")
    balance_after: int
    kind: str
    description: str
    idempotency_key: str | None
    created_at: datetime


class Member(Output):
    id: str = Field(pattern="^mem_[0-9A-Za-z]+$")
    object: Literal["member"] = "member"
    account_id: str
    person_id: str
    email: str
    name: str
    role: AccountRole
    created_at: datetime
    updated_at: datetime


class MemberList(Output):
    object: Literal["list"] = "list"
    data: list[Member]


class Token(Output):
    id: str = Field(pattern="^tok_[0-9A-Za-z]+$")
    object: Literal["token"] = "token"
    account_id: str | None = Field(description="null: an operator token.")
    name: str
    role: Literal["operator", "operator-readonly", "owner", "admin", "billing", "viewer"]
    prefix: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class NewToken(Token):
    token: str = Field(description="The bearer token; shown only here, only its SHA-256 is kept.")


class TokenList(Output):
    object: Literal["list"] = "list"
    data: list[Token]


class BillingProfile(Output):
    object: Literal["billing_profile"] = "billing_profile"
    account_id: str
    legal_name: str | None
    address_line1: str | None
    address_line2: str | None
    city: str | None
    postal_code: str | None
    state: str | None
    country: str | None
    po_number: str | None
    invoice_email: str | None
    updated_at: datetime | None


class TaxId(Output):
    id: str = Field(pattern="^txi_[0-9A-Za-z]+$")
    object: Literal["tax_id"] = "tax_id"
    account_id: str
    type: str
    country: str
    value: str
    description: str | None
    status: Literal["unverified", "verified"]
    created_at: datetime
    verified_at: datetime | None


class TaxIdList(Output):
    object: Literal["list"] = "list"
    data: list[TaxId]


class AuditEntry(Output):
    id: str = Field(pattern="^aud_[0-9]+$")
    object: Literal["audit_entry"] = "audit_entry"
    account_id: str | None
    actor_type: str
    actor_id: str
    action: str
    object_type: str
    object_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    client_addr: str | None
    created_at: datetime


class AuditPage(Output):
    object: Literal["list"] = "list"
    data: list[AuditEntry]
    next_cursor: str | None


class PortalSession(Output):
    object: Literal["portal_session"] = "portal_session"
    url: str = Field(description="Redeemable once, until expires_at.")
    expires_at: datetime


class Problem(BaseModel):
    """RFC 9457 problem details (application/problem+json)."""

    type: str = Field(json_schema_extra={"format": "uri"})
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, str]] | None = Field(
        default=None,
        description="invalid-input (a body field) and bad-query (a query parameter):"
        " every field that is wrong, at once.",
    )
