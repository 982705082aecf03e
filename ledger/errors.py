"""Errors of the ledger's read side, each knowing its HTTP answer (see meter.problems).

Problem
+-- LedgerError
    +-- BadQuery (400) ... a malformed parameter
    |   +-- BadCursor (400)
    +-- UnknownAccount (404)
"""

from __future__ import annotations

from meter.problems import Problem


class LedgerError(Problem):
    slug = "ledger"


class BadQuery(LedgerError):
    """Each malformed parameter and what is wrong with it, as ``errors: [{field, message}]``."""

    status = 400
    slug = "bad-query"
    title = "Bad query parameter"

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        detail = "; ".join(f"{field}: {message}" for field, message in errors)
        super().__init__(
            detail, errors=[{"field": field, "message": message} for field, message in errors]
        )
        self.errors = errors


class BadCursor(BadQuery):
    slug = "bad-cursor"
    title = "The cursor is not one this API returned"


class UnknownAccount(LedgerError):
    status = 404
    slug = "unknown-account"
    title = "No such account"
