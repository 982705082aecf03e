"""Money Redis could not give back when a call ended, given back once Redis answers.

Two kinds of work wait here, tried again by one task per worker after ``backoff``
(50 ms doubling to 5 s) until Redis answers each:

- A refund whose ``settle.lua`` call failed (``StateUnavailable``: no connection,
  or no answer within ``METER_REDIS_TIMEOUT``) when the call ended (an upstream
  5xx or failure, a variable-cost settlement, a refused body). The answer went
  out with the charge as it then stood.
- An admission batch whose reply never came (``AdmissionBatcher.lost``): its
  calls were answered 503, but the batch may have run. ``void.lua`` says which of
  its calls it debited (or makes sure it never runs), and each such debit becomes
  a refund (reason ``lost_reply``): a call answered 503 is not charged.

Retrying is safe because ``settle.lua`` gives back at most once per call: the
first run sets the call's settled marker (``keys.settled``, kept
``keys.SETTLED_TTL_SECONDS``), and a retry of a refund that did land before its
reply was lost answers "already settled" and changes nothing. Work is tried for
at most ``METER_REFUND_RETRY_SECONDS`` (limited to half the marker's life, so a
late retry can never give twice); past that, or beyond ``max_pending`` waiting,
it is given up: logged at ERROR with the account, the call's event id and the
micros (or the batch's record key), and counted in
``meter_gateway_refunds_dropped_total``, which pages. Given up means not known to
be applied: a try whose reply never came may still have landed, so look for a
usage event refunding it (``refund_of`` in Postgres's ``usage_events``) before
crediting it by hand. At shutdown the waiting work gets the shutdown grace.

With ``METER_REFUND_SPOOL_DIR`` set, the waiting work is also written to disk
(``refund_spool.py``): what is left at shutdown, or when the worker is killed
outright, is claimed and tried by the next worker to start on that folder (the
retry period still counting from the first failed try). Without it the work
lives in memory only: what is left at shutdown is given up, and a worker killed
outright loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from gateway import errors
from gateway.admission import Admitter
from gateway.metrics import GatewayMetrics
from gateway.refund_spool import Pending, PendingRefund, PendingVoid, RefundSpool
from meter.live_state import Admission, Call, KeyCall, StateUnavailable
from meter.money import Outcome, Signal

log = logging.getLogger("gateway.refunds")

FIRST_DELAY = 0.05
MAX_DELAY = 5.0

# void.lua for a batch: each call it debited and the debit's event id.
Void = Callable[[str, Sequence[Call | KeyCall]], Awaitable[list[tuple[Call, str]]]]


def backoff(attempts: int) -> float:
    """Seconds to wait before try number ``attempts + 1`` of the waiting work."""
    return min(MAX_DELAY, FIRST_DELAY * float(1 << min(attempts, 16)))


class RefundRetry:
    def __init__(
        self,
        admitter: Admitter,
        metrics: GatewayMetrics,
        *,
        retry_for: float,
        void: Void,
        max_pending: int = 100_000,
        spool: RefundSpool | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.admitter = admitter
        self.metrics = metrics
        self.retry_for = retry_for
        self.void = void
        self.max_pending = max_pending
        self.spool = spool
        self.clock = clock
        self.wall = wall
        self.pending: deque[Pending] = deque()
        self._added = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Claim what stopped workers left in the spool, then start trying."""
        if self.spool is not None:
            self._claim(self.spool)
        self._task = asyncio.ensure_future(self._run())

    def _claim(self, spool: RefundSpool) -> None:
        claimed: list[Pending] = []
        for found in spool.claim():
            log.warning(
                "refunds claimed from a stopped worker's spool",
                extra={"path": str(found.path), "waiting": len(found.waiting)},
            )
            if found.unreadable:
                log.error(
                    "refund spool lines unreadable: kept for an operator",
                    extra={"path": f"{found.path}.unreadable", "lines": found.unreadable},
                )
            claimed.extend(found.waiting)
        now, wall = self.clock(), self.wall()
        for work in claimed:  # the retry period counts from the first failed try
            work.since = now - max(0.0, wall - work.at)
        self.metrics.refunds_claimed.inc(len(claimed))
        self._wait(claimed, spooled=True)

    def add(self, call: Call, admission: Admission, amount: int, day: int, reason: str) -> None:
        """A refund whose first try failed: it will be tried again."""
        work = PendingRefund(
            call, admission.event_id, amount, day, reason, self.clock(), self.wall()
        )
        self._wait([work])

    def add_void(self, batch_key: str, calls: list[Call | KeyCall], day: int) -> None:
        """An admission batch whose reply was lost (``AdmissionBatcher.lost``)."""
        self._wait([PendingVoid(batch_key, calls, day, self.clock(), self.wall())])

    def _wait(self, works: list[Pending], *, spooled: bool = False) -> None:
        """``spooled``: claimed work, already copied into this worker's spool."""
        room = max(0, self.max_pending - len(self.pending))
        dropped, works = works[room:], works[:room]
        for work in dropped:
            self._drop(work, "too much waiting")
        if self.spool is not None:
            if spooled:
                self.spool.done(dropped)
            else:
                self.spool.add(works)
        if not works:
            return
        self.pending.extend(works)
        self.metrics.refunds_pending.value = len(self.pending)
        self._added.set()

    async def close(self, grace: float) -> None:
        """Try what waits for up to ``grace`` seconds more; give up the rest."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                attempts = 0
                while self.pending:
                    if not await self.try_all():
                        await asyncio.sleep(backoff(attempts))
                        attempts += 1
        if self.spool is not None:
            # Applied by the next worker to start on the folder, or never (a folder that
            # goes with its machine or pod): each is logged as a given-up refund would be.
            path = str(self.spool.path)
            for work in self.pending:
                log.error("refund left in the spool", extra={**_fields(work), "path": path})
            self.spool.close(keep=bool(self.pending))
            self.pending.clear()
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
        """One try of everything waiting (one script call each, sent together); True if
        any of it needs no more tries (work a void finds waits for the next round)."""
        now = self.clock()
        batch = list(self.pending)  # they stay waiting until a try settles them
        outcomes = await asyncio.gather(
            *(self._try(work, now) for work in batch), return_exceptions=True
        )
        finished: list[Pending] = []
        for work, outcome in zip(batch, outcomes, strict=True):
            if outcome is True:
                finished.append(work)
            elif isinstance(outcome, BaseException):
                log.error("refund retry failed", exc_info=outcome)
        # Work added during the tries stays, behind what is still waiting.
        ended = {id(work) for work in finished}
        self.pending = deque(w for w in self.pending if id(w) not in ended)
        self.metrics.refunds_pending.value = len(self.pending)
        if self.spool is not None:
            if self.pending:
                self.spool.done(finished)
            else:
                self.spool.clear()
        return bool(finished)

    async def _try(self, work: Pending, now: float) -> bool:
        """True when ``work`` needs no more tries (done, found done, or given up)."""
        if now - work.since > self.retry_for:
            self._drop(work, "retried for METER_REFUND_RETRY_SECONDS")
            return True
        if isinstance(work, PendingVoid):
            return await self._void(work)
        try:
            applied = await self.admitter.settle(
                work.call, _admitted(work.event_id), work.amount, work.day
            )
        except errors.StateUnavailable:
            return False
        if applied:
            self.metrics.refunds.labels(work.reason).inc()
            self.metrics.refunded_micros.inc(work.amount)
            log.info("refund applied late", extra=_fields(work))
        else:  # the first try did land, its reply was lost (or the account is gone)
            log.warning("refund already settled", extra=_fields(work))
        return True

    async def _void(self, work: PendingVoid) -> bool:
        try:
            debited = await self.void(work.batch_key, work.calls)
        except StateUnavailable:
            return False
        log.warning(
            "admission reply lost",
            extra={"batch": work.batch_key, "calls": len(work.calls), "debited": len(debited)},
        )
        refunds: list[Pending] = [  # answered 503: given back
            PendingRefund(call, event_id, call.price, work.day, "lost_reply", work.since, work.at)
            for call, event_id in debited
        ]
        if self.spool is not None:
            self.spool.add(refunds)  # before the void is marked done
        self.pending.extend(refunds)
        return True

    def _drop(self, work: Pending, why: str) -> None:
        self.metrics.refunds_dropped.inc()
        log.error("refund given up: %s", why, extra=_fields(work))


def _admitted(event_id: str) -> Admission:
    """What settle.lua needs of the admission being refunded: its event."""
    return Admission(Outcome.ADMITTED, 0, 0, None, Signal(0), event_id)


def _fields(work: Pending) -> dict[str, object]:
    if isinstance(work, PendingVoid):
        return {"batch": work.batch_key, "calls": len(work.calls)}
    call = work.call
    return {
        "account_id": call.account_id,
        "event_id": work.event_id,
        "micros": work.amount,
        "route": call.route,
        "reason": work.reason,
    }
