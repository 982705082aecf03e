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
    status = 400
    slug = "bad-query"
    title = "Bad query parameter"


class BadCursor(BadQuery):
    slug = "bad-cursor"
    title = "The cursor is not one this API returned"


class UnknownAccount(LedgerError):
    status = 404
    slug = "unknown-account"
    title = "No such account"
