"""The read side's pure parts: query parameters, cursors, and shaping usage periods.

Cursors are opaque to clients (base64url of a version and the last entry id seen),
so the keyset behind them can change without breaking anyone.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta

from ledger.errors import BadCursor, BadQuery

EPOCH = date(1970, 1, 1)
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_RANGE_DAYS = 731
GROUPS = ("day", "month", "route")


def to_day(d: date) -> int:
    return (d - EPOCH).days


def from_day(day: int) -> date:
    return EPOCH + timedelta(days=day)


# -- transactions --------------------------------------------------------------------


def encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"t1:{entry_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, value = raw.partition(":")
        if version != "t1" or not value.isdigit():
            raise ValueError(raw)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor(f"bad cursor {cursor[:40]!r}") from None


@dataclass(frozen=True, slots=True)
class TransactionsQuery:
    limit: int = DEFAULT_LIMIT
    before_id: int | None = None  # from the cursor: entries older than this one


def transactions_query(params: Mapping[str, str]) -> TransactionsQuery:
    """``?limit=&cursor=`` -> a query (BadQuery on anything malformed)."""
    raw = params.get("limit", "")
    limit = DEFAULT_LIMIT
    if raw != "":
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise BadQuery(f"limit must be an integer between 1 and {MAX_LIMIT}", parameter="limit")
        limit = int(raw)
    cursor = params.get("cursor") or None
    return TransactionsQuery(limit, None if cursor is None else decode_cursor(cursor))


# -- usage ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageQuery:
    start: date
    end: date  # inclusive
    group_by: str


def _date(params: Mapping[str, str], name: str) -> date | None:
    raw = params.get(name, "")
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise BadQuery(f"{name} must be a date, YYYY-MM-DD", parameter=name) from None


def first_of_month(d: date, months_back: int = 0) -> date:
    index = d.year * 12 + d.month - 1 - months_back
    return date(index // 12, index % 12 + 1, 1)


def usage_query(params: Mapping[str, str], today: date) -> UsageQuery:
    """``?from=&to=&group_by=`` -> a query. Defaults: to today; from 30 days back (12
    months back, from the 1st, when grouping by month)."""
    group_by = params.get("group_by") or "day"
    if group_by not in GROUPS:
        raise BadQuery(f"group_by must be one of {', '.join(GROUPS)}", parameter="group_by")
    end = _date(params, "to") or today
    start = _date(params, "from")
    if start is None:
        start = first_of_month(end, 11) if group_by == "month" else end - timedelta(days=29)
    if start > end:
        raise BadQuery("from must not be after to", parameter="from")
    if (end - start).days >= MAX_RANGE_DAYS:
        raise BadQuery(f"the range may span at most {MAX_RANGE_DAYS} days", parameter="from")
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
