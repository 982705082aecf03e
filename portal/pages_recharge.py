"""Auto recharge: its settings form and what it is doing (on, paused and why, ...).

The form is in dollars; it is read into the admin API's ``AutoRechargeIn`` (so the
portal accepts what the API accepts) and saved by ``recharges.put``, whose own
checks (the bounds, a target above the threshold, a card on file) come back beside
their fields. No script: the charge is made off-session by the ledger worker.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from admin import models
from admin.access import Permission as P
from admin.access import require_on
from admin.errors import Conflict, InvalidInput
from meter.money import money
from payments.recharges import RechargeChanges
from payments.records import AutoRecharge
from portal.context import FORM, SERVICES, VIEWER
from portal.forms import Errors, dollars, service_errors
from portal.pages_payments import amount_error
from portal.rendering import render, see_other

routes = web.RouteTableDef()
MONEY_FIELDS = ("threshold", "amount", "target_balance", "max_amount_per_day")
FIELDS = (*MONEY_FIELDS, "max_per_day", "mode", "enabled")


def _dollars_text(micros: int | None) -> str:
    return "" if micros is None else money(micros).removeprefix("$")


def _values(s: AutoRecharge | None) -> dict[str, str]:
    if s is None:
        return {f: "" for f in FIELDS} | {"mode": "amount"}
    values = {f: _dollars_text(getattr(s, f)) for f in MONEY_FIELDS}
    return values | {
        "max_per_day": "" if s.max_per_day is None else str(s.max_per_day),
        "mode": "target" if s.target_balance is not None else "amount",
        "enabled": "on" if s.enabled else "",
    }


async def _page(
    request: web.Request,
    *,
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    status: int = 200,
    flashes: list[tuple[str, str]] | None = None,
) -> web.Response:
    viewer, services = request[VIEWER], request.app[SERVICES]
    view = await services.recharges.view(viewer.account.id)
    methods = await services.payments.methods(viewer.account.id)
    settings = services.payments.ctx.settings
    return render(
        request,
        "auto_recharge.html",
        section="auto_recharge",
        status=status,
        flashes=flashes,
        configured=services.payments.configured,
        recharge=view,
        card=next((m for m in methods if m.is_default), None),
        values=values if values is not None else _values(view.settings),
        errors=errors or {},
        bounds=(settings.credit_purchase_min, settings.credit_purchase_max),
    )


@routes.get("/auto-recharge")
async def auto_recharge(request: web.Request) -> web.StreamResponse:
    viewer = request[VIEWER]
    require_on(viewer.principal, P.READ, viewer.account.id, "no account")
    return await _page(request)


def _read(form: dict[str, str], lo: int, hi: int) -> tuple[RechargeChanges | None, Errors]:
    """The form's changes in micros, or the errors by field (in dollars)."""
    errors: Errors = {}
    mode = "target" if form.get("mode") == "target" else "amount"
    wanted = {"threshold", "max_amount_per_day", "amount" if mode == "amount" else "target_balance"}
    micros: dict[str, int | None] = {f: None for f in MONEY_FIELDS}
    for name in MONEY_FIELDS:
        raw = form.get(name, "").strip()
        if name not in wanted or (name == "max_amount_per_day" and not raw):
            continue  # the other mode's field, or no cap
        parsed = dollars(raw)
        if isinstance(parsed, str):
            errors[name] = parsed
        else:
            micros[name] = parsed
    if micros["amount"] is not None:
        bound = amount_error(micros["amount"], lo, hi)
        if bound:
            errors["amount"] = bound
    raw_count = form.get("max_per_day", "").strip()
    count: int | None = None
    if raw_count:
        if raw_count.isdigit() and 1 <= int(raw_count) <= 1000:
            count = int(raw_count)
        else:
            errors["max_per_day"] = "Enter a whole number from 1 to 1000, or leave it empty."
    if errors:
        return None, errors
    try:
        body = models.AutoRechargeIn.model_validate(
            {"enabled": form.get("enabled") == "on", "max_per_day": count, **micros}
        )
    except ValidationError as exc:  # only past the API's largest amounts, after the above
        return None, {str(e["loc"][0]): "Too large." for e in exc.errors() if e["loc"]}
    return RechargeChanges(
        enabled=body.enabled,
        threshold=body.threshold,
        amount=body.amount,
        target_balance=body.target_balance,
        max_per_day=body.max_per_day,
        max_amount_per_day=body.max_amount_per_day,
    ), {}


@routes.post("/auto-recharge")
async def save_auto_recharge(request: web.Request) -> web.StreamResponse:
    viewer, services, form = request[VIEWER], request.app[SERVICES], request[FORM]
    require_on(viewer.principal, P.PAYMENTS_WRITE, viewer.account.id, "no account")
    values = {f: form.get(f, "") for f in FIELDS}
    settings = services.payments.ctx.settings
    changes, errors = _read(form, settings.credit_purchase_min, settings.credit_purchase_max)
    if changes is None:
        return await _page(request, values=values, errors=errors, status=422)
    try:
        await services.recharges.put(viewer.actor, viewer.account.id, changes)
    except InvalidInput as exc:
        return await _page(request, values=values, errors=service_errors(exc), status=422)
    except Conflict as exc:  # no card to charge (NoPaymentMethod), or the account closed
        return await _page(request, values=values, status=409, flashes=[("error", exc.detail)])
    return see_other("/auto-recharge?done=recharge_saved")
