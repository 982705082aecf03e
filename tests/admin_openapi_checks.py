"""Schemathesis hooks for the admin API's conformance run (loaded through SCHEMATHESIS_HOOKS).

Not a test module: ``test_admin_openapi_conformance.py`` runs the schemathesis CLI with
this module on its path. It adds one check in place of the stock
``positive_data_acceptance``: the same check, except for the rules the OpenAPI
document states but JSON Schema cannot express. A schema-valid request that breaks
one of them must be refused exactly as the document says (the status, the problem
type and the fields named), never accepted; any other schema-valid request must be
accepted, as the stock check says.

- Integers are JSON integers as written. JSON Schema counts ``5.0`` as an integer
  (a number whose fraction is zero), the server refuses it (``admin.models``: strict
  on purpose, ``5.0`` and ``5e0`` are not amounts, as the document's description
  says). A body holding a float with an integral value where the schema says
  ``integer`` may be refused with 422 invalid-input naming exactly those fields.
- ``If-Match`` is an ETag list the server compares with the object's current one;
  the schema can only say it is a string. Without ``*`` among its tags, 412
  precondition-failed is the documented answer to a stale (or made-up) tag.
- Tax ids: the country must be one the type is issued in and the value must pass
  its type's format and check digits (the operation's description). 422
  invalid-input naming only ``country`` and ``value`` is that refusal.
- Portal sessions: ``return_url`` must start with one of the server's
  METER_PORTAL_RETURN_URLS (configuration, passed in ``ADMIN_FUZZ_RETURN_URLS``);
  422 naming only ``return_url`` is the refusal of one that does not.
- ``GET .../usage``: ``from`` after ``to``, or a range of ``MAX_RANGE_DAYS`` days or
  more, is refused with 400 bad-query naming ``from`` (``to`` defaults to today, the
  server's clock, which the test fixes and passes in ``ADMIN_FUZZ_TODAY``).

- Purchases: ``amount`` must lie within the deployment's purchase bounds
  (configuration, passed in ``ADMIN_FUZZ_PURCHASE_BOUNDS``) and ``payment_method_id``
  must be a card of the account; 422 naming only the field that breaks it.
- Adding a card: ``setup_intent_id`` must name a confirmed SetupIntent of the
  account (made in a browser with Stripe.js); 422 naming it otherwise.
- Auto-recharge: exactly one of ``amount`` and ``target_balance``, ``amount``
  within the purchase bounds, ``target_balance`` above ``threshold`` by at most the
  maximum, ``max_amount_per_day`` at least ``amount``; 422 naming only those fields.
- Spend management: a percentage threshold needs a daily budget when enabled, and
  integers inside the thresholds are JSON integers too; 422 naming only
  ``daily_budget`` or ``notify_thresholds``.

- Credits: ``expires_at`` must be a day its month has (the pattern allows
  ``2031-02-30``); 422 naming only ``expires_at`` is that refusal.

- Plans: ``prices`` must fit the deployment's price table (its routes, and each
  route's sort: fixed price or units of its kinds; the field's description); 422
  naming only ``prices`` is the refusal of prices that do not.

- Webhook endpoints: ``url``'s host must resolve, when saved, to an address a
  webhook may be sent to (the field's description); 422 naming only ``url`` is the
  refusal of one that does not (what the generator writes resolves nowhere public).

The rules are written out here from the document, not imported from the server.
"""

from __future__ import annotations

import os
from datetime import date, datetime
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

USAGE = "GET /v1/accounts/{account_id}/usage"
TAX_IDS = "POST /v1/accounts/{account_id}/tax-ids"
PORTAL_SESSIONS = "POST /v1/accounts/{account_id}/portal-sessions"
# The server's METER_PORTAL_RETURN_URLS, as the test configured it.
RETURN_URLS = tuple(os.environ["ADMIN_FUZZ_RETURN_URLS"].split(","))
MAX_RANGE_DAYS = 731  # the document: "the range may span at most 731 days"
TODAY = date.fromisoformat(os.environ["ADMIN_FUZZ_TODAY"])
PROBLEMS = "https://meter.dev/problems/"
PURCHASES = "POST /v1/accounts/{account_id}/purchases"
ADD_CARD = "POST /v1/accounts/{account_id}/payment-methods"
AUTO_RECHARGE = "PUT /v1/accounts/{account_id}/auto-recharge"
WEBHOOK_URLS = {
    "POST /v1/accounts/{account_id}/webhook-endpoints",
    "PATCH /v1/accounts/{account_id}/webhook-endpoints/{endpoint_id}",
}
SPEND = "PUT /v1/accounts/{account_id}/spend-management"
PLANS = "POST /v1/plans"
CREDITS = "POST /v1/accounts/{account_id}/credits"
PURCHASE_MIN, PURCHASE_MAX = map(int, os.environ["ADMIN_FUZZ_PURCHASE_BOUNDS"].split(","))


def recharge_rules_broken(body: dict[str, Any]) -> set[str]:
    """The fields of an auto-recharge body that break the rules the document states."""
    amount, target = body.get("amount"), body.get("target_balance")
    threshold, cap = body.get("threshold", 0), body.get("max_amount_per_day")
    broken: set[str] = set()
    if (amount is None) == (target is None):
        broken.add("amount")
    if amount is not None and not PURCHASE_MIN <= amount <= PURCHASE_MAX:
        broken.add("amount")
    if target is not None and (target <= threshold or target - threshold > PURCHASE_MAX):
        broken.add("target_balance")
    if cap is not None and amount is not None and cap < amount:
        broken.add("max_amount_per_day")
    return broken


def spend_rules_broken(body: dict[str, Any]) -> set[str]:
    """The fields of a spend-management body that break the rules the document states."""
    broken = {"daily_budget"} if isinstance(body.get("daily_budget"), float) else set()
    items = [t for t in body.get("notify_thresholds") or [] if isinstance(t, dict)]
    if any(isinstance(v, float) for t in items for v in t.values()):
        broken.add("notify_thresholds")
    if (
        body.get("enabled")
        and body.get("daily_budget") is None
        and any("percent" in t for t in items)
    ):
        broken.add("notify_thresholds")
    return broken


def breaks_the_range_rule(query: dict[str, Any]) -> bool:
    """Whether well-formed ``from``/``to`` make a range the document says is refused.

    Without ``from`` the default range (30 days, or 12 months from the 1st) always fits.
    """
    if "from" not in query:
        return False
    start = date.fromisoformat(str(query["from"]))
    end = date.fromisoformat(str(query["to"])) if "to" in query else TODAY
    return start > end or (end - start).days >= MAX_RANGE_DAYS


def no_such_day(value: Any) -> bool:
    """Whether a pattern-valid ``expires_at`` names a day its month does not have."""
    try:
        datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return True
    return False


def integral_floats(body: Any) -> set[str]:
    """The top-level fields of ``body`` holding, anywhere inside, a float with an integral
    value (5.0): the server names the top-level field of a nested one."""
    if not isinstance(body, dict):
        return set()
    return {k for k, v in body.items() if _holds_integral_float(v)}


def _holds_integral_float(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_holds_integral_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_integral_float(v) for v in value)
    return False


def if_match_tags(headers: Any) -> list[str] | None:
    for name, value in (headers or {}).items():
        if name.lower() == "if-match":
            return [t.strip().removeprefix("W/") for t in str(value).split(",")]
    return None


def problem_of(response: Any) -> tuple[str, list[str]]:
    """The problem's type slug and the fields its ``errors`` name."""
    try:
        problem = response.json()
    except ValueError:
        return "", []
    if not isinstance(problem, dict):
        return "", []
    slug = str(problem.get("type", "")).removeprefix(PROBLEMS)
    return slug, [str(e.get("field")) for e in problem.get("errors") or []]


def documented_refusal(case: Any, response: Any) -> bool:
    """Whether ``response`` is the refusal the document describes in words for ``case``.

    Raises when the request breaks such a rule and the server accepted it anyway.
    """
    status = response.status_code
    slug, fields = problem_of(response)
    label = case.operation.label
    if label == USAGE and breaks_the_range_rule(dict(case.query or {})):
        # 400 must be that refusal; 2xx is a disagreement; others (404: no such account,
        # checked first when the id cannot exist) are for the other checks to judge.
        if 200 <= status < 300 or (status == 400 and (slug, fields) != ("bad-query", ["from"])):
            raise AssertionError(
                f"a range the document refuses got {status}: {response.text[:300]}"
            )
        return status != 400 or slug == "bad-query"
    body = case.body if isinstance(case.body, dict) else {}
    if status == 422 and slug == "invalid-input" and label == SPEND:
        broken = spend_rules_broken(body)
        return bool(broken) and set(fields) <= broken
    floats = integral_floats(case.body)
    if status == 422 and slug == "invalid-input" and floats:
        # A plan's prices are judged with its other fields, so both refusals may come.
        extra = {"prices"} if label == PLANS and isinstance(body.get("prices"), dict) else set()
        return set(fields) in (floats, floats | extra)
    if status == 422 and slug == "invalid-input" and label == TAX_IDS:
        return bool(fields) and set(fields) <= {"country", "value"}
    if status == 422 and slug == "invalid-input" and label == PORTAL_SESSIONS:
        url = str((case.body or {}).get("return_url", ""))
        return fields == ["return_url"] and not url.startswith(RETURN_URLS)
    if status == 422 and slug == "invalid-input" and label == PURCHASES:
        amount = body.get("amount", 0)
        outside = not PURCHASE_MIN <= amount <= PURCHASE_MAX
        return fields == ["amount"] if outside else fields == ["payment_method_id"]
    if status == 422 and slug == "invalid-input" and label == ADD_CARD:
        return fields == ["setup_intent_id"]  # a confirmed one is made in a browser
    if status == 422 and slug == "invalid-input" and label == AUTO_RECHARGE:
        broken = recharge_rules_broken(body)
        return bool(broken) and set(fields) <= broken
    if status == 422 and slug == "invalid-input" and label == CREDITS and "expires_at" in body:
        return fields == ["expires_at"] and no_such_day(body["expires_at"])
    if status == 422 and slug == "invalid-input" and label == PLANS:
        return set(fields) == {"prices"} and isinstance(body.get("prices"), dict)
    if status == 422 and slug == "invalid-input" and label in WEBHOOK_URLS:
        return fields == ["url"] and isinstance(body.get("url"), str)
    tags = if_match_tags(case.headers)
    if status == 412 and slug == "precondition-failed" and tags is not None:
        return "*" not in tags
    return False


@schemathesis.check
def documented_positive_data_acceptance(ctx: Any, response: Any, case: Any) -> bool | None:
    meta = case.meta
    if meta is not None and meta.generation.mode.is_positive and documented_refusal(case, response):
        return True
    result: bool | None = positive_data_acceptance(ctx, response, case)
    return result
