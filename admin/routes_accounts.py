"""Billing accounts: create, read, limits, suspend/resume, live balance."""

from __future__ import annotations

from aiohttp import web

from admin import ids, validation, views
from admin.context import PROVISIONING
from admin.provisioning import Written
from admin.records import ACTIVE, SUSPENDED, Account
from admin.request_io import json_body, json_response, live_sync_headers, path_id


def written_response(
    request: web.Request, written: Written[Account], kind: str, *, status: int = 200
) -> web.Response:
    headers = live_sync_headers(request, written.live, kind)
    return json_response(views.account(written.value), status=status, headers=headers)


def _account_id(request: web.Request) -> str:
    return path_id(request, "account_id", ids.ACCOUNT, "account")


async def create_account(request: web.Request) -> web.Response:
    new = validation.new_account(await json_body(request))
    written = await request.app[PROVISIONING].create_account(new)
    return written_response(request, written, "account", status=201)


async def get_account(request: web.Request) -> web.Response:
    account = await request.app[PROVISIONING].account(_account_id(request))
    return json_response(views.account(account))


async def put_limits(request: web.Request) -> web.Response:
    account_id = _account_id(request)
    limits = validation.limits(await json_body(request))
    written = await request.app[PROVISIONING].set_limits(account_id, limits)
    return written_response(request, written, "account")


async def suspend(request: web.Request) -> web.Response:
    return await _set_status(request, SUSPENDED)


async def resume(request: web.Request) -> web.Response:
    return await _set_status(request, ACTIVE)


async def _set_status(request: web.Request, status: str) -> web.Response:
    account_id = _account_id(request)
    validation.no_fields(await json_body(request, required=False))
    written = await request.app[PROVISIONING].set_status(account_id, status)
    return written_response(request, written, "account")


async def get_balance(request: web.Request) -> web.Response:
    live = await request.app[PROVISIONING].balance(_account_id(request))
    return json_response(views.balance(live))


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/accounts", create_account),
        web.get("/v1/accounts/{account_id}", get_account, allow_head=False),
        web.put("/v1/accounts/{account_id}/limits", put_limits),
        web.post("/v1/accounts/{account_id}/suspend", suspend),
        web.post("/v1/accounts/{account_id}/resume", resume),
        web.get("/v1/accounts/{account_id}/balance", get_balance, allow_head=False),
    ]
