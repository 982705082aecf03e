"""Billing periods: calendar months in UTC, starting on a deployment's anchor day. Pure.

A period is [start, end): ``start`` is the anchor day of a month, ``end`` the anchor
day of the next. ``METER_BILLING_ANCHOR_DAY`` (1 to 28, so every month has it) moves
the anchor. A call belongs to the period of its admission time (its UTC day, as the
usage rollups record it), never to the next by accident.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

EPOCH = date(1970, 1, 1)
_PERIOD = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True, slots=True, order=True)
class Period:
    start: date
    end: date

    @property
    def label(self) -> str:
        """YYYY-MM of the month it starts in."""
        return f"{self.start:%Y-%m}"

    @property
    def start_day(self) -> int:
        """Days since 1970-01-01 (the rollups' day numbers), inclusive."""
        return (self.start - EPOCH).days

    @property
    def end_day(self) -> int:
        return (self.end - EPOCH).days

    def end_at(self) -> datetime:
        return datetime(self.end.year, self.end.month, self.end.day, tzinfo=UTC)

    def start_at(self) -> datetime:
        return datetime(self.start.year, self.start.month, self.start.day, tzinfo=UTC)

    def next(self, anchor: int = 1) -> Period:
        return starting(self.end.year, self.end.month, anchor)

    def previous(self, anchor: int = 1) -> Period:
        back = self.start - timedelta(days=1)
        return containing(back, anchor)


def _month_after(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def starting(year: int, month: int, anchor: int = 1) -> Period:
    """The period that starts in ``year``-``month``."""
    ny, nm = _month_after(year, month)
    return Period(date(year, month, anchor), date(ny, nm, anchor))


def containing(day: date, anchor: int = 1) -> Period:
    """The period ``day`` (UTC) belongs to."""
    if day.day >= anchor:
        return starting(day.year, day.month, anchor)
    py, pm = (day.year - 1, 12) if day.month == 1 else (day.year, day.month - 1)
    return starting(py, pm, anchor)


def at(moment: datetime | float, anchor: int = 1) -> Period:
    """The period of an instant (a datetime, or epoch seconds)."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return containing(moment.astimezone(UTC).date(), anchor)


def last_closed(moment: datetime | float, anchor: int = 1) -> Period:
    """The most recent period that has ended by ``moment``."""
    return at(moment, anchor).previous(anchor)


def parse(label: str, anchor: int = 1) -> Period:
    """``YYYY-MM`` as the period starting in that month (ValueError otherwise)."""
    found = _PERIOD.fullmatch(label.strip())
    if found is None or not 1 <= int(found[2]) <= 12:
        raise ValueError(f"{label!r} is not a period: give YYYY-MM")
    return starting(int(found[1]), int(found[2]), anchor)
