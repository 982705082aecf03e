"""Projects and their API keys, for admins and owners: a new key is shown once."""

from __future__ import annotations

from aiohttp import web

from admin import models
from admin.access import Permission as P
from admin.access import require_on
from portal.context import FORM, SERVICES, VIEWER
from portal.forms import Errors, parse
from portal.rendering import render, see_other

routes = web.RouteTableDef()


async def _keys_page(
    request: web.Request,
    *,
    new_key: str | None = None,
    errors: Errors | None = None,
    status: int = 200,
) -> web.Response:
    viewer, services = request[VIEWER], request.app[SERVICES]
    projects = await services.provisioning.projects(viewer.account.id)
    keys = {p.id: await services.provisioning.api_keys(p.id) for p in projects}
    return render(
        request,
        "api_keys.html",
        section="api_keys",
        status=status,
        projects=projects,
        keys=keys,
        new_key=new_key,
        errors=errors or {},
    )


@routes.get("/api-keys")
async def api_keys(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.KEYS_WRITE, viewer.account.id, "no account")
    return await _keys_page(request)


@routes.post("/api-keys/projects")
async def create_project(request: web.Request) -> web.StreamResponse:
    viewer, services, form = request[VIEWER], request.app[SERVICES], request[FORM]
    require_on(viewer.principal, P.KEYS_WRITE, viewer.account.id, "no account")
    new, errors = parse(models.NewProject, form, ("name",))
    if new is None:
        return await _keys_page(request, errors=errors, status=422)
    await services.provisioning.create_project(viewer.actor, viewer.account.id, new)
    return see_other("/api-keys?done=project")


@routes.post("/api-keys/projects/{project_id}/keys")
async def create_key(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    project_id = request.match_info["project_id"]
    owner = await services.provisioning.owner_of("projects", project_id)
    require_on(viewer.principal, P.KEYS_WRITE, owner, f"no project {project_id!r}")
    written = await services.provisioning.create_api_key(viewer.actor, project_id)
    # Rendered, not redirected: the key is in this response only, never in a URL.
    return await _keys_page(request, new_key=written.value.secret)


@routes.post("/api-keys/{key_id}/revoke")
async def revoke_key(request: web.Request) -> web.StreamResponse:
    viewer, services = request[VIEWER], request.app[SERVICES]
    key_id = request.match_info["key_id"]
    owner = await services.provisioning.owner_of("api_keys", key_id)
    require_on(viewer.principal, P.KEYS_WRITE, owner, f"no API key {key_id!r}")
    await services.provisioning.revoke_api_key(viewer.actor, key_id)
    return see_other("/api-keys?done=key_revoked")
