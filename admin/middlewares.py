"""The admin API's middlewares, outermost first: observe -> problems -> authenticate.

``problems`` is the one boundary where errors become answers: our
``AdminError``s, aiohttp's HTTP errors (unknown route, wrong method, body too
large), Redis and Postgres being unreachable (503), and anything unexpected
(500, logged with its traceback; the client sees no internals).
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from admin import auth, declared
from admin.audit import Actor
from admin.context import ACTOR, PRINCIPAL, SERVICES
from admin.errors import (
    BY_STATUS,
    AdminError,
    DatabaseUnavailable,
    LiveStateUnavailable,
    MethodNotAllowed,
    NotFound,
)
from admin.metrics import AdminMetrics
from admin.repository import CONNECTION_ERRORS
from meter.live_state import StateUnavailable
from meter.problems import PROBLEM_CONTENT_TYPE, TYPE_BASE, Problem, render

log = logging.getLogger("admin.http")

UNMATCHED = "unmatched"
CLIENT_CLOSED = 499  # the client went away before the answer (nginx's convention)


def route_template(request: web.Request) -> str:
    """The route's template (``/v1/accounts/{account_id}``), never the raw path: bounded labels."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def problem_response(problem: Problem, request: web.Request) -> web.Response:
    return web.Response(
        body=render(problem, request.path),
        status=problem.status,
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


def _from_http_error(exc: web.HTTPException, request: web.Request) -> web.Response:
    cls = BY_STATUS.get(exc.status)
    if cls is NotFound:
        problem: AdminError = NotFound(f"no route {request.method} {request.path}")
    elif cls is MethodNotAllowed:
        allow = exc.headers.get("Allow", "")
        problem = MethodNotAllowed(f"{request.method} is not allowed here; allowed: {allow}")
        problem.headers["Allow"] = allow
    elif cls is not None:
        problem = cls(exc.text or None)
    else:
        body = {
            "type": f"{TYPE_BASE}http-{exc.status}",
            "title": exc.reason,
            "status": exc.status,
            "detail": exc.text or exc.reason,
            "instance": request.path,
        }
        return web.Response(
            body=orjson.dumps(body), status=exc.status, content_type=PROBLEM_CONTENT_TYPE
        )
    return problem_response(problem, request)


def problems() -> Middleware:
    @web.middleware
    async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Problem as problem:
            return problem_response(problem, request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _from_http_error(exc, request)
        except StateUnavailable as exc:
            log.warning("redis unavailable: %s", exc, extra={"path": request.path})
            return problem_response(LiveStateUnavailable(), request)
        except CONNECTION_ERRORS as exc:
            log.warning("postgres unavailable: %s", exc, extra={"path": request.path})
            return problem_response(DatabaseUnavailable(), request)
        except Exception:
            log.exception(
                "unexpected error", extra={"method": request.method, "path": request.path}
            )
            return problem_response(AdminError("unexpected error; see the server log"), request)

    return problems_middleware


def authenticate(authenticator: auth.TokenAuthenticator) -> Middleware:
    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in auth.PUBLIC_PATHS:
            return await handler(request)
        people = request.app[SERVICES].people
        principal = await authenticator.authenticate(request.headers.get("Authorization"), people)
        request[PRINCIPAL] = principal
        rid = declared.request_id(request)
        request[ACTOR] = Actor(principal, rid, request.remote)
        response = await handler(request)
        response.headers["X-Request-Id"] = rid
        return response

    return auth_middleware


def observe(metrics: AdminMetrics) -> Middleware:
    @web.middleware
    async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # redirects and the like pass through untouched
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            route = route_template(request)
            metrics.requests.labels(route, request.method, str(status)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - started)

    return observe_middleware
