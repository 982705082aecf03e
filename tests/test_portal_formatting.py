"""How the portal writes money and time (portal/formatting.py): pure, no fixtures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import jinja2
import pytest

from meter.money import money, usd
from portal import formatting
from portal.formatting import iso_utc, signed_money, utc_date, utc_datetime


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "$0.00"),
        (1_234_560_000, "$1,234.56"),
        (usd(5), "$5.00"),
        (-usd(5), "-$5.00"),
        (usd("1234567.89"), "$1,234,567.89"),
        (4_999, "$0.00"),  # under half a cent
        (5_000, "$0.01"),  # half a cent rounds away from zero
        (-5_000, "-$0.01"),
        (-4_999, "$0.00"),  # no "-$0.00"
        (994_999, "$0.99"),
        (995_000, "$1.00"),
        (999_999_995_000, "$1,000,000.00"),
    ],
)
def test_money_in_dollars_and_cents(micros: int, text: str) -> None:
    assert money(micros) == text


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (usd(100), "+$100.00"),
        (-41_873_100, "-$41.87"),
        (0, "$0.00"),
        (1_000, "$0.00"),  # rounds to nothing: no sign
    ],
)
def test_signed_money_marks_credits_too(micros: int, text: str) -> None:
    assert signed_money(micros) == text
    assert money(micros, signed=True) == text


@pytest.mark.parametrize(
    ("micros", "places", "text"),
    [
        (1_234, 6, "$0.001234"),
        (1_234, 4, "$0.0012"),
        (1_250, 3, "$0.001"),
        (1_500, 3, "$0.002"),
        (2_500_000, 0, "$3"),
        (-1_234, 4, "-$0.0012"),
    ],
)
def test_money_to_more_places_for_unit_prices(micros: int, places: int, text: str) -> None:
    assert money(micros, places=places) == text


@pytest.mark.parametrize("not_money", [1.5, True, "100", None])
def test_only_int_micros_are_money(not_money: object) -> None:
    with pytest.raises(TypeError, match="int micros"):
        money(not_money)  # type: ignore[arg-type]


@pytest.mark.parametrize("places", [-1, 7])
def test_places_are_bounded_by_the_micro(places: int) -> None:
    with pytest.raises(ValueError, match="places"):
        money(1, places=places)


AUCKLAND = timezone(timedelta(hours=13))


@pytest.mark.parametrize(
    ("moment", "date", "when", "iso"),
    [
        (
            datetime(2026, 12, 7, 14, 3, 9, 123_456, tzinfo=UTC),
            "7 Dec 2026",
            "7 Dec 2026, 14:03 UTC",
            "2026-12-07T14:03:09Z",
        ),
        (  # 8 Dec in Auckland is still 7 Dec in UTC
            datetime(2026, 12, 8, 9, 30, tzinfo=AUCKLAND),
            "7 Dec 2026",
            "7 Dec 2026, 20:30 UTC",
            "2026-12-07T20:30:00Z",
        ),
        (0, "1 Jan 1970", "1 Jan 1970, 00:00 UTC", "1970-01-01T00:00:00Z"),
        (1_798_761_599.9, "31 Dec 2026", "31 Dec 2026, 23:59 UTC", "2026-12-31T23:59:59Z"),
    ],
)
def test_times_are_written_in_utc(
    moment: formatting.Moment, date: str, when: str, iso: str
) -> None:
    assert (utc_date(moment), utc_datetime(moment), iso_utc(moment)) == (date, when, iso)


def test_a_naive_datetime_is_refused_not_guessed() -> None:
    with pytest.raises(ValueError, match="naive"):
        utc_datetime(datetime(2026, 12, 7, 14, 3))


@pytest.mark.parametrize("not_a_time", ["2026-12-07", True, None])
def test_only_datetimes_and_epoch_seconds_are_times(not_a_time: object) -> None:
    with pytest.raises(TypeError):
        utc_date(not_a_time)  # type: ignore[arg-type]


def test_the_filters_as_templates_use_them() -> None:
    env = jinja2.Environment(autoescape=True)
    env.filters.update(formatting.FILTERS)
    page = env.from_string(
        "{{ a | money }} {{ b | signed_money }} {{ b | money(signed=true) }}"
        " {{ a | money(places=4) }} {{ t | utc_date }} | {{ t | utc_datetime }} {{ t | iso_utc }}"
    )
    text = page.render(a=-1_234, b=usd(5), t=86_400)
    assert text == (
        "$0.00 +$5.00 +$5.00 -$0.0012 2 Jan 1970 | 2 Jan 1970, 00:00 UTC 1970-01-02T00:00:00Z"
    )
