"""Refunds whose script call failed (Redis away or slow) are tried again until applied.

When a call ends in a way that gives money back (an upstream 5xx or failure, a
variable-cost settlement, a refused body) and ``settle.lua`` cannot be run
(``StateUnavailable``: no connection, or no answer within ``METER_REDIS_TIMEOUT``),
the answer goes out with the charge as it then stands, and the refund waits
here. One task per worker tries the waiting refunds again, after ``backoff``
(50 ms doubling to 5 s), until Redis answers each of them.

Retrying is safe because ``settle.lua`` gives back at most once per call: the
first run sets the call's settled marker (``keys.settled``, kept
``keys.SETTLED_TTL_SECONDS``), and a retry of a refund that did land before its
reply was lost answers "already settled" and changes nothing. A refund is tried
for at most ``METER_REFUND_RETRY_SECONDS`` (limited to half the marker's life,
so a late retry can never give twice); past that, or beyond ``max_pending``
waiting refunds, it is given up: logged at ERROR with the account, the call's
event id and the micros, and counted in ``meter_gateway_refunds_dropped_total``,
which pages. Given up means not known to be applied: a try whose reply never came
may still have landed, so look for a usage event refunding it (``refund_of``
in Postgres's ``usage_events``) before crediting it by hand. At shutdown the waiting
refunds get the shutdown grace; a worker killed outright loses them (they are
kept in memory only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway import errors
from gateway.admission import Admitter
from gateway.metrics import GatewayMetrics
from meter.live_state import Admission, Call

log = logging.getLogger("gateway.refunds")

FIRST_DELAY = 0.05
MAX_DELAY = 5.0


def backoff(attempts: int) -> float:
    """Seconds to wait before try number ``attempts + 1`` of the waiting refunds."""
    return min(MAX_DELAY, FIRST_DELAY * float(1 << min(attempts, 16)))


@dataclass(slots=True)
class PendingRefund:
    call: Call
    admission: Admission
    amount: int
    day: int
    reason: str
    since: float  # when the first try failed (the retrier's clock)


class RefundRetry:
    def __init__(
        self,
        admitter: Admitter,
        metrics: GatewayMetrics,
        *,
        retry_for: float,
        max_pending: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.admitter = admitter
        self.metrics = metrics
        self.retry_for = retry_for
        self.max_pending = max_pending
        self.clock = clock
        self.pending: deque[PendingRefund] = deque()
        self._added = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def add(self, call: Call, admission: Admission, amount: int, day: int, reason: str) -> None:
        """A refund whose first try failed: it will be tried again."""
        refund = PendingRefund(call, admission, amount, day, reason, self.clock())
        if len(self.pending) >= self.max_pending:
            self._drop(refund, "too many refunds waiting")
            return
        self.pending.append(refund)
        self.metrics.refunds_pending.value = len(self.pending)
        self._added.set()

    async def close(self, grace: float) -> None:
        """Try what waits for up to ``grace`` seconds more; give up the rest."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    attempts = 0
                    while self.pending and not await self.try_all():
                        await asyncio.sleep(backoff(attempts))
                        attempts += 1
        while self.pending:
            self._drop(self.pending.popleft(), "the gateway stopped")
        self.metrics.refunds_pending.value = 0

    async def _run(self) -> None:
        attempts = 0
        while True:
            if not self.pending:
                self._added.clear()
                await self._added.wait()
                attempts = 0
            await asyncio.sleep(backoff(attempts))
            attempts = 0 if await self.try_all() else attempts + 1

    async def try_all(self) -> bool:
        """One try of every waiting refund (one script call each, sent together); True
        when none is left waiting."""
        now = self.clock()
        batch = list(self.pending)  # they stay waiting until a try settles them
        outcomes = await asyncio.gather(
            *(self._try(refund, now) for refund in batch), return_exceptions=True
        )
        finished: set[int] = set()
        for refund, outcome in zip(batch, outcomes, strict=True):
            if outcome is True:
                finished.add(id(refund))
            elif isinstance(outcome, BaseException):
                log.error("refund retry failed", exc_info=outcome)
        # Refunds added during the tries stay, behind the ones still waiting.
        self.pending = deque(r for r in self.pending if id(r) not in finished)
        self.metrics.refunds_pending.value = len(self.pending)
        return not self.pending

    async def _try(self, refund: PendingRefund, now: float) -> bool:
        """True when the refund needs no more tries (applied, already applied, given up)."""
        if now - refund.since > self.retry_for:
            self._drop(refund, "retried for METER_REFUND_RETRY_SECONDS")
            return True
        try:
            applied = await self.admitter.settle(
                refund.call, refund.admission, refund.amount, refund.day
            )
        except errors.StateUnavailable:
            return False
        if applied:
            self.metrics.refunds.labels(refund.reason).inc()
            self.metrics.refunded_micros.inc(refund.amount)
            log.info("refund applied late", extra=_fields(refund))
        else:  # the first try did land, its reply was lost (or the account is gone)
            log.warning("refund already settled", extra=_fields(refund))
        return True

    def _drop(self, refund: PendingRefund, why: str) -> None:
        self.metrics.refunds_dropped.inc()
        log.error("refund given up: %s", why, extra=_fields(refund))


def _fields(refund: PendingRefund) -> dict[str, object]:
    call = refund.call
    return {
        "account_id": call.account_id,
        "event_id": refund.admission.event_id,
        "micros": refund.amount,
        "route": call.route,
        "reason": refund.reason,
    }
