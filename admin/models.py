"""Every request and response shape of the admin API, declared once as pydantic v2 models.

The declarations are the validation (strict: ``5.0``, ``true`` and ``"5"`` are
not amounts; unknown fields are refused; every bad field is reported at once),
the views (responses are these models, read from ``admin.records`` values by
attribute) and the OpenAPI document (``admin.declared.openapi_document``).

Text has no control characters (U+0000-U+001F, U+007F-U+009F) and is not blank;
patterns are matched with Rust's ``regex`` (pydantic's default: its ``$`` is the
end of the text, as in ECMA-262; Python's ``re`` lets ``$`` match before a final
newline, so ``"name\\n"`` got through) and written in the subset both read
alike: no ``\\s``, ``\\w`` or ``\\d``.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from admin.access import ACCOUNT_ROLES, OPERATOR_ROLES
from admin.tax_registrations import COUNTRY_CODES, TAX_ID_TYPES, check_country
from grants import spending
from ledger import history_query
from meter import entry_kinds
from notifications import endpoint_checks
from notifications.events import EVENT_TYPES

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
# The document lists the codes; admin.profiles refuses any other with 422 (pycountry's list).
CountryCode = Annotated[
    str,
    StringConstraints(pattern="^[A-Z]{2}$"),
    AfterValidator(check_country),
    Field(
        description="ISO 3166-1 alpha-2, an assigned code (pycountry).",
        json_schema_extra={"enum": list(COUNTRY_CODES)},
    ),
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
    model_config = ConfigDict(strict=True, extra="forbid")


GrantKind = Literal["included", "promotional", "purchased"]
assert set(GrantKind.__args__) == set(spending.KINDS)  # type: ignore[attr-defined]
# RFC 3339 with an offset, from the year 2000; the calendar is checked on top (a day the
# month does not have is refused with 422 naming the field).
EXPIRES_AT_PATTERN = (
    "^2[0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]"
    ":[0-5][0-9]([.][0-9]{1,6})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])$"
)


def _calendar_time(value: str) -> str:
    parse_time(value)
    return value


def parse_time(value: str) -> datetime:
    """An ``EXPIRES_AT_PATTERN`` text as an aware datetime (ValueError: no such day)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


ExpiresAt = Annotated[
    str,
    StringConstraints(pattern=EXPIRES_AT_PATTERN),
    AfterValidator(_calendar_time),
    Field(description="RFC 3339 date-time with Z or an offset, e.g. 2027-02-01T00:00:00Z."),
]


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
    grant_kind: GrantKind | None = Field(
        default=None,
        description="What the credit is granted as; left out: purchased for a credit,"
        " promotional for a grant. Usage draws on the grant that expires first.",
    )
    expires_at: ExpiresAt | None = Field(
        default=None,
        description="When what is left of it is removed (a grant_expiry entry); left out:"
        " never. A time already past ends it at the worker's next sweep.",
    )


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
    type: Short = Field(
        description="Stripe's name of the kind of tax id.",
        json_schema_extra={"enum": list(TAX_ID_TYPES)},
    )
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
    kind: Literal[
        "credit",
        "grant",
        "recharge",
        "usage",
        "refund",
        "adjustment",
        "purchase",
        "payment_refund",
        "grant_expiry",
    ]


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


# -- notifications -----------------------------------------------------------------------


def _event_type(value: str) -> str:
    if value not in EVENT_TYPES:
        raise ValueError(f"not an event type: {value!r}")
    return value


EventType = Annotated[
    str,
    AfterValidator(_event_type),
    Field(description="One of the event types.", json_schema_extra={"enum": list(EVENT_TYPES)}),
]


class NotificationSettingsIn(Input):
    invoice_email: Email | None = Field(
        description="Where invoices and billing notices go; null: the account's billing_email."
    )


class NotificationSubscriptionsIn(Input):
    event_types: list[EventType] = Field(
        max_length=100,
        description="The event types the member is emailed about (all of them replace what"
        " was there; a type listed twice counts once; [] for none).",
    )


class MemberSubscriptions(Output):
    object: Literal["notification_subscriptions"] = "notification_subscriptions"
    member_id: str = Field(pattern="^mem_[0-9A-Za-z]+$")
    name: str
    email: str
    role: AccountRole
    event_types: list[str] = Field(description="The types this member is emailed about.")


class NotificationSettings(Output):
    object: Literal["notification_settings"] = "notification_settings"
    account_id: str
    invoice_email: str | None
    billing_email: str | None
    recipient: str | None = Field(
        description="Where billing notices go now: invoice_email, else billing_email."
    )
    members: list[MemberSubscriptions]
    updated_at: datetime | None


# -- payments ----------------------------------------------------------------------------

PAYMENT_ID_PATTERN = "^pay_[0-9A-Za-z]{1,64}$"
PaymentMethodId = Annotated[
    str, StringConstraints(pattern="^pm_[0-9A-Za-z_]{1,100}$"), Field(description="pm_...")
]
WholeCents = Annotated[
    int,
    Field(ge=0, le=MAX_LIMIT_MICROS, multiple_of=10_000, description=MICROS + " Whole cents."),
]


class NewPurchase(Input):
    amount: Annotated[
        int,
        Field(
            ge=10_000,
            le=MAX_CREDIT_MICROS,
            multiple_of=10_000,
            description=MICROS
            + " Whole cents, within the deployment's METER_CREDIT_PURCHASE_MIN and _MAX"
            " ($5 and $5,000 by default): 422 naming amount outside them.",
        ),
    ]
    idempotency_key: IdempotencyKey
    payment_method_id: PaymentMethodId | None = Field(
        default=None,
        description="A card of this account (422 naming payment_method_id otherwise);"
        " left out: the default card (409 no-payment-method when there is none).",
    )
    method: Literal["card", "crypto"] = Field(
        default="card", description="crypto: answers a Stripe Checkout URL to pay at."
    )


class AutoRechargeIn(Input):
    """Exactly one of amount and target_balance; amount within the purchase bounds;
    target_balance above the threshold by at most the purchase maximum;
    max_amount_per_day at least amount. 422 names the field that breaks a rule;
    enabling without a card is 409 no-payment-method."""

    enabled: bool
    threshold: WholeCents = Field(
        description=MICROS + " Recharge when the balance falls below this (it is the account's"
        " low-balance threshold)."
    )
    amount: WholeCents | None = Field(default=None, description="Each recharge adds this.")
    target_balance: WholeCents | None = Field(
        default=None, description="Instead of amount: one charge closes the whole gap to this."
    )
    max_per_day: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        default=None, description="At most this many recharges a UTC day; null: no cap."
    )
    max_amount_per_day: WholeCents | None = Field(
        default=None, description="At most this much recharged a UTC day; null: no cap."
    )


class NewRefund(Input):
    amount: Annotated[int, Field(ge=10_000, le=MAX_CREDIT_MICROS, multiple_of=10_000)] | None = (
        Field(
            default=None,
            description=MICROS + " Whole cents; left out: all that is not refunded yet (409"
            " refund-exceeds-payment for more than is left).",
        )
    )
    force: bool = Field(default=False, description="Refund more than the unspent balance.")
    reason: Description | None = None
    idempotency_key: IdempotencyKey


class PaymentSettingsIn(Input):
    require_payment_method: bool = Field(
        description="The gateway refuses the account's calls (402) until a card is on file."
    )


class SetupCompletion(Input):
    setup_intent_id: Annotated[
        str,
        StringConstraints(pattern="^seti_[0-9A-Za-z_]{1,100}$"),
        Field(description="A SetupIntent of this account, confirmed (422 naming it otherwise)."),
    ]


class NextAction(Output):
    type: Literal["use_stripe_sdk", "redirect_to_url"]
    client_secret: str | None = Field(
        description="For Stripe.js handleCardAction / confirmCardPayment (3-D Secure)."
    )
    url: str | None = Field(description="For redirect_to_url: where the buyer pays (crypto).")


class Payment(Output):
    id: str = Field(pattern=PAYMENT_ID_PATTERN)
    object: Literal["payment"] = "payment"
    account_id: str
    purpose: Literal["purchase", "recharge", "invoice"]
    method: Literal["card", "crypto"]
    amount: int = Field(description=MICROS)
    currency: str
    status: Literal["pending", "requires_action", "succeeded", "failed", "canceled", "refused"]
    payment_method_id: str | None
    card_brand: str | None
    card_last4: str | None
    stripe_reference: str | None = Field(description="The PaymentIntent (pi_) or Checkout (cs_).")
    failure_code: str | None
    failure_message: str | None
    refunded: int = Field(description=MICROS)
    credit_entry_id: str | None = Field(description="The ledger entry that credited it.")
    idempotency_key: str | None
    created_at: datetime
    settled_at: datetime | None
    next_action: NextAction | None = None


class PaymentPage(Output):
    data: list[Payment]
    next_cursor: str | None = Field(pattern=PAYMENT_ID_PATTERN)


class PaymentMethod(Output):
    id: str
    object: Literal["payment_method"] = "payment_method"
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    name: str | None
    is_default: bool
    created_at: datetime


class PaymentMethodList(Output):
    object: Literal["list"] = "list"
    data: list[PaymentMethod]


class SetupIntent(Output):
    id: str
    object: Literal["setup_intent"] = "setup_intent"
    client_secret: str = Field(description="For Stripe.js confirmCardSetup; shown once.")
    publishable_key: str


class AmountThresholdIn(Input):
    amount: CreditMicros = Field(description=MICROS + " Tell when the day's usage reaches this.")


class PercentThresholdIn(Input):
    percent: Annotated[int, Field(ge=1, le=100)] = Field(
        description="Tell when the day's usage reaches this share of the daily budget."
    )


class SpendManagementIn(Input):
    """Switched off, the daily budget is not enforced and no threshold fires, but both
    are kept. A percentage needs a daily budget. Each threshold fires once a UTC day;
    one already passed today does not fire again, a new one below today's spend fires
    at once."""

    enabled: bool
    daily_budget: CreditMicros | None = Field(
        description=MICROS + " The gateway refuses calls (429) once the day's usage reaches"
        " it, until 00:00 UTC; null: none."
    )
    notify_thresholds: list[AmountThresholdIn | PercentThresholdIn] = Field(
        default_factory=list, max_length=10
    )


class NotifyThreshold(Output):
    id: str
    amount: int | None = Field(
        description=MICROS + " What it stands for today; null: a percentage while there is"
        " no budget."
    )
    percent: int | None
    passed_today: bool


class SpendManagement(Output):
    object: Literal["spend_management"] = "spend_management"
    enabled: bool
    daily_budget: int | None
    notify_thresholds: list[NotifyThreshold]
    credits_consumed_today: int = Field(description=MICROS + " Usage of this UTC day so far.")
    credits_consumed_yesterday: int
    day: date = Field(description="The UTC day the figures are of.")


INVOICE_ID_PATTERN = "^inv_[0-9A-Za-z]{1,64}$"


class InvoicePayment(Input):
    payment_method_id: PaymentMethodId | None = Field(
        default=None, description="The card to charge; left out: the default card."
    )
    idempotency_key: IdempotencyKey | None = Field(
        default=None,
        description="Per invoice: a retry with it answers the first payment and charges"
        " nothing more (409 idempotency-key-reused with another card).",
    )


class InvoiceLine(Output):
    kind: Literal["usage", "fee", "carried_forward", "credits_applied"]
    description: str
    route: str | None
    calls: int | None
    amount: int = Field(description=MICROS + " Credits applied are negative.")


class InvoiceParty(Output):
    name: str | None
    email: str | None = None
    address: list[str]
    tax_id: str | None = None
    po_number: str | None = None
    tax_ids: list[dict[str, str]] = Field(default_factory=list)


class Invoice(Output):
    id: str = Field(pattern=INVOICE_ID_PATTERN)
    object: Literal["invoice"] = "invoice"
    account_id: str
    number: str | None = Field(description="Sequential per deployment; null while a draft.")
    status: Literal["draft", "open", "paid", "void", "uncollectible"]
    period_start: date = Field(description="The first day of the period (UTC).")
    period_end: date = Field(description="The first day after the period (UTC).")
    currency: str
    usage: int = Field(description=MICROS + " The usage lines.")
    fee: int = Field(
        description=MICROS + " Plan fees: the next period's, in advance, and this period's"
        " prorations. Paid by the invoice, never from prepaid credits."
    )
    carried_forward: int = Field(
        description=MICROS + " A debt older than the period that no unpaid invoice bills"
        " (a void invoice's, say), billed here in full."
    )
    credits_applied: int = Field(description=MICROS + " The usage prepaid credits covered.")
    amount_due: int = Field(
        description=MICROS + " The overage drawn beyond prepaid credits, plus the fee and"
        " the balance carried forward: usage + fee + carried forward - credits applied."
    )
    amount_paid: int
    lines: list[InvoiceLine]
    seller: InvoiceParty | None
    buyer: InvoiceParty | None = Field(description="Frozen at finalization.")
    created_at: datetime
    finalized_at: datetime | None
    due_at: datetime | None
    paid_at: datetime | None


class UpcomingInvoice(Output):
    object: Literal["upcoming_invoice"] = "upcoming_invoice"
    period_start: date
    period_end: date
    lines: list[InvoiceLine]
    usage: int = Field(description=MICROS + " The period's usage so far.")
    fee: int = Field(
        description=MICROS + " The plan's prorations this period and the next period's fee,"
        " billed in advance."
    )
    carried_forward: int = Field(
        description=MICROS + " A debt older than the period that no unpaid invoice bills."
    )
    credits_applied: int = Field(description=MICROS + " What prepaid credits cover so far.")
    amount_due: int = Field(
        description=MICROS + " The overage drawn so far (whole cents), the fee and the"
        " balance carried forward."
    )


class EstimatedSpend(Output):
    object: Literal["estimated_spend"] = "estimated_spend"
    period_start: date
    period_end: date
    month_to_date: int = Field(description=MICROS + " Usage of the period so far.")
    daily_rate: int = Field(description=MICROS + " The recent average daily usage.")
    days_left: int
    forecast: int = Field(description=MICROS + " The period's expected usage.")
    method: str


class InvoicePage(Output):
    data: list[Invoice]
    next_cursor: str | None = Field(pattern=INVOICE_ID_PATTERN)


class AutoRecharge(Output):
    object: Literal["auto_recharge"] = "auto_recharge"
    enabled: bool
    threshold: int
    amount: int | None
    target_balance: int | None
    max_per_day: int | None
    max_amount_per_day: int | None
    state: Literal["off", "on", "in_flight", "backing_off", "paused"]
    consecutive_failures: int
    retry_at: datetime | None
    paused_at: datetime | None
    pause_reason: str | None
    in_flight: Payment | None
    last_recharge: Payment | None


class Refund(Output):
    id: str = Field(pattern="^rfd_[0-9A-Za-z]{1,64}$")
    object: Literal["refund"] = "refund"
    payment_id: str
    account_id: str
    amount: int
    forced: bool
    reason: str | None
    status: Literal["pending", "succeeded", "failed"]
    stripe_refund: str | None
    failure_message: str | None
    created_at: datetime
    settled_at: datetime | None


class PaymentSettings(Output):
    object: Literal["payment_settings"] = "payment_settings"
    require_payment_method: bool
    has_payment_method: bool
    payments_configured: bool


# -- webhooks ----------------------------------------------------------------------------

WEBHOOK_ENDPOINT_ID_PATTERN = "^we_[0-9A-Za-z]{1,64}$"
DELIVERY_ID_PATTERN = "^dlv_[0-9A-Za-z]{1,64}$"


WebhookUrl = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=endpoint_checks.MAX_URL_CHARS,
        pattern=f"^https?://[^{CONTROL}{SPACE}]+$",
    ),
    Field(
        description="http or https, without credentials. Its host must resolve, when saved"
        " and at every delivery, to a public address (private ones too where the deployment"
        " sets METER_WEBHOOK_ALLOW_PRIVATE; cloud metadata never): 422 naming url otherwise."
    ),
]
EventTypes = Annotated[
    list[EventType],
    Field(max_length=len(EVENT_TYPES), description="The events sent; empty: every event."),
]
WebhookDescription = Annotated[str, _text(endpoint_checks.MAX_DESCRIPTION_CHARS), _TEXT]


class WebhookEndpointIn(Input):
    url: WebhookUrl
    description: WebhookDescription | None = None
    event_types: EventTypes = Field(default_factory=list)
    enabled: bool = True


class WebhookEndpointChanges(Input):
    url: WebhookUrl | None = Field(default=None, description="Left out or null: unchanged.")
    description: WebhookDescription | None = Field(
        default=None, description="null: none; left out: unchanged."
    )
    event_types: EventTypes | None = Field(default=None, description="Left out or null: unchanged.")
    enabled: bool | None = Field(
        default=None,
        description="true clears disabled_reason and failing_since. Left out or null: unchanged.",
    )


class WebhookEndpoint(Output):
    id: str = Field(pattern=WEBHOOK_ENDPOINT_ID_PATTERN)
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    account_id: str
    url: str
    description: str | None
    event_types: list[str] = Field(description="empty: every event.")
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None = Field(description="Every delivery failed since then.")
    secret_prefix: str = Field(description="The signing secret's first characters.")
    rotating_until: datetime | None = Field(
        description="The secret rotated out still signs beside the new one until then."
    )
    created_at: datetime
    updated_at: datetime


class WebhookEndpointSecret(WebhookEndpoint):
    secret: str = Field(
        pattern="^whsec_[A-Za-z0-9+/]{43}=$",
        description="The signing secret (standardwebhooks' whsec_ form); shown only here.",
    )


class WebhookEndpointList(Output):
    object: Literal["list"] = "list"
    data: list[WebhookEndpoint]


class DeliveryAttempt(Output):
    attempt: int = Field(ge=1)
    started_at: datetime
    status_code: int | None = Field(description="null: no answer (refused, unreachable...).")
    latency_ms: float
    ok: bool
    error: str | None
    excerpt: str = Field(description="The answer's first bytes.")


class WebhookDelivery(Output):
    id: str = Field(pattern=DELIVERY_ID_PATTERN)
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event_id: str = Field(description="The webhook-id header: the same on every try.")
    event_type: str
    endpoint_id: str
    status: Literal["pending", "succeeded", "failed", "canceled"]
    attempts: int = Field(ge=0, description="Tries made.")
    next_attempt_at: datetime = Field(description="When a pending delivery is tried next.")
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None
    attempt_log: list[DeliveryAttempt] = Field(description="Every try, oldest first.")


class WebhookDeliveryPage(Output):
    object: Literal["list"] = "list"
    data: list[WebhookDelivery]
    next_cursor: str | None = Field(pattern=DELIVERY_ID_PATTERN)


GRANT_ID_PATTERN = "^grt_[0-9]+$"


class Grant(Output):
    id: str = Field(pattern=GRANT_ID_PATTERN)
    object: Literal["credit_grant"] = "credit_grant"
    account_id: str
    kind: Literal["included", "promotional", "purchased", "refund"] = Field(
        description="refund: usage refunded after the grant it had drawn on expired."
    )
    status: Literal["live", "expired"]
    amount: int = Field(description=MICROS + " Granted.")
    remaining: int = Field(description=MICROS + " Left to spend (0 once expired).")
    expires_at: datetime | None = Field(description="null: never.")
    created_at: datetime
    ended_at: datetime | None = Field(description="When the expiry sweep removed what was left.")
    expired_amount: int | None = Field(description=MICROS + " What its expiry removed.")
    ledger_entry_id: str | None = Field(
        pattern=entry_kinds.ENTRY_ID_PATTERN,
        description="The credit that made it (null: the balance carried over at migration).",
    )
    expiry_entry_id: str | None = Field(pattern=entry_kinds.ENTRY_ID_PATTERN)


class GrantPage(Output):
    data: list[Grant]
    next_cursor: str | None = Field(pattern=GRANT_ID_PATTERN)
    live_remaining: int = Field(
        description=MICROS + " What the live grants hold: the balance when it is not below 0."
    )


# -- plans and subscriptions ----------------------------------------------------------------

PLAN_ID_PATTERN = "^plan_[0-9A-Za-z]{1,64}$"
PlanId = Annotated[str, StringConstraints(pattern=PLAN_ID_PATTERN)]


ROUTE_NAME_PATTERN = "^[A-Za-z0-9_.:-]{1,64}$"
UNIT_KIND_PATTERN = "^[a-z][a-z0-9_]{0,31}$"
RouteName = Annotated[str, StringConstraints(pattern=ROUTE_NAME_PATTERN)]
UnitKind = Annotated[str, StringConstraints(pattern=UNIT_KIND_PATTERN)]
PRICES_RULE = (
    "The plan's own prices of some of the deployment's routes (its price table's names;"
    " `default` for calls no route matches), in place of the table's: `price` for a"
    " fixed-price route, `max_price` (the reserve) and `units` (micros per unit of each"
    " kind) for a variable-cost one, a field left out keeping the table's. Which route a"
    " call is, and where its units are read, stay the table's. A route or kind the table"
    " does not have, or a field of the other sort of route, is refused with 422 naming"
    " `prices`. null: the deployment's prices."
)


class RoutePrice(Input):
    price: Micros | None = Field(default=None, description="A fixed-price route's price.")
    max_price: Micros | None = Field(
        default=None, description="A variable-cost route's reserve, and its cost's cap."
    )
    units: dict[UnitKind, Micros] | None = Field(
        default=None, description="A variable-cost route's price per unit, by kind.", max_length=8
    )

    def spec(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class RoutePriceOut(Output):
    price: int | None = Field(default=None, description=MICROS + " A fixed-price route's.")
    max_price: int | None = Field(default=None, description=MICROS + " The reserve.")
    units: dict[str, int] | None = Field(default=None, description=MICROS + " Per unit.")


class PlanIn(Input):
    """A plan's prices never change once made (make a new plan); it may stop being
    offered."""

    name: Annotated[str, _text(100), _TEXT]
    description: Annotated[str, StringConstraints(max_length=500), _TEXT] = ""
    monthly_fee: WholeCents = Field(description="Billed in advance on each period's invoice.")
    included_credits: Micros = Field(
        default=0,
        description=MICROS + " Granted at the start of each period, expiring at its end;"
        " spent before purchased credits.",
    )
    daily_budget: CreditMicros | None = Field(
        default=None, description="Set on the account when the plan starts; null: left alone."
    )
    overage_line: Micros | None = Field(
        default=None, description="Set on the account when the plan starts; null: left alone."
    )
    prices: dict[RouteName, RoutePrice] | None = Field(
        default=None, description=PRICES_RULE, min_length=1, max_length=64
    )


class PlanPatch(Input):
    active: bool = Field(description="Offered to new subscribers.")


class Plan(Output):
    id: str = Field(pattern=PLAN_ID_PATTERN)
    object: Literal["plan"] = "plan"
    name: str
    description: str
    monthly_fee: int
    included_credits: int
    daily_budget: int | None
    overage_line: int | None
    active: bool
    prices: dict[str, RoutePriceOut] | None = Field(
        description="Its own prices of the deployment's routes, as fitted to the price"
        " table; null: the deployment's."
    )


class PlanList(Output):
    data: list[Plan]


class SubscriptionIn(Input):
    """Subscribing starts at once, the rest of the period prorated. A move to a plan
    costing at least as much takes effect at once (the difference prorated, the extra
    included credits granted); a move to a cheaper plan at the next period. Naming the
    current plan keeps it (and drops a pending change)."""

    plan_id: PlanId
    cancel_at_period_end: bool = Field(
        default=False, description="Ends the subscription when the period ends."
    )
    effective: Literal["now", "next_period"] | None = Field(
        default=None,
        description="When a change takes effect; null: now for an upgrade, the next period"
        " for a downgrade. A downgrade asked for now is refused (409).",
    )


class Subscription(Output):
    object: Literal["subscription"] = "subscription"
    account_id: str
    plan: Plan
    status: Literal["active", "canceled"]
    started_at: datetime
    current_period_start: date
    current_period_end: date
    next_plan: Plan | None = Field(description="Takes effect when the next period starts.")
    cancel_at_period_end: bool
    canceled_at: datetime | None
