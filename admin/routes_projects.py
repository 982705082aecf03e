"""Projects and their API keys. A new key's secret is in the one response that creates it."""

from __future__ import annotations

from typing import Any

from admin import models
from admin.access import Permission as P
from admin.declared import NO_STORE, PENDING, Call, Operation, Reply


async def create_project(call: Call[models.NewProject]) -> Reply:
    project = await call.services.provisioning.create_project(call.actor, call.account, call.body)
    return Reply(models.Project.model_validate(project), 201)


async def list_projects(call: Call[Any]) -> Reply:
    projects = await call.services.provisioning.projects(call.account)
    return Reply(models.ProjectList(data=[models.Project.model_validate(p) for p in projects]))


async def create_api_key(call: Call[Any]) -> Reply:
    project_id = call.request.match_info["project_id"]
    written = await call.services.provisioning.create_api_key(call.actor, project_id)
    key = models.ApiKey.model_validate(written.value.key)
    body = models.NewApiKey(**key.model_dump(), key=written.value.secret)
    return Reply(body, 201, dict(NO_STORE), live=written.live)


async def list_api_keys(call: Call[Any]) -> Reply:
    keys = await call.services.provisioning.api_keys(call.request.match_info["project_id"])
    return Reply(models.ApiKeyList(data=[models.ApiKey.model_validate(k) for k in keys]))


async def revoke_api_key(call: Call[Any]) -> Reply:
    written = await call.services.provisioning.revoke_api_key(
        call.actor, call.request.match_info["key_id"]
    )
    return Reply(models.ApiKey.model_validate(written.value), live=written.live)


A = "/v1/accounts/{account_id}"
OPERATIONS = [
    Operation(
        "POST",
        A + "/projects",
        "createProject",
        "Create a project billed to the account",
        create_project,
        P.KEYS_WRITE,
        "account_id",
        {201: (models.Project, "Created.")},
        models.NewProject,
        errors=(409,),
    ),
    Operation(
        "GET",
        A + "/projects",
        "listProjects",
        "The account's projects",
        list_projects,
        P.READ,
        "account_id",
        {200: (models.ProjectList, "The projects.")},
    ),
    Operation(
        "POST",
        "/v1/projects/{project_id}/keys",
        "createApiKey",
        "Create an API key (the key is shown only in this response)",
        create_api_key,
        P.KEYS_WRITE,
        "project_id",
        {201: (models.NewApiKey, "Created." + PENDING)},
        errors=(409,),
    ),
    Operation(
        "GET",
        "/v1/projects/{project_id}/keys",
        "listApiKeys",
        "List the project's API keys (no secrets)",
        list_api_keys,
        P.READ,
        "project_id",
        {200: (models.ApiKeyList, "The keys.")},
    ),
    Operation(
        "DELETE",
        "/v1/keys/{key_id}",
        "revokeApiKey",
        "Revoke an API key (idempotent); the gateway refuses it at once",
        revoke_api_key,
        P.KEYS_WRITE,
        "key_id",
        {200: (models.ApiKey, "The revoked key." + PENDING)},
    ),
]
