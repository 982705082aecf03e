"""Crash injection for the fault tests: SIGKILL ourselves at a named point.

Off unless ``METER_LEDGER_CRASH_POINTS`` names points (read into ``Settings`` like
every other setting). The points bracket the exactly-once loop: after reading a
batch, in the middle of its transaction, just before commit, after commit but
before the stream is trimmed, and after the trim.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable

from meter.settings import Settings


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CrashHook:
    def __init__(
        self,
        points: frozenset[str] = frozenset(),
        probability: float = 0.0,
        *,
        rng: random.Random | None = None,
        die: Callable[[], None] = _sigkill,
    ) -> None:
        self.points = points
        self.probability = probability
        self.rng = rng or random.Random()
        self.die = die

    @classmethod
    def from_settings(cls, settings: Settings) -> CrashHook:
        return cls(settings.ledger_crash_points, settings.ledger_crash_probability)

    def __call__(self, point: str) -> None:
        if point in self.points and self.rng.random() < self.probability:
            self.die()
