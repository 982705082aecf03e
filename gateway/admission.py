"""The hot path's one seam to Redis: admit a call, settle it. Nothing else per call.

``Admitter`` is the interface the proxy sees. ``DirectAdmitter`` hands each
admission to the account state, ``meter.hot_path_state.PipelinedState``, which
batches the admissions of one loop pass into one script call (each still
decided atomically); batching never touches the proxy. Redis
failures are translated here, once, into the 503 refusal.

An admission is started (``start``: queued, sent with the loop pass's others)
apart from being waited for (``wait``), so that the raw server can start it as
soon as a request's head is parsed, before the task that answers the request
runs (``Proxy.begin``); ``arrived`` takes a reply that is in without awaiting it
(the raw server's lane, ``Proxy.forward_now``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Protocol

from gateway import errors
from gateway.metrics import GatewayMetrics
from meter import live_state
from meter.admission_batcher import Listener
from meter.hot_path_state import PipelinedState
from meter.live_state import Admission, Call, KeyCall

# An admission on its way: its reply, and when it was sent (for the latency metric).
Started = tuple["asyncio.Future[Admission]", float]


class Admitter(Protocol):
    @property
    def resolves_keys(self) -> bool:
        """Whether ``start`` takes a ``KeyCall`` (a call whose key the script resolves)."""
        ...

    def start(self, call: Call | KeyCall, day: int, listener: Listener | None = None) -> Started:
        """Send the admission now (it goes out with this loop pass's others); ``wait`` for it.
        ``listener``: called as soon as the admission's future is done."""
        ...

    async def wait(self, started: Started) -> Admission:
        """The started admission: ``call.price`` checked and debited atomically; raises
        errors.StateUnavailable. A ``KeyCall``'s admission carries its key's record
        (``key``; None: no such key)."""
        ...

    def arrived(self, started: Started) -> Admission | None:
        """The started admission if its reply is in and is not a failure, else None
        (``wait`` for it then): what ``wait`` would return, without awaiting."""
        ...

    def replied(self, started: Started) -> None:
        """Record the latency of an admission taken with ``arrived`` (``wait`` does it)."""
        ...

    async def settle(self, call: Call, admission: Admission, refund: int, day: int) -> bool:
        """Give back ``refund`` micros of an admitted call, at most once; True if applied."""
        ...


class AdmissionScripts(Protocol):
    """The two script calls, as ``LiveState`` (or a pipelined equivalent) runs them."""

    @property
    def resolves_keys(self) -> bool: ...

    def admit(self, call: Call | KeyCall, day: int) -> Awaitable[Admission]: ...

    def settle(
        self, call: Call, admitted: Admission, refund: int, admitted_day: int
    ) -> Awaitable[int]: ...


class DirectAdmitter:
    """One script call per admission, timed; ``StateUnavailable`` becomes the 503 refusal."""

    def __init__(self, state: AdmissionScripts, metrics: GatewayMetrics) -> None:
        self.state = state
        self.metrics = metrics
        # PipelinedState answers with a future, sent already, and calls a listener in the
        # callback that resolves it; LiveState's coroutine only starts as a task
        # (asyncio.ensure_future, 0.5 us a call, only for that one).
        self._batched = state if isinstance(state, PipelinedState) else None

    @property
    def resolves_keys(self) -> bool:
        return self.state.resolves_keys

    def start(self, call: Call | KeyCall, day: int, listener: Listener | None = None) -> Started:
        batched = self._batched
        if batched is not None:
            pending = batched.admit(call, day, listener)
        else:
            pending = asyncio.ensure_future(self.state.admit(call, day))
            if listener is not None:
                pending.add_done_callback(lambda _: listener())
        return pending, time.perf_counter()

    async def wait(self, started: Started) -> Admission:
        pending = started[0]
        try:
            return await pending
        except live_state.StateUnavailable as exc:
            raise errors.StateUnavailable(str(exc)) from exc
        finally:
            self.replied(started)

    def arrived(self, started: Started) -> Admission | None:
        pending = started[0]
        if not pending.done() or pending.cancelled() or pending.exception() is not None:
            return None
        return pending.result()

    def replied(self, started: Started) -> None:
        self.metrics.redis_admit.observe(time.perf_counter() - started[1])

    async def settle(self, call: Call, admission: Admission, refund: int, day: int) -> bool:
        started = time.perf_counter()
        try:
            return await self.state.settle(call, admission, refund, day) == 1
        except live_state.StateUnavailable as exc:
            raise errors.StateUnavailable(str(exc)) from exc
        finally:
            self.metrics.redis_settle.observe(time.perf_counter() - started)
