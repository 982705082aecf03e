"""What this period will cost: month to date, and a forecast from the recent run rate.
Pure.

The forecast is the month-to-date usage plus the average daily usage of the last
``WINDOW`` complete UTC days (fewer when the period is younger) times the days left,
including today's remainder as a whole day less what today has used so far. The method
is stated in the answer so a reader can judge it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

WINDOW = 7
METHOD = (
    "month to date plus the average daily usage of the last 7 complete UTC days (fewer"
    " early in the period) times the days left in the period"
)


@dataclass(frozen=True, slots=True)
class Estimate:
    month_to_date: int
    daily_rate: int
    days_left: int  # whole days after today
    forecast: int
    method: str = METHOD


def estimate(by_day: Mapping[int, int], start_day: int, end_day: int, today: int) -> Estimate:
    """``by_day``: usage per UTC day number; the period is [start_day, end_day)."""
    to_date = sum(v for d, v in by_day.items() if start_day <= d <= today)
    window = [d for d in range(max(start_day, today - WINDOW), today)]
    rate = sum(by_day.get(d, 0) for d in window) // len(window) if window else by_day.get(today, 0)
    days_left = max(0, end_day - today - 1)
    rest_of_today = max(0, rate - by_day.get(today, 0))
    return Estimate(to_date, rate, days_left, to_date + rest_of_today + rate * days_left)
