"""Request bodies in, typed values out: pure parsing, no I/O.

Each parser takes the decoded JSON document and either returns a frozen value
or raises ``InvalidInput`` listing every field that is wrong, so a client
fixes its request in one round. Unknown fields are refused (a misspelt
``daily_hard_limt`` must not silently leave the limit unchanged).

Each rule is declared once here and read by both this module and the OpenAPI
document (``admin.openapi``), so what the document calls valid is exactly what
the server accepts:

- Amounts are integers the way JSON Schema 2020-12 counts them: any JSON number
  whose value is a whole number, so ``5``, ``5.0`` and ``5e0`` are all 5 micros.
  The value is read exactly from the number's text (``5.000000000000000001`` is
  not 5, though a double would round it to 5.0); ``true`` and ``"5"`` are not
  amounts.
- Text has no control characters (Unicode ``Cc``: U+0000-U+001F, U+007F-U+009F)
  and is not blank (at least one character that is not a space): ``TEXT_PATTERN``.
- A billing email is ``local@domain.tld`` with no spaces, ``@`` once: ``EMAIL_PATTERN``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from admin.errors import BadRequest, InvalidInput, UnsupportedMediaType

# Lua numbers are doubles: every amount Redis adds stays far below 2**53.
MAX_LIMIT_MICROS = 10**15  # $1,000,000,000
MAX_CREDIT_MICROS = 10**13  # $10,000,000 in one credit
MAX_NAME_CHARS = 200
MAX_EMAIL_CHARS = 254
MAX_DESCRIPTION_CHARS = 500
MAX_IDEMPOTENCY_KEY_CHARS = 200
CREDIT_KINDS = ("credit", "grant")

# Regular expressions in the subset that ECMA-262 (JSON Schema's dialect) and Python's
# ``re`` read alike: explicit character classes, no ``\s``, ``\w`` or ``\d``, whose
# meanings differ between the two. Matched whole (``re.fullmatch``, ``^...$``).
CONTROL = r"\x00-\x1f\x7f-\x9f"
# What str.isspace() calls space, less the control characters already refused.
SPACE = r" \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
TEXT_PATTERN = f"^[^{CONTROL}]*[^{CONTROL}{SPACE}][^{CONTROL}]*$"
_EMAIL_PART = f"[^@.{CONTROL}{SPACE}]+"
EMAIL_PATTERN = f"^[^@{CONTROL}{SPACE}]+@{_EMAIL_PART}(\\.{_EMAIL_PART})+$"
_CONTROL_CHAR = re.compile(f"[{CONTROL}]")
_TEXT = re.compile(TEXT_PATTERN)
_EMAIL = re.compile(EMAIL_PATTERN)

_UNSET: Any = object()


def json_object(body: bytes, content_type: str, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object; ``{}`` for an empty optional body."""
    if not body.strip():
        if required:
            raise BadRequest("a JSON object body is required")
        return {}
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"content type {content_type!r} is not application/json")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    if any(isinstance(value, float) for value in doc.values()):
        # orjson has read the numbers with a fraction or exponent as doubles, which
        # round; read them again exactly. orjson accepted the document, so it is strict
        # JSON (UTF-8, no NaN, no lone surrogates) and both parsers see the same values.
        # Only top-level values can be amounts: a float nested deeper is refused whatever
        # its value, as is a value nested past the stdlib parser's recursion limit.
        try:
            exact: dict[str, Any] = json.loads(body.decode(), parse_float=_exact_number)
        except RecursionError:
            raise BadRequest("the JSON is nested too deeply") from None
        return exact
    return doc


def _exact_number(text: str) -> Decimal | float:
    try:
        return Decimal(text)
    except InvalidOperation:  # an exponent past Decimal's: a tiny fraction, not a whole number
        return float(text)


def whole_number(value: Any) -> int | Decimal | None:
    """A JSON number whose value is a whole number (``5``, ``5.0``, ``5e0``), else None.

    Returned as read: a ``Decimal`` stays one until its range is checked, so ``1e999999``
    is refused without building a million-digit int.
    """
    if type(value) is int:  # bool is a subclass of int in Python; JSON true is not a number
        return value
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return value
    if isinstance(value, float) and value.is_integer():  # not from json_object: exact as is
        return Decimal(value)
    return None


class _Fields:
    """Reads fields of one document, collecting every problem before raising once."""

    def __init__(self, doc: dict[str, Any], allowed: tuple[str, ...]) -> None:
        self.doc = doc
        self.errors: list[tuple[str, str]] = [
            (name, "unknown field") for name in doc if name not in allowed
        ]

    def raw(self, name: str, required: bool) -> Any:
        if name not in self.doc:
            if required:
                self.errors.append((name, "required"))
            return _UNSET
        return self.doc[name]

    def text(self, name: str, *, max_chars: int) -> Any:
        value = self.raw(name, required=True)
        if value is _UNSET:
            return value
        if not isinstance(value, str):
            self.errors.append((name, "must be a string"))
        elif len(value) > max_chars:
            self.errors.append((name, f"must be at most {max_chars} characters"))
        elif _CONTROL_CHAR.search(value):
            self.errors.append((name, "must not contain control characters"))
        elif not _TEXT.fullmatch(value):
            self.errors.append((name, "must not be blank"))
        return value

    def integer(
        self, name: str, *, lo: int, hi: int, required: bool = True, nullable: bool = False
    ) -> Any:
        value = self.raw(name, required)
        if value is _UNSET or (value is None and nullable):
            return value
        number = whole_number(value)
        if number is None:
            self.errors.append((name, "must be an integer" + (" or null" if nullable else "")))
        elif not lo <= number <= hi:
            self.errors.append((name, f"must be between {lo} and {hi}"))
        else:
            return int(number)
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.raw(name, required=False)
        if value is _UNSET:
            return default
        if not isinstance(value, str) or value not in options:
            self.errors.append((name, f"must be one of {', '.join(options)}"))
        return value  # type: ignore[no-any-return]

    def done(self) -> None:
        if self.errors:
            raise InvalidInput(self.errors)


def _email(fields: _Fields, name: str) -> Any:
    value = fields.raw(name, required=False)
    if value is _UNSET or value is None:
        return value
    if not isinstance(value, str):
        fields.errors.append((name, "must be a string or null"))
    elif len(value) > MAX_EMAIL_CHARS:
        fields.errors.append((name, f"must be at most {MAX_EMAIL_CHARS} characters"))
    elif not _EMAIL.fullmatch(value):  # blank too: an optional field is left out or null
        fields.errors.append((name, "must be an email address"))
    return value


@dataclass(frozen=True, slots=True)
class NewAccount:
    name: str
    billing_email: str | None


@dataclass(frozen=True, slots=True)
class NewProject:
    name: str


@dataclass(frozen=True, slots=True)
class Limits:
    overage_line: int
    daily_hard_limit: int | None
    daily_notify_threshold: int | None
    low_balance_threshold: int | None  # None: no threshold
    low_balance_threshold_given: bool  # False: the request left it out; keep the current one


@dataclass(frozen=True, slots=True)
class Credit:
    amount: int
    description: str
    idempotency_key: str
    kind: str


def new_account(doc: dict[str, Any]) -> NewAccount:
    f = _Fields(doc, ("name", "billing_email"))
    name = f.text("name", max_chars=MAX_NAME_CHARS)
    email = _email(f, "billing_email")
    f.done()
    return NewAccount(name=name, billing_email=None if email is _UNSET else email)


def new_project(doc: dict[str, Any]) -> NewProject:
    f = _Fields(doc, ("name",))
    name = f.text("name", max_chars=MAX_NAME_CHARS)
    f.done()
    return NewProject(name=name)


def no_fields(doc: dict[str, Any]) -> None:
    """Routes that take no input accept no body or ``{}``."""
    _Fields(doc, ()).done()


def limits(doc: dict[str, Any]) -> Limits:
    f = _Fields(
        doc, ("overage_line", "daily_hard_limit", "daily_notify_threshold", "low_balance_threshold")
    )
    overage = f.integer("overage_line", lo=0, hi=MAX_LIMIT_MICROS)
    hard = f.integer("daily_hard_limit", lo=0, hi=MAX_LIMIT_MICROS, nullable=True)
    notify = f.integer("daily_notify_threshold", lo=0, hi=MAX_LIMIT_MICROS, nullable=True)
    low = f.integer(
        "low_balance_threshold", lo=0, hi=MAX_LIMIT_MICROS, nullable=True, required=False
    )
    f.done()
    return Limits(
        overage_line=overage,
        daily_hard_limit=hard,
        daily_notify_threshold=notify,
        low_balance_threshold=None if low is _UNSET else low,
        low_balance_threshold_given=low is not _UNSET,
    )


def credit(doc: dict[str, Any]) -> Credit:
    f = _Fields(doc, ("amount", "description", "idempotency_key", "kind"))
    amount = f.integer("amount", lo=1, hi=MAX_CREDIT_MICROS)
    description = f.text("description", max_chars=MAX_DESCRIPTION_CHARS)
    key = f.text("idempotency_key", max_chars=MAX_IDEMPOTENCY_KEY_CHARS)
    kind = f.choice("kind", CREDIT_KINDS, default="credit")
    f.done()
    return Credit(amount=amount, description=description, idempotency_key=key, kind=kind)
