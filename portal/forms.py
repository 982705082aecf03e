"""HTML forms into the admin API's declared models, and their errors beside each field.

A form is read into the same pydantic model the JSON API takes (``admin.models``),
so the portal accepts exactly what the API accepts. Blank fields of optional
values are ``None``; a field's first error is shown beside it in people's words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from admin.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)
Errors = dict[str, str]

_PATTERN_MESSAGES = {
    "email": "Enter an email address like name@example.com.",
    "invoice_email": "Enter an email address like name@example.com.",
    "country": "Choose a country.",
}


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
