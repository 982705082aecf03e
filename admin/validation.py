"""Request bodies in, typed values out: pure parsing, no I/O.

Each parser takes the decoded JSON document and either returns a frozen value
or raises ``InvalidInput`` listing every field that is wrong, so a client
fixes its request in one round. Unknown fields are refused (a misspelt
``daily_hard_limt`` must not silently leave the limit unchanged). Integers
are JSON integers: ``true``, ``5.0`` and ``"5"`` are not amounts.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    return doc


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

    def text(
        self, name: str, *, max_chars: int, required: bool = True, nullable: bool = False
    ) -> Any:
        value = self.raw(name, required)
        if value is _UNSET or (value is None and nullable):
            return value
        if not isinstance(value, str):
            self.errors.append((name, "must be a string" + (" or null" if nullable else "")))
        elif not value.strip():
            self.errors.append((name, "must not be blank"))
        elif len(value) > max_chars:
            self.errors.append((name, f"must be at most {max_chars} characters"))
        elif any(ord(c) < 32 or ord(c) == 127 for c in value):
            self.errors.append((name, "must not contain control characters"))
        return value

    def integer(
        self, name: str, *, lo: int, hi: int, required: bool = True, nullable: bool = False
    ) -> Any:
        value = self.raw(name, required)
        if value is _UNSET or (value is None and nullable):
            return value
        # bool is a subclass of int in Python; JSON true is not an amount.
        if type(value) is not int:
            self.errors.append((name, "must be an integer" + (" or null" if nullable else "")))
        elif not lo <= value <= hi:
            self.errors.append((name, f"must be between {lo} and {hi}"))
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
    value = fields.text(name, max_chars=MAX_EMAIL_CHARS, required=False, nullable=True)
    if isinstance(value, str) and value.strip():
        local, at, domain = value.partition("@")
        spaced = any(c.isspace() for c in value)
        if not at or not local or "." not in domain or "@" in domain or spaced:
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
