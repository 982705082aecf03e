"""Projects and their API keys. A new key's secret is in the one response that creates it."""

from __future__ import annotations

from aiohttp import web

from admin import ids, validation, views
from admin.context import PROVISIONING
from admin.request_io import json_body, json_response, live_sync_headers, path_id


async def create_project(request: web.Request) -> web.Response:
    account_id = path_id(request, "account_id", ids.ACCOUNT, "account")
    new = validation.new_project(await json_body(request))
    project = await request.app[PROVISIONING].create_project(account_id, new)
    return json_response(views.project(project), status=201)


def _project_id(request: web.Request) -> str:
    return path_id(request, "project_id", ids.PROJECT, "project")


async def create_api_key(request: web.Request) -> web.Response:
    project_id = _project_id(request)
    validation.no_fields(await json_body(request, required=False))
    written = await request.app[PROVISIONING].create_api_key(project_id)
    return json_response(
        views.new_api_key(written.value),
        status=201,
        # The secret must not linger in caches or proxies.
        headers={"Cache-Control": "no-store", **live_sync_headers(request, written.live, "key")},
    )


async def list_api_keys(request: web.Request) -> web.Response:
    keys = await request.app[PROVISIONING].api_keys(_project_id(request))
    return json_response({"object": "list", "data": [views.api_key(k) for k in keys]})


async def revoke_api_key(request: web.Request) -> web.Response:
    key_id = path_id(request, "key_id", ids.API_KEY, "API key")
    written = await request.app[PROVISIONING].revoke_api_key(key_id)
    return json_response(
        views.api_key(written.value), headers=live_sync_headers(request, written.live, "key")
    )


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/accounts/{account_id}/projects", create_project),
        web.post("/v1/projects/{project_id}/keys", create_api_key),
        web.get("/v1/projects/{project_id}/keys", list_api_keys, allow_head=False),
        web.delete("/v1/keys/{key_id}", revoke_api_key),
    ]
