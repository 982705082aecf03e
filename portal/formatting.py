"""How the portal writes money and time: pure functions, registered as Jinja filters.

Money arrives as ``int`` micros (1 USD = 1,000,000) and is shown in dollars, rounded
half away from zero, by ``meter.money.money`` (which the payments' messages use too);
time is always shown in UTC, the day the ledger counts in.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from meter.money import money

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

Moment = datetime | int | float  # an aware datetime, or seconds since the epoch


def signed_money(micros: int, places: int = 2) -> str:
    """A change of balance: ``+$5.00`` credited, ``-$0.25`` spent."""
    return money(micros, signed=True, places=places)


def _utc(moment: Moment) -> datetime:
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ValueError(f"a naive datetime has no known zone: {moment!r}")
        return moment.astimezone(UTC)
    if isinstance(moment, bool) or not isinstance(moment, int | float):
        raise TypeError(f"a time is a datetime or epoch seconds, not {moment!r}")
    return datetime.fromtimestamp(moment, UTC)


def utc_date(moment: Moment) -> str:
    """``7 Dec 2026``: the month by name, so no reader mistakes day for month."""
    at = _utc(moment)
    return f"{at.day} {_MONTHS[at.month - 1]} {at.year}"


def utc_datetime(moment: Moment) -> str:
    """``7 Dec 2026, 14:03 UTC``."""
    at = _utc(moment)
    return f"{utc_date(at)}, {at.hour:02d}:{at.minute:02d} UTC"


def iso_utc(moment: Moment) -> str:
    """``2026-12-07T14:03:09Z``: for ``<time datetime=...>``."""
    return _utc(moment).replace(microsecond=0).isoformat().replace("+00:00", "Z")


FILTERS: dict[str, Callable[..., Any]] = {
    "money": money,
    "signed_money": signed_money,
    "utc_date": utc_date,
    "utc_datetime": utc_datetime,
    "iso_utc": iso_utc,
}
