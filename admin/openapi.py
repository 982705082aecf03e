"""The OpenAPI 3.1 description of the admin API, served at ``/v1/openapi.json``.

Written by hand next to the handlers it describes; ``tests/test_admin_api.py``
checks that every route the app serves is described here and vice versa. The
input rules (patterns, bounds) are read from the parsers' own declarations
(``admin.validation``, ``ledger.history_query``), and
``tests/test_admin_openapi_conformance.py`` runs schemathesis against the server
to show that it accepts exactly what this document allows.
"""

from __future__ import annotations

import copy
from typing import Any

from admin import validation
from admin.errors import BY_STATUS
from ledger import history_query
from meter import entry_kinds

Schema = dict[str, Any]

MICROS = "Integer micros (1 USD = 1,000,000)."
# JSON Schema 2020-12 counts 5.0 as an integer, and so does the server (admin.validation).
WHOLE = (
    " Any JSON number with a whole value, read exactly: 5, 5.0 and 5e0 are all 5 micros;"
    " 5.5 and 5.000000000000000001 are refused."
)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _micros(
    minimum: int = 0,
    maximum: int = validation.MAX_LIMIT_MICROS,
    *,
    nullable: bool = False,
    given: bool = False,
) -> Schema:
    """Micros; ``given``: in a request, where the note on whole numbers applies."""
    schema: Schema = {
        "type": ["integer", "null"] if nullable else "integer",
        "minimum": minimum,
        "maximum": maximum,
        "description": MICROS + (" null: none." if nullable else "") + (WHOLE if given else ""),
    }
    return schema


def _text(max_length: int) -> Schema:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        "pattern": validation.TEXT_PATTERN,
        "description": "No control characters (U+0000-U+001F, U+007F-U+009F); not blank.",
    }


def _object(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


_TIME = {"type": "string", "format": "date-time"}
_ENTRY_ID = {
    "type": "string",
    "pattern": entry_kinds.ENTRY_ID_PATTERN,
    "description": "The ledger entry: the same id in the credit response and the history.",
}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_API_KEY: dict[str, Schema] = {
    "id": {"type": "string", "pattern": "^key_[0-9A-Za-z]+$"},
    "object": {"const": "api_key"},
    "prefix": {"type": "string", "description": "The key's first characters, to recognise it."},
    "project_id": {"type": "string"},
    "account_id": {"type": "string"},
    "created_at": _TIME,
    "revoked_at": _TIME_OR_NULL,
}

SCHEMAS: dict[str, Schema] = {
    "NewAccount": _object(
        {
            "name": _text(validation.MAX_NAME_CHARS),
            "billing_email": {
                "type": ["string", "null"],
                "maxLength": validation.MAX_EMAIL_CHARS,
                "pattern": validation.EMAIL_PATTERN,
                "description": "local@domain.tld: no spaces or control characters, @ once."
                " null or left out: none.",
            },
        },
        required=["name"],
    ),
    "Account": _object(
        {
            "id": {"type": "string", "pattern": "^acct_[0-9A-Za-z]+$"},
            "object": {"const": "account"},
            "name": {"type": "string"},
            "billing_email": {"type": ["string", "null"]},
            "status": {"enum": ["active", "suspended"]},
            "balance": {"type": "integer", "description": MICROS + " Book of record (Postgres)."},
            "overage_line": _micros(),
            "daily_hard_limit": _micros(nullable=True),
            "daily_notify_threshold": _micros(nullable=True),
            "low_balance_threshold": _micros(nullable=True),
            "shard": {"type": "integer", "minimum": 0},
            "config_version": {"type": "integer", "minimum": 1},
            "created_at": _TIME,
            "updated_at": _TIME,
        }
    ),
    "Limits": _object(
        {
            "overage_line": _micros(given=True),
            "daily_hard_limit": _micros(nullable=True, given=True),
            "daily_notify_threshold": _micros(nullable=True, given=True),
            "low_balance_threshold": _micros(nullable=True, given=True)
            | {"description": MICROS + " null: none; left out: unchanged." + WHOLE},
        },
        required=["overage_line", "daily_hard_limit", "daily_notify_threshold"],
    ),
    "Balance": _object(
        {
            "object": {"const": "balance"},
            "account_id": {"type": "string"},
            "status": {"enum": ["active", "suspended"]},
            "balance": {"type": "integer", "description": MICROS + " Live (Redis)."},
            "overage_line": _micros(),
            "daily_hard_limit": _micros(nullable=True),
            "daily_notify_threshold": _micros(nullable=True),
            "spent_today": _micros() | {"description": MICROS + " Spent this UTC day."},
            "limit_remaining": _micros(nullable=True),
            "available": {
                "type": "integer",
                "minimum": 0,
                "description": MICROS + " balance + overage line, capped by the limit left today.",
            },
            "day": {"type": "string", "format": "date", "description": "The UTC day counted."},
        }
    ),
    "Transaction": _object(
        {
            "id": _ENTRY_ID,
            "description": {"type": "string"},
            "created_at": _TIME,
            "amount": {"type": "integer", "description": MICROS + " Signed."},
            "balance_after": {"type": "integer", "description": MICROS},
            "kind": {"enum": ["credit", "grant", "recharge", "usage", "refund", "adjustment"]},
        }
    ),
    "TransactionPage": _object(
        {
            "data": {"type": "array", "items": _ref("Transaction")},
            "next_cursor": {
                "type": ["string", "null"],
                "pattern": history_query.CURSOR_PATTERN,
                "description": "The cursor of the next page; null on the last.",
            },
        }
    ),
    "UsageRow": {
        "type": "object",
        "properties": {
            "period": {"type": "string"},
            "route": {"type": "string"},
            "calls": {"type": "integer", "minimum": 0},
            "amount": {"type": "integer", "description": MICROS + " Charged."},
        },
        "required": ["calls", "amount"],
    },
    "Usage": _object(
        {
            "data": {"type": "array", "items": _ref("UsageRow")},
            "today": {"type": "object"},
            "yesterday": {"type": "object"},
        }
    ),
    "NewProject": _object({"name": _text(validation.MAX_NAME_CHARS)}),
    "Project": _object(
        {
            "id": {"type": "string", "pattern": "^proj_[0-9A-Za-z]+$"},
            "object": {"const": "project"},
            "account_id": {"type": "string"},
            "name": {"type": "string"},
            "created_at": _TIME,
        }
    ),
    "ApiKey": _object(_API_KEY),
    "NewApiKey": _object(
        {
            **_API_KEY,
            "key": {
                "type": "string",
                "pattern": "^mtr_[0-9A-Za-z]{38}$",
                "description": "The API key; shown only here, only its SHA-256 is kept.",
            },
        }
    ),
    "ApiKeyList": _object(
        {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("ApiKey")}}
    ),
    "NewCredit": _object(
        {
            "amount": _micros(1, validation.MAX_CREDIT_MICROS, given=True),
            "description": _text(validation.MAX_DESCRIPTION_CHARS),
            "idempotency_key": _text(validation.MAX_IDEMPOTENCY_KEY_CHARS)
            | {"description": "Unique per account; a retry with it credits nothing more."},
            "kind": {"enum": list(validation.CREDIT_KINDS), "default": "credit"},
        },
        required=["amount", "description", "idempotency_key"],
    ),
    "LedgerEntry": _object(
        {
            "id": _ENTRY_ID,
            "object": {"const": "ledger_entry"},
            "account_id": {"type": "string"},
            "amount": {"type": "integer", "description": MICROS + " Signed."},
            "balance_after": {"type": "integer", "description": MICROS},
            "kind": {"type": "string"},
            "description": {"type": "string"},
            "idempotency_key": {"type": ["string", "null"]},
            "created_at": _TIME,
        }
    ),
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details (application/problem+json).",
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {
                "type": "array",
                "description": "invalid-input (a body field) and bad-query (a query parameter):"
                " every field that is wrong, at once.",
                "items": _object({"field": {"type": "string"}, "message": {"type": "string"}}),
            },
        },
        "required": ["type", "title", "status", "detail"],
    },
}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problems(*statuses: int) -> dict[str, Schema]:
    out = {}
    for status in (401, *statuses):
        cls = BY_STATUS.get(status)
        out[str(status)] = {
            "description": cls.title if cls else "Error",
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
    return out


def _operation(
    op_id: str,
    summary: str,
    responses: dict[str, Schema],
    *,
    body: str | None = None,
    errors: tuple[int, ...] = (404,),
) -> Schema:
    op: Schema = {
        "operationId": op_id,
        "summary": summary,
        "responses": {**responses, **_problems(*errors)},
    }
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return op


_BODY_ERRORS = (400, 404, 413, 415, 422)
_DATE = {
    "type": "string",
    "format": "date",
    "pattern": history_query.DATE_PATTERN,
    "description": "From 1970-01-01, the ledger's first day, on.",
}
_FROM = "30 days up to to; by month, the 1st of the month 11 months before to's."
# What JSON Schema cannot say of two parameters: refused with 400 bad-query, field "from".
_RANGE_RULES = (
    "from must not be after to (with their defaults), and the range may span at most"
    f" {history_query.MAX_RANGE_DAYS} days (to - from < {history_query.MAX_RANGE_DAYS});"
    " otherwise 400 bad-query naming from. Each parameter is checked first: any malformed"
    " one, an empty one (to=) included, is a 400 listing each in errors."
)
_PENDING = " Header Meter-Live-Sync: pending when Redis will get it from the sync loop."


def _param(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: Schema, description: str = "") -> Schema:
    param: Schema = {"name": name, "in": "query", "required": False, "schema": dict(schema)}
    if description:
        param["description"] = description
    return param


def _public(summary: str, content_type: str = "application/json") -> Schema:
    return {
        "summary": summary,
        "security": [],
        "responses": {"200": {"description": "OK", "content": {content_type: {}}}},
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "meter admin API",
            "version": "1",
            "description": "Provision billing accounts, projects, API keys, limits and credits."
            " Amounts are integer micros (1 USD = 1,000,000). Writes land in Postgres first,"
            " then in the live state the gateway reads (Redis). A request body over the"
            " server's METER_ADMIN_MAX_BODY_BYTES (64 KiB by default) is refused with 413.",
        },
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            # A fresh copy per document: callers may change what they get.
            "schemas": copy.deepcopy(SCHEMAS),
        },
        "paths": {
            "/v1/accounts": {
                "post": _operation(
                    "createAccount",
                    "Create a billing account",
                    {"201": _json(_ref("Account"), "Created." + _PENDING)},
                    body="NewAccount",
                    errors=(400, 413, 415, 422),
                )
            },
            "/v1/accounts/{account_id}": {
                "parameters": [_param("account_id")],
                "get": _operation(
                    "getAccount", "Read an account", {"200": _json(_ref("Account"), "The account.")}
                ),
            },
            "/v1/accounts/{account_id}/limits": {
                "parameters": [_param("account_id")],
                "put": _operation(
                    "setLimits",
                    "Set the overage line, daily hard limit and thresholds",
                    {"200": _json(_ref("Account"), "The account." + _PENDING)},
                    body="Limits",
                    errors=_BODY_ERRORS,
                ),
            },
            "/v1/accounts/{account_id}/suspend": {
                "parameters": [_param("account_id")],
                "post": _operation(
                    "suspendAccount",
                    "Suspend: the gateway answers 403 for the account's keys",
                    {"200": _json(_ref("Account"), "The account." + _PENDING)},
                    errors=_BODY_ERRORS,
                ),
            },
            "/v1/accounts/{account_id}/resume": {
                "parameters": [_param("account_id")],
                "post": _operation(
                    "resumeAccount",
                    "Resume a suspended account",
                    {"200": _json(_ref("Account"), "The account." + _PENDING)},
                    errors=_BODY_ERRORS,
                ),
            },
            "/v1/accounts/{account_id}/balance": {
                "parameters": [_param("account_id")],
                "get": _operation(
                    "getBalance",
                    "The live balance and what is available to spend now",
                    {"200": _json(_ref("Balance"), "Live values from Redis.")},
                    errors=(404, 503),
                ),
            },
            "/v1/accounts/{account_id}/transactions": {
                "parameters": [_param("account_id")],
                "get": {
                    **_operation(
                        "listTransactions",
                        "The balance history, newest first (credits positive, debits negative)",
                        {"200": _json(_ref("TransactionPage"), "One page.")},
                        errors=(400, 404),
                    ),
                    "parameters": [
                        _query(
                            "limit",
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": history_query.MAX_LIMIT,
                                "default": history_query.DEFAULT_LIMIT,
                            },
                        ),
                        _query(
                            "cursor",
                            {"type": "string", "pattern": history_query.CURSOR_PATTERN},
                            "next_cursor of the page before, as it was returned.",
                        ),
                    ],
                },
            },
            "/v1/accounts/{account_id}/usage": {
                "parameters": [_param("account_id")],
                "get": {
                    **_operation(
                        "getUsage",
                        "Calls and amount charged, by day, month or route, with today and"
                        " yesterday (from the ledger: lags the live state by the batch delay)",
                        {"200": _json(_ref("Usage"), "The usage.")},
                        errors=(400, 404),
                    ),
                    "description": _RANGE_RULES,
                    "parameters": [
                        _query("from", _DATE, "The first day counted. Default: " + _FROM),
                        _query("to", _DATE, "The last day counted (inclusive). Default: today."),
                        _query("group_by", {"enum": list(history_query.GROUPS), "default": "day"}),
                    ],
                },
            },
            "/v1/accounts/{account_id}/credits": {
                "parameters": [_param("account_id")],
                "post": _operation(
                    "addCredit",
                    "Add credits, once per idempotency key",
                    {
                        "201": _json(_ref("LedgerEntry"), "Credited." + _PENDING),
                        "200": _json(
                            _ref("LedgerEntry"),
                            "Replay of an earlier request with the same idempotency key: the"
                            " same entry, nothing more credited (Idempotent-Replayed: true).",
                        ),
                    },
                    body="NewCredit",
                    errors=(*_BODY_ERRORS, 409),
                ),
            },
            "/v1/accounts/{account_id}/projects": {
                "parameters": [_param("account_id")],
                "post": _operation(
                    "createProject",
                    "Create a project billed to the account",
                    {"201": _json(_ref("Project"), "Created.")},
                    body="NewProject",
                    errors=_BODY_ERRORS,
                ),
            },
            "/v1/projects/{project_id}/keys": {
                "parameters": [_param("project_id")],
                "post": _operation(
                    "createApiKey",
                    "Create an API key (the key is shown only in this response)",
                    {"201": _json(_ref("NewApiKey"), "Created." + _PENDING)},
                    errors=_BODY_ERRORS,
                ),
                "get": _operation(
                    "listApiKeys",
                    "List the project's API keys (no secrets)",
                    {"200": _json(_ref("ApiKeyList"), "The keys.")},
                ),
            },
            "/v1/keys/{key_id}": {
                "parameters": [_param("key_id")],
                "delete": _operation(
                    "revokeApiKey",
                    "Revoke an API key (idempotent); the gateway refuses it at once",
                    {"200": _json(_ref("ApiKey"), "The revoked key." + _PENDING)},
                ),
            },
            "/healthz": {"get": _public("The process is alive")},
            "/readyz": {"get": _public("Postgres and Redis answer (503 otherwise)")},
            "/metrics": {"get": _public("Prometheus metrics", "text/plain")},
            "/v1/openapi.json": {"get": _public("This document")},
        },
    }
