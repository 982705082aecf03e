"""Stripe's Search Query Language, the part we use (a pure parser and matcher).

Clauses ``field:'value'`` or ``metadata['key']:'value'`` (either quote; numbers and
``null`` bare; a leading ``-`` negates), joined by ``AND`` or by ``OR`` but not both,
as Stripe requires. ``:`` is Stripe's exact, case-insensitive match, on the object
as the API exports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<neg>-)?(?P<field>[a-z_]+)(?:\[(?P<kq>['"])(?P<key>.*?)(?P=kq)\])?
      :(?:(?P<vq>['"])(?P<value>.*?)(?P=vq)|(?P<bare>-?[0-9.]+|null))
    | (?P<op>AND|OR)
    )\s*""",
    re.VERBOSE,
)


class QueryError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Clause:
    field: str
    key: str | None  # metadata['key']
    value: str | None  # None: null
    negated: bool = False

    def matches(self, obj: dict[str, Any]) -> bool:
        if self.key is not None:
            container = obj.get(self.field) or {}
            actual = container.get(self.key) if isinstance(container, dict) else None
        else:
            actual = obj.get(self.field)
            if isinstance(actual, dict):  # an expanded object: match its id
                actual = actual.get("id")
        if self.value is None:
            hit = actual is None
        else:
            hit = actual is not None and str(actual).casefold() == self.value.casefold()
        return hit != self.negated


@dataclass(frozen=True, slots=True)
class Query:
    clauses: tuple[Clause, ...]
    any_of: bool  # OR rather than AND

    def matches(self, obj: dict[str, Any]) -> bool:
        hits = (c.matches(obj) for c in self.clauses)
        return any(hits) if self.any_of else all(hits)


def parse(text: str) -> Query:
    clauses: list[Clause] = []
    ops: set[str] = set()
    pos, expect_clause = 0, True
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise QueryError(f"cannot parse the query at position {pos}: {text[pos:]!r}")
        pos = m.end()
        if m["op"]:
            if expect_clause:
                raise QueryError(f"{m['op']} needs a clause on each side")
            ops.add(m["op"])
        else:
            if not expect_clause:
                raise QueryError("clauses must be joined by AND or OR")
            value = m["value"] if m["vq"] else (None if m["bare"] == "null" else m["bare"])
            clauses.append(Clause(m["field"], m["key"], value, bool(m["neg"])))
        expect_clause = bool(m["op"])
    if not clauses or expect_clause:
        raise QueryError("the query ends without a clause")
    if len(ops) > 1:
        raise QueryError("a query cannot mix AND and OR")
    return Query(tuple(clauses), ops == {"OR"})
