"""The read side's pure parts: query parameters, cursors, and shaping usage periods.

Each parameter's rule is declared here once (the patterns and bounds below) and
read by both the parsers and the admin API's OpenAPI document, so the document
calls valid exactly what is accepted. A parameter given empty (``limit=``) is
refused like any other malformed value, and every malformed parameter is
reported at once. What JSON Schema cannot say (``from`` after ``to``, a range
longer than ``MAX_RANGE_DAYS``) the document says in words, and it is refused
only after each parameter is well formed.

A cursor is ``t1.<id of the last entry seen>``: ``t1`` versions the keyset behind it,
so it can change without breaking anyone; clients pass ``next_cursor`` back as is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta

from ledger.errors import BadCursor, BadQuery

EPOCH = date(1970, 1, 1)
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_RANGE_DAYS = 731
GROUPS = ("day", "month", "route")
LAST_ENTRY_ID = 2**63 - 1  # bigint: a cursor past it reads as "older than every entry"

# Patterns in the subset ECMA-262 (JSON Schema's dialect) and Python's ``re`` read alike.
CURSOR_PATTERN = "^t1\\.([0-9]{1,19})$"
# RFC 3339 full-date (also "format": "date"), from the ledger's day 0 (1970-01-01) on.
DATE_PATTERN = "^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
_CURSOR = re.compile(CURSOR_PATTERN)
_DATE = re.compile(DATE_PATTERN)
_LIMIT = re.compile("0*([0-9]{1,3})")  # ASCII digits only: "²".isdigit() is True


def to_day(d: date) -> int:
    return (d - EPOCH).days


def from_day(day: int) -> date:
    return EPOCH + timedelta(days=day)


def _refuse(errors: list[tuple[str, str]]) -> None:
    if errors:
        raise (BadCursor if {p for p, _ in errors} == {"cursor"} else BadQuery)(errors)


# -- transactions --------------------------------------------------------------------


def encode_cursor(entry_id: int) -> str:
    return f"t1.{entry_id}"


def decode_cursor(cursor: str) -> int:
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise BadCursor([("cursor", "must be a next_cursor this API returned")])
    return min(int(match[1]), LAST_ENTRY_ID)


@dataclass(frozen=True, slots=True)
class TransactionsQuery:
    limit: int = DEFAULT_LIMIT
    before_id: int | None = None  # from the cursor: entries older than this one


def page_limit(
    params: Mapping[str, str],
    errors: list[tuple[str, str]],
    *,
    default: int = DEFAULT_LIMIT,
    maximum: int = MAX_LIMIT,
) -> int:
    """A list's ``limit`` (ASCII digits, 1 to ``maximum``); a malformed one joins ``errors``."""
    if "limit" not in params:
        return default
    match = _LIMIT.fullmatch(params["limit"])
    if match is None or not 1 <= int(match[1]) <= maximum:
        errors.append(("limit", f"must be an integer between 1 and {maximum}"))
        return default
    return int(match[1])


def transactions_query(params: Mapping[str, str]) -> TransactionsQuery:
    """``?limit=&cursor=`` -> a query (BadQuery listing every malformed parameter)."""
    errors: list[tuple[str, str]] = []
    limit = page_limit(params, errors)
    before_id = None
    if "cursor" in params:
        try:
            before_id = decode_cursor(params["cursor"])
        except BadCursor as exc:
            errors += exc.errors
    _refuse(errors)
    return TransactionsQuery(limit, before_id)


# -- usage ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageQuery:
    start: date
    end: date  # inclusive
    group_by: str


def _date(params: Mapping[str, str], name: str, errors: list[tuple[str, str]]) -> date | None:
    if name not in params:
        return None
    raw = params[name]
    try:
        if _DATE.fullmatch(raw):
            return date.fromisoformat(raw)
    except ValueError:  # the pattern's shape, but no such day: 2025-02-30
        pass
    errors.append((name, "must be a date, YYYY-MM-DD, from 1970-01-01 on"))
    return None


def first_of_month(d: date, months_back: int = 0) -> date:
    index = d.year * 12 + d.month - 1 - months_back
    return date(index // 12, index % 12 + 1, 1)


def usage_query(params: Mapping[str, str], today: date) -> UsageQuery:
    """``?from=&to=&group_by=`` -> a query. Defaults: to today; from 30 days back (12
    months back, from the 1st, when grouping by month)."""
    errors: list[tuple[str, str]] = []
    group_by = params.get("group_by", "day")
    if group_by not in GROUPS:
        errors.append(("group_by", f"must be one of {', '.join(GROUPS)}"))
    end, start = _date(params, "to", errors), _date(params, "from", errors)
    _refuse(errors)
    end = end or today
    if start is None:
        start = first_of_month(end, 11) if group_by == "month" else end - timedelta(days=29)
    if start > end:
        raise BadQuery([("from", "must not be after to (default: today)")])
    if (end - start).days >= MAX_RANGE_DAYS:
        raise BadQuery([("from", f"the range may span at most {MAX_RANGE_DAYS} days")])
    return UsageQuery(start, end, group_by)


def periods(query: UsageQuery, by_day: Mapping[int, tuple[int, int]]) -> list[dict[str, object]]:
    """Day or month rows over the whole range, zero-filled, oldest first."""
    rows: dict[str, list[int]] = {}
    d = query.start
    while d <= query.end:
        key = d.isoformat() if query.group_by == "day" else d.strftime("%Y-%m")
        row = rows.setdefault(key, [0, 0])
        calls, amount = by_day.get(to_day(d), (0, 0))
        row[0] += calls
        row[1] += amount
        d += timedelta(days=1)
    return [{"period": k, "calls": c, "amount": a} for k, (c, a) in rows.items()]


def routes(rows: Iterable[tuple[str, int, int]]) -> list[dict[str, object]]:
    """Route rows, the most charged first."""
    ordered = sorted(rows, key=lambda r: (-r[2], r[0]))
    return [{"route": r, "calls": c, "amount": a} for r, c, a in ordered]
