"""HTML forms into the admin API's declared models, and their errors beside each field.

A form is read into the same pydantic model the JSON API takes (``admin.models``),
so the portal accepts exactly what the API accepts. Blank fields of optional
values are ``None``; a field's first error is shown beside it in people's words.
Amounts people type in dollars become micros exactly (``dollars``: integer digits,
never float), or an error; whole cents only, as Stripe charges.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from admin.errors import InvalidInput
from meter.money import MICROS_PER_CENT, MICROS_PER_USD

M = TypeVar("M", bound=BaseModel)
Errors = dict[str, str]

_PATTERN_MESSAGES = {
    "email": "Enter an email address like name@example.com.",
    "invoice_email": "Enter an email address like name@example.com.",
    "country": "Choose a country.",
    "url": "Enter a URL that starts with https:// (or http://), without spaces.",
}


# "5", "5.5", "5.00", "1,000.50", "$1000": digits with optional thousands commas (in
# threes), at most two decimal places. Anything else (a sign, "1e3", "5.001", another
# script's digits: re.ASCII) is refused. At most fifteen digits of dollars (past any
# bound), so int() stays cheap.
_DOLLARS = re.compile(
    r"\$?(?P<whole>\d{1,3}(?:,\d{3}){1,4}|\d{1,15})(?:\.(?P<cents>\d{1,2}))?", re.ASCII
)
_SUB_CENT = re.compile(r"\$?[\d,]+\.\d{3,}", re.ASCII)
NOT_DOLLARS = "Enter an amount in dollars and cents, like 25 or 25.00."
SUB_CENT = "Enter whole cents: at most two digits after the point."


def dollars(raw: str) -> int | str:
    """The micros of an amount typed in dollars, or why it is not one (a message)."""
    text = raw.strip()
    if not text:
        return "Required."
    found = _DOLLARS.fullmatch(text)
    if found is None:
        return SUB_CENT if _SUB_CENT.fullmatch(text) else NOT_DOLLARS
    # Integer arithmetic on the digits: exact at any length, no float or Decimal context.
    cents = int((found["cents"] or "0").ljust(2, "0"))
    return int(found["whole"].replace(",", "")) * MICROS_PER_USD + cents * MICROS_PER_CENT


def _message(field: str, error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing" or kind == "string_too_short":
        return "Required."
    if kind == "string_pattern_mismatch":
        return _PATTERN_MESSAGES.get(field, "Enter some text, without control characters.")
    if kind == "literal_error":
        return "Choose one of the options."
    if kind == "string_too_long":
        return f"At most {error.get('ctx', {}).get('max_length', 'so many')} characters."
    return str(error["msg"])


def parse(
    model: type[M], fields: Mapping[str, str], names: Iterable[str], *, optional: bool = False
) -> tuple[M | None, Errors]:
    """The model of the named ``fields``, or the errors by field. ``optional``: blank is None."""
    values: dict[str, Any] = {}
    for name in names:
        raw = fields.get(name, "").strip()
        if raw or not optional:
            values[name] = raw
        else:
            values[name] = None
    return validated(model, values)


def validated(model: type[M], values: Mapping[str, Any]) -> tuple[M | None, Errors]:
    """``values`` (a form's, already shaped: lists for checkboxes, None for blanks) as
    the model, or the errors by field."""
    try:
        return model.model_validate(values), {}
    except ValidationError as exc:
        errors: Errors = {}
        for e in exc.errors():
            field = str(e["loc"][0]) if e["loc"] else "form"
            errors.setdefault(field, _message(field, e))
        return None, errors


def service_errors(exc: InvalidInput) -> Errors:
    """The service layer's field errors (tax id checks, the country) by field."""
    errors: Errors = {}
    for field, message in exc.errors:
        errors.setdefault(field, message)
    return errors
