"""Schemathesis hooks for the admin API's conformance run (loaded through SCHEMATHESIS_HOOKS).

Not a test module: ``test_admin_openapi_conformance.py`` runs the schemathesis CLI with
this module on its path. It adds one check in place of the stock
``positive_data_acceptance``: the same check, except for the one rule the OpenAPI
document can only state in words, because JSON Schema cannot relate two parameters.
On ``GET .../usage``, ``from`` after ``to``, or a range of ``MAX_RANGE_DAYS`` days or
more, is refused with 400 bad-query naming ``from`` (``to`` defaults to today, the
server's clock, which the test fixes and passes in ``ADMIN_FUZZ_TODAY``). A request
that breaks the rule must not be accepted, and a 400 must be exactly that refusal;
any other schema-valid request must be accepted, as the stock check says.

The rule is written out here from the document, not imported from the server.
"""

from __future__ import annotations

import os
from datetime import date
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

USAGE = "GET /v1/accounts/{account_id}/usage"
MAX_RANGE_DAYS = 731  # the document: "the range may span at most 731 days"
TODAY = date.fromisoformat(os.environ["ADMIN_FUZZ_TODAY"])


def breaks_the_range_rule(query: dict[str, Any]) -> bool:
    """Whether well-formed ``from``/``to`` make a range the document says is refused.

    Without ``from`` the default range (30 days, or 12 months from the 1st) always fits.
    """
    if "from" not in query:
        return False
    start = date.fromisoformat(str(query["from"]))
    end = date.fromisoformat(str(query["to"])) if "to" in query else TODAY
    return start > end or (end - start).days >= MAX_RANGE_DAYS


@schemathesis.check
def documented_positive_data_acceptance(ctx: Any, response: Any, case: Any) -> bool | None:
    meta = case.meta
    if (
        case.operation.label == USAGE
        and meta is not None
        and meta.generation.mode.is_positive
        and breaks_the_range_rule(dict(case.query or {}))
    ):
        # 400 must be that refusal; 2xx is a disagreement; others (404: no such account,
        # checked first when the id cannot exist) are for the other checks to judge.
        status = response.status_code
        problem = response.json() if status == 400 else {}
        fields = [e.get("field") for e in problem.get("errors", [])]
        refused = str(problem.get("type", "")).endswith("/bad-query") and fields == ["from"]
        if 200 <= status < 300 or (status == 400 and not refused):
            raise AssertionError(
                f"a range the document refuses got {status}: {response.text[:300]}"
            )
        return True
    result: bool | None = positive_data_acceptance(ctx, response, case)
    return result
