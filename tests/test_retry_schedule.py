"""The webhook retry schedule: the specification's waits, jitter, Retry-After, giving up."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from notifications.retry_schedule import GIVE_UP_AFTER, SCHEDULE, after_failure

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def next_wait(attempt: int, **kw: object) -> float | None:
    args: dict[str, object] = {
        "status": 500,
        "retry_after": None,
        "failing_since": NOW,
        "rng": random.Random(attempt),
    }
    args.update(kw)
    n = after_failure(attempt, NOW, **args)  # type: ignore[arg-type]
    return None if n.retry_at is None else (n.retry_at - NOW).total_seconds()


@pytest.mark.parametrize("attempt", range(1, len(SCHEDULE)))
def test_each_wait_is_the_schedules_within_a_tenth(attempt: int) -> None:
    wait = next_wait(attempt)
    assert wait is not None
    assert SCHEDULE[attempt] * 0.9 <= wait <= SCHEDULE[attempt] * 1.1


def test_the_jitter_spreads_endpoints_that_failed_together() -> None:
    waits = {next_wait(3, rng=random.Random(seed)) for seed in range(20)}
    assert len(waits) > 15


def test_retry_after_wins_when_longer_on_429_and_503_only() -> None:
    assert next_wait(1, status=429, retry_after=600) == 600
    assert next_wait(1, status=503, retry_after=600) == 600
    wait = next_wait(1, status=500, retry_after=600)
    assert wait is not None and wait < 10
    long = next_wait(4, status=429, retry_after=1)
    assert long is not None and long > 6_000


def test_after_the_last_try_the_message_is_given_up_not_the_endpoint() -> None:
    n = after_failure(
        len(SCHEDULE), NOW, status=500, retry_after=None, failing_since=NOW, rng=random.Random()
    )
    assert (n.retry_at, n.disable_endpoint) == (None, False)


def test_410_or_five_days_of_failures_disable_the_endpoint() -> None:
    gone = after_failure(
        1, NOW, status=410, retry_after=None, failing_since=NOW, rng=random.Random()
    )
    assert gone.disable_endpoint and gone.retry_at is None and "410" in (gone.reason or "")
    old = after_failure(
        2,
        NOW,
        status=500,
        retry_after=None,
        failing_since=NOW - GIVE_UP_AFTER,
        rng=random.Random(),
    )
    assert old.disable_endpoint and "5 days" in (old.reason or "")
    young = after_failure(
        2,
        NOW,
        status=500,
        retry_after=None,
        failing_since=NOW - GIVE_UP_AFTER + timedelta(seconds=1),
        rng=random.Random(),
    )
    assert not young.disable_endpoint and young.retry_at is not None
