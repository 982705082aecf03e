"""A background loop that runs a step when Postgres tells it to, or when the step asks.

The loop LISTENs on one channel (a ``pg_notify`` in a transaction arrives at its
commit), runs ``step``, and waits for the next notification or for as long as the
step said it may wait (0: run again at once). Errors in ``passing`` (Postgres or Redis
away, a provider unreachable) are logged and retried with a back-off; the listening
connection is made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg


async def run_woken(
    dsn: str,
    channel: str,
    step: Callable[[], Awaitable[float]],
    stop: asyncio.Event,
    *,
    passing: tuple[type[BaseException], ...],
    log: logging.Logger,
) -> None:
    """Until ``stop``: ``step`` on every notification, and when the time it returned ends."""
    wake = asyncio.Event()
    listener: asyncpg.Connection | None = None
    backoff = 0.1
    while not stop.is_set():
        try:
            if listener is None or listener.is_closed():
                listener = await asyncpg.connect(dsn)
                await listener.add_listener(channel, lambda *_: wake.set())
            wake.clear()
            timeout = await step()
            backoff = 0.1
        except passing as exc:
            log.warning("%s loop: %s; retrying", channel, exc)
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close()
                listener = None
            timeout, backoff = backoff, min(5.0, backoff * 2)
        if timeout <= 0:
            continue
        waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
    if listener is not None:
        await listener.close()
