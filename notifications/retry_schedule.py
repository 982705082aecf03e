"""When a webhook delivery is tried again, and when an endpoint is given up. Pure.

The Standard Webhooks specification's example schedule: at once, then 5 s, 5 min,
30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h after the try before; each wait is
jittered by up to a tenth either way so that endpoints that failed together are not
retried together. A ``Retry-After`` (429, 503) longer than the schedule's wait wins.
An endpoint answering 410 is disabled at once; one that has failed every try for 5
days is disabled and its owner told.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

SCHEDULE = (0, 5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400)  # seconds
JITTER = 0.1
GIVE_UP_AFTER = timedelta(days=5)


@dataclass(frozen=True, slots=True)
class Next:
    retry_at: datetime | None  # None: no more tries of this message
    disable_endpoint: bool = False
    reason: str | None = None


def after_failure(
    attempt: int,
    now: datetime,
    *,
    status: int | None,
    retry_after: float | None,
    failing_since: datetime | None,
    rng: random.Random,
) -> Next:
    """What follows the failed ``attempt`` (1 is the first try) of one message."""
    if status == 410:
        return Next(None, True, "the endpoint answered 410 Gone")
    if failing_since is not None and now - failing_since >= GIVE_UP_AFTER:
        return Next(None, True, "every delivery failed for 5 days")
    if attempt >= len(SCHEDULE):
        return Next(None, False, f"{len(SCHEDULE)} tries failed")
    wait = SCHEDULE[attempt] * (1 + rng.uniform(-JITTER, JITTER))
    if retry_after is not None and status in (429, 503):
        wait = max(wait, retry_after)
    return Next(now + timedelta(seconds=wait))
