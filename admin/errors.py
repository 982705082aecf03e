"""The admin API's errors: each knows its HTTP status and problem type.

Raised anywhere below a handler, rendered once by ``admin.middlewares``
as ``application/problem+json`` (RFC 9457)::

    meter.problems.Problem
    +-- AdminError                      500 internal
        +-- BadRequest                  400 bad-request (malformed JSON, no body)
        +-- Unauthorized                401 unauthorized
        +-- Forbidden                   403 forbidden
        +-- NotFound                    404 not-found
        +-- MethodNotAllowed            405 method-not-allowed
        +-- Conflict                    409 conflict
        |   +-- IdempotencyKeyReused    409 idempotency-key-reused
        |   +-- LastOwner               409 last-owner
        +-- PreconditionFailed          412 precondition-failed (a stale If-Match)
        +-- PayloadTooLarge             413 payload-too-large
        +-- UnsupportedMediaType        415 unsupported-media-type
        +-- InvalidInput                422 invalid-input (with "errors": [{field, message}])
        +-- ServiceUnavailable          503 unavailable
            +-- LiveStateUnavailable    503 live-state-unavailable (Redis)
            +-- DatabaseUnavailable     503 database-unavailable (Postgres)
"""

from __future__ import annotations

from typing import Any

from meter.problems import Problem


class AdminError(Problem):
    pass


class BadRequest(AdminError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class Unauthorized(AdminError):
    status = 401
    slug = "unauthorized"
    title = "Missing or invalid admin token"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["WWW-Authenticate"] = 'Bearer realm="meter-admin"'


class Forbidden(AdminError):
    status = 403
    slug = "forbidden"
    title = "Not allowed for this token"


class NotFound(AdminError):
    status = 404
    slug = "not-found"
    title = "Not found"


class MethodNotAllowed(AdminError):
    status = 405
    slug = "method-not-allowed"
    title = "Method not allowed"


class Conflict(AdminError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class IdempotencyKeyReused(Conflict):
    slug = "idempotency-key-reused"
    title = "Idempotency key already used with a different request"


class LastOwner(Conflict):
    slug = "last-owner"
    title = "An account keeps at least one owner"


class PreconditionFailed(AdminError):
    status = 412
    slug = "precondition-failed"
    title = "The object changed since it was read"


class PayloadTooLarge(AdminError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class UnsupportedMediaType(AdminError):
    status = 415
    slug = "unsupported-media-type"
    title = "Request body must be application/json"


class InvalidInput(AdminError):
    """Well-formed JSON that does not say something we accept; ``errors`` lists each field."""

    status = 422
    slug = "invalid-input"
    title = "Invalid input"

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        detail = "; ".join(f"{field}: {message}" for field, message in errors)
        super().__init__(
            detail, errors=[{"field": field, "message": message} for field, message in errors]
        )
        self.errors = errors


class ServiceUnavailable(AdminError):
    status = 503
    slug = "unavailable"
    title = "Service unavailable"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["Retry-After"] = "1"


class LiveStateUnavailable(ServiceUnavailable):
    slug = "live-state-unavailable"
    title = "Live account state (Redis) unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    slug = "database-unavailable"
    title = "Database unavailable"


# aiohttp's own HTTP errors (unknown route, wrong method, body over client_max_size)
# rendered as ours; any other status keeps aiohttp's reason as its title.
BY_STATUS: dict[int, type[AdminError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    503: ServiceUnavailable,
}
