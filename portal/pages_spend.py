"""Spend management (seed 001): the toggle, the daily budget, the notification
thresholds, and the credits consumed today and yesterday.

The form is in dollars and percent; it is read into the admin API's
``SpendManagementIn`` (the portal accepts what the API accepts) and saved by the one
spend-management service, whose own checks come back beside their fields. Each
threshold row is an amount and a unit (USD or % of the budget); empty rows are
ignored.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from admin import models
from admin.access import Permission as P
from admin.access import require_on
from admin.errors import Conflict, InvalidInput
from admin.routes_spend import change_of
from meter.money import money
from notifications.spend import MAX_THRESHOLDS, SpendView, describe
from notifications.thresholds import PERCENT
from portal.context import FORM, SERVICES, VIEWER
from portal.forms import Errors, dollars, service_errors
from portal.rendering import render, see_other

routes = web.RouteTableDef()
ROWS = 5  # threshold rows the form offers at least (one per threshold set by the API)


def _values(v: SpendView) -> dict[str, Any]:
    rows = [
        {
            "value": str(t.value) if t.kind == PERCENT else money(t.value).removeprefix("$"),
            "unit": "percent" if t.kind == PERCENT else "usd",
        }
        for t in v.thresholds
    ]
    rows += [{"value": "", "unit": "usd"} for _ in range(max(0, ROWS - len(rows)))]
    return {
        "enabled": "on" if v.enabled else "",
        "daily_budget": "" if v.daily_budget is None else money(v.daily_budget).removeprefix("$"),
        "rows": rows,
    }


async def _page(
    request: web.Request,
    *,
    values: dict[str, Any] | None = None,
    errors: Errors | None = None,
    status: int = 200,
    flashes: list[tuple[str, str]] | None = None,
) -> web.Response:
    viewer, services = request[VIEWER], request.app[SERVICES]
    view = await services.spend.view(viewer.account.id)
    return render(
        request,
        "spend_management.html",
        section="spend_management",
        status=status,
        flashes=flashes,
        spend=view,
        describe=describe,
        values=values if values is not None else _values(view),
        errors=errors or {},
    )


@routes.get("/spend-management")
async def spend_management(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    return await _page(request)


def _read(form: dict[str, str]) -> tuple[models.SpendManagementIn | None, dict[str, Any], Errors]:
    """The form as the API's body, the values to show again, and the errors by field."""
    errors: Errors = {}
    rows = [
        {
            "value": form.get(f"threshold-{i}", "").strip(),
            "unit": "percent" if form.get(f"unit-{i}") == "percent" else "usd",
        }
        for i in range(MAX_THRESHOLDS)
        if i < ROWS or f"threshold-{i}" in form
    ]
    enabled = form.get("enabled") == "on"
    raw_budget = form.get("daily_budget", "").strip()
    values = {"enabled": "on" if enabled else "", "daily_budget": raw_budget, "rows": rows}
    budget: int | None = None
    if raw_budget:
        parsed = dollars(raw_budget)
        if isinstance(parsed, str):
            errors["daily_budget"] = parsed
        elif parsed == 0:
            errors["daily_budget"] = "Enter an amount above zero, or leave it empty."
        else:
            budget = parsed
    thresholds: list[dict[str, int]] = []
    for i, row in enumerate(rows):
        if not row["value"]:
            continue
        if row["unit"] == "percent":
            if row["value"].isdigit() and 1 <= int(row["value"]) <= 100:
                thresholds.append({"percent": int(row["value"])})
            else:
                errors[f"threshold-{i}"] = "Enter a whole percentage from 1 to 100."
            continue
        parsed = dollars(row["value"])
        if isinstance(parsed, str) or parsed == 0:
            errors[f"threshold-{i}"] = parsed if isinstance(parsed, str) else "Above zero."
        else:
            thresholds.append({"amount": parsed})
    if errors:
        return None, values, errors
    try:
        body = models.SpendManagementIn.model_validate(
            {
                "enabled": values["enabled"] == "on",
                "daily_budget": budget,
                "notify_thresholds": thresholds,
            }
        )
    except ValidationError:  # only past the API's largest amounts, after the above
        return None, values, {"daily_budget": "Too large."}
    return body, values, {}


def _form_errors(exc: InvalidInput) -> Errors:
    """The service's field names as the form's ("notify_thresholds[2]" -> that row)."""
    out: Errors = {}
    for field, message in service_errors(exc).items():
        if field.startswith("notify_thresholds["):
            out[f"threshold-{field.split('[')[1].rstrip(']')}"] = message
        elif field == "notify_thresholds":
            out["thresholds"] = message
        else:
            out[field] = message
    return out


@routes.post("/spend-management")
async def save_spend_management(request: web.Request) -> web.StreamResponse:
    viewer, services, form = request[VIEWER], request.app[SERVICES], request[FORM]
    require_on(viewer.principal, P.LIMITS_WRITE, viewer.account.id, "no account")
    body, values, errors = _read(form)
    if body is None:
        return await _page(request, values=values, errors=errors, status=422)
    try:
        await services.spend.put(viewer.actor, viewer.account.id, change_of(body))
    except InvalidInput as exc:
        return await _page(request, values=values, errors=_form_errors(exc), status=422)
    except Conflict as exc:
        return await _page(request, values=values, status=409, flashes=[("error", exc.detail)])
    return see_other("/spend-management?done=spend_saved")
