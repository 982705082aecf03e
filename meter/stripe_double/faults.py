"""Fault switches: the next matching API request fails in a chosen way.

``{"path_prefix": "/v1/payment_intents", "times": 1, "mode": ..., "seconds": 2}``
(``method`` optional, default POST). Modes:

- ``drop_after``: the request is performed (and its answer saved under its
  idempotency key), then the connection is closed unanswered: Stripe charged, the
  caller never heard.
- ``error_before``: a 500 ``api_error`` without performing it (nothing saved).
- ``delay``: wait ``seconds`` with the idempotency key claimed, then perform it (a
  second request with the key meanwhile gets the 409 Stripe gives).

It sits inside the idempotency layer, which is why ``error_before`` is marked as
answered before the endpoint began.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from meter.stripe_double.errors import stripe_error

Mode = Literal["drop_after", "error_before", "delay"]
MODES: tuple[Mode, ...] = ("drop_after", "error_before", "delay")
FAULT_APPLIED = "stripe_double.fault"


@dataclass(slots=True)
class Fault:
    path_prefix: str
    mode: Mode
    times: int = 1
    seconds: float = 0.0
    method: str = "POST"

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Fault:
        mode = raw.get("mode")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        prefix = raw.get("path_prefix", "/v1/")
        times, seconds = int(raw.get("times", 1)), float(raw.get("seconds", 0))
        if not isinstance(prefix, str) or times < 1 or seconds < 0:
            raise ValueError("path_prefix is a string, times >= 1, seconds >= 0")
        return cls(prefix, mode, times, seconds, str(raw.get("method", "POST")).upper())

    def describe(self) -> dict[str, Any]:
        return {
            "path_prefix": self.path_prefix,
            "mode": self.mode,
            "times": self.times,
            "seconds": self.seconds,
            "method": self.method,
        }


def middleware(next_fault: Callable[[web.Request], Fault | None]) -> Any:
    """``next_fault`` returns the fault for this request (used up by one) or None."""

    @web.middleware
    async def faults(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        fault = next_fault(request)
        if fault is None:
            return await handler(request)
        request[FAULT_APPLIED] = fault.mode
        if fault.mode == "error_before":
            return stripe_error(500, "api_error", "Fault injected by the double (error_before).")
        if fault.mode == "delay":
            await asyncio.sleep(fault.seconds)
            return await handler(request)
        response = await handler(request)
        if request.transport is not None:
            request.transport.abort()  # unanswered: the client sees the connection drop
        return response

    return faults
