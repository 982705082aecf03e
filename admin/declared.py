"""The admin API's operations, declared once: route, permission, body and answers.

Each ``Operation`` names its permission and the path parameter whose account
decides (``scope``); ``dispatch`` resolves that account, calls
``access.require``/``require_on`` (the one check), parses the body into the
declared model and renders the handler's model. ``openapi_document`` is built
from the same declarations, so what is documented is what is served.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from admin import access, ids, models
from admin.access import Permission, Principal
from admin.audit import Actor
from admin.context import ACTOR, PRINCIPAL, SERVICES
from admin.errors import BY_STATUS, BadRequest, InvalidInput, NotFound, UnsupportedMediaType
from admin.services import Services

JSON = "application/json"
B = TypeVar("B", bound=BaseModel)
# Set on a write whose Redis step was left to the sync loop.
LIVE_SYNC_HEADER = "Meter-Live-Sync"
# The documentation of that header, on every write that may carry it.
PENDING = f" Header {LIVE_SYNC_HEADER}: pending when Redis will get it from the sync loop."
NO_STORE = {"Cache-Control": "no-store"}  # a secret must not linger in caches or proxies
_REQUEST_ID = re.compile(r"[0-9A-Za-z._:-]{1,100}")


@dataclass(frozen=True, slots=True)
class Scope:
    """How a path parameter names an object, and which account it belongs to."""

    prefix: str
    noun: str
    owner: Callable[[Services, str], Awaitable[str | None]] | None  # None: the id is the account


async def _project_owner(s: Services, project_id: str) -> str | None:
    return await s.provisioning.owner_of("projects", project_id)


async def _key_owner(s: Services, key_id: str) -> str | None:
    return await s.provisioning.owner_of("api_keys", key_id)


async def _token_owner(s: Services, token_id: str) -> str | None:
    return await s.provisioning.owner_of("api_tokens", token_id)


async def _payment_owner(s: Services, payment_id: str) -> str | None:
    return await s.provisioning.owner_of("payments", payment_id)


async def _invoice_owner(s: Services, invoice_id: str) -> str | None:
    return await s.provisioning.owner_of("invoices", invoice_id)


SCOPES: dict[str, Scope] = {
    "account_id": Scope(ids.ACCOUNT, "account", None),
    "project_id": Scope(ids.PROJECT, "project", _project_owner),
    "key_id": Scope(ids.API_KEY, "API key", _key_owner),
    "token_id": Scope(ids.TOKEN, "token", _token_owner),
    "payment_id": Scope(ids.PAYMENT, "payment", _payment_owner),
    "invoice_id": Scope(ids.INVOICE, "invoice", _invoice_owner),
}


@dataclass(slots=True)
class Call(Generic[B]):
    request: web.Request
    services: Services
    actor: Actor
    account_id: str | None  # the scope's account, already authorised
    body: B

    def path(self, name: str, prefix: str, noun: str) -> str:
        """A path id; one that cannot exist is simply not found (no query)."""
        value = self.request.match_info[name]
        if not ids.well_formed(value, prefix):
            raise_not_found(noun, value)
        return value

    @property
    def account(self) -> str:
        assert self.account_id is not None
        return self.account_id

    @property
    def if_match(self) -> str | None:
        return self.request.headers.get("If-Match")


@dataclass(slots=True)
class Reply:
    body: BaseModel | Mapping[str, Any] | bytes  # bytes: a document of ``content_type``
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    live: bool = True  # False: committed, Redis left to the sync loop
    content_type: str = JSON


@dataclass(frozen=True, slots=True)
class Document:
    """An answer that is not JSON (an invoice's PDF): documented as a binary string of
    its media type, in place of a model."""

    media_type: str


Handler = Callable[[Call[Any]], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    op_id: str
    summary: str
    handler: Handler
    permission: Permission
    scope: str | None  # the path parameter whose account decides; None: over every account
    responses: Mapping[int, tuple[type[BaseModel] | Document, str]]
    body: type[BaseModel] | None = None  # None: no body, or {} (models.NoBody)
    errors: tuple[int, ...] = ()
    parameters: tuple[Mapping[str, Any], ...] = ()
    description: str = ""
    etag: bool = False  # reads answer an ETag; writes honour If-Match (412 when stale)
    any_principal: bool = False  # scope None, yet account principals may call it too

    @property
    def writes(self) -> bool:
        return self.method != "GET"


def live_kind(op: Operation) -> str:
    """What a deferred write was, for the metric: the kind of row the sync loop will apply."""
    model = next(iter(op.responses.values()))[0]
    kinds: dict[object, str] = {
        models.LedgerEntry: "credit",
        models.NewApiKey: "key",
        models.ApiKey: "key",
    }
    return kinds.get(model, "account")


def raise_not_found(noun: str, value: str) -> None:
    raise NotFound(f"no {noun} {value!r}")


async def authorise(
    services: Services, principal: Principal, op: Operation, request: web.Request
) -> str | None:
    """The account the call acts on, once ``principal`` may do ``op`` there."""
    if op.scope is None:
        if op.any_principal:
            access.require_held(principal, op.permission)
        else:
            access.require(principal, op.permission)
        return None
    scope = SCOPES[op.scope]
    value = request.match_info[op.scope]
    not_found = f"no {scope.noun} {value!r}"
    if not ids.well_formed(value, scope.prefix):
        owner: str | None = None  # cannot exist: no query
    elif scope.owner is None:
        owner = value  # the account itself; a missing one is the handler's 404
    else:
        owner = await scope.owner(services, value)
    access.require_on(principal, op.permission, owner, not_found)
    return owner


def parse_body(model: type[B], body: bytes, content_type: str) -> B:
    if not body.strip():
        if model is not models.NoBody:
            raise BadRequest("a JSON object body is required")
        body = b"{}"
    elif content_type != JSON and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"content type {content_type!r} is not application/json")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> BadRequest | InvalidInput:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    for e in errors:
        if e["type"] == "json_invalid":
            return BadRequest(f"malformed JSON: {e['msg']}")
        if not e["loc"]:
            return BadRequest("the body must be a JSON object")
    return InvalidInput([(_field(e["loc"]), _message(e)) for e in errors])


def _field(loc: tuple[int | str, ...]) -> str:
    # Every input field is top-level and optional ones are nullable, not unions, so the
    # first part of the location is the field the client sent.
    return str(loc[0])


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required"
    return str(error["msg"])


def request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)


def render(reply: Reply) -> web.Response:
    body = reply.body
    if isinstance(body, bytes):
        data = body
    elif isinstance(body, BaseModel):
        data = body.model_dump_json().encode()
    else:
        data = orjson.dumps(body)
    return web.Response(
        body=data, status=reply.status, content_type=reply.content_type, headers=reply.headers
    )


def handler_of(
    op: Operation, on_deferred: Callable[[str], None]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    body_model = op.body or models.NoBody

    async def handle(request: web.Request) -> web.Response:
        services = request.app[SERVICES]
        principal = request[PRINCIPAL]
        account_id = await authorise(services, principal, op, request)
        raw = await request.read() if op.writes else b""
        body = parse_body(body_model, raw, request.content_type) if op.writes else models.NoBody()
        call: Call[Any] = Call(request, services, request[ACTOR], account_id, body)
        reply = await op.handler(call)
        if not reply.live:
            on_deferred(live_kind(op))
            reply.headers[LIVE_SYNC_HEADER] = "pending"
        return render(reply)

    return handle


def route_defs(
    operations: Iterable[Operation], on_deferred: Callable[[str], None]
) -> list[web.RouteDef]:
    return [
        web.route(
            op.method,
            op.path,
            handler_of(op, on_deferred),
            **({"allow_head": False} if op.method == "GET" else {}),
        )
        for op in operations
    ]


# -- the OpenAPI document ---------------------------------------------------------------


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _content(answer: type[BaseModel] | Document) -> dict[str, Any]:
    if isinstance(answer, Document):
        return {answer.media_type: {"schema": {"type": "string", "format": "binary"}}}
    return {JSON: {"schema": _ref(answer)}}


def _problems(statuses: Iterable[int]) -> dict[str, Any]:
    out = {}
    for status in sorted(set(statuses)):
        cls = BY_STATUS.get(status)
        out[str(status)] = {
            "description": cls.title if cls else "Error",
            "content": {"application/problem+json": {"schema": _ref(models.Problem)}},
        }
    return out


BODY_ERRORS = (400, 413, 415, 422)


def _operation_doc(op: Operation) -> dict[str, Any]:
    errors = {401, 403, *op.errors}
    if op.scope is not None:
        errors.add(404)
    if op.writes:
        errors.update(BODY_ERRORS)
    if op.etag and op.writes:
        errors.add(412)
    doc: dict[str, Any] = {
        "operationId": op.op_id,
        "summary": op.summary,
        "x-permission": str(op.permission),
        **({"x-any-principal": True} if op.any_principal else {}),
        "responses": {
            **{
                str(s): {"description": d, "content": _content(m)}
                for s, (m, d) in op.responses.items()
            },
            **_problems(errors),
        },
    }
    if op.description:
        doc["description"] = op.description
    params = [dict(p) for p in op.parameters]
    if op.etag and op.writes:
        params.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "The ETag of the read this write is based on; 412 if stale.",
            }
        )
    if params:
        doc["parameters"] = params
    if op.writes:
        body = op.body or models.NoBody
        doc["requestBody"] = {
            "required": op.body is not None,
            "content": {JSON: {"schema": _ref(body)}},
        }
    return doc


def _public(summary: str, content_type: str = JSON) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [],
        "responses": {"200": {"description": "OK", "content": {content_type: {}}}},
    }


PUBLIC = {
    "/healthz": {"get": _public("The process is alive")},
    "/readyz": {"get": _public("Postgres and Redis answer (503 otherwise)")},
    "/metrics": {"get": _public("Prometheus metrics", "text/plain")},
    "/v1/openapi.json": {"get": _public("This document")},
}


def openapi_document(operations: Iterable[Operation], info: Mapping[str, Any]) -> dict[str, Any]:
    ops = list(operations)
    used: set[type[BaseModel]] = {models.Problem}
    for op in ops:
        used.update(m for m, _ in op.responses.values() if not isinstance(m, Document))
        if op.writes:
            used.add(op.body or models.NoBody)
    _, schemas = models_json_schema(
        [
            (m, "validation" if issubclass(m, models.Input) else "serialization")
            for m in sorted(used, key=lambda m: m.__name__)
        ],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, Any] = {}
    for op in ops:
        entry = paths.setdefault(op.path, {})
        names = re.findall(r"{(\w+)}", op.path)
        entry["parameters"] = [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
        ]
        entry[op.method.lower()] = _operation_doc(op)
    for entry in paths.values():
        if not entry["parameters"]:
            del entry["parameters"]
    paths.update(PUBLIC)
    return {
        "openapi": "3.1.0",
        "info": dict(info),
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas.get("$defs", {}),
        },
        "paths": paths,
    }
