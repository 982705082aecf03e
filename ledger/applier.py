"""The exactly-once loop of one shard, run by the worker that holds the shard's lock.

How this works
--------------
1. Read the offset (``ledger_offsets.last_id``) from Postgres. It is the only
   record of progress: nothing is acknowledged in Redis.
2. Read the entries after the offset (XREAD) until the batch is full or
   ``ledger_max_wait`` passed since its first event.
3. One transaction, on the connection that holds the shard's advisory lock: lock
   the offset row and check it still is where the batch starts, COPY the raw
   events (their primary key would refuse a replay), one ledger line per account
   with the balance projection, rollups, signals, and the new offset. Commit.
4. Only then trim the stream through the new offset (``ledger_trim.lua``).

A crash before the commit leaves Postgres as it was: the next owner reads the
same entries again. A crash after the commit leaves entries at or below the
offset in the stream: nobody reads them again, and the next trim removes them.
So after a crash at any point nothing is lost and nothing counted twice. If the
lock's connection dies, Postgres drops the lock with it, and this loop fails on
its next statement: it can never commit for a shard it no longer owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from ledger import store, streams
from ledger.batching import Batch, batch_closed, plan_batch
from ledger.crash import CrashHook
from ledger.events import MalformedEvent, StreamId, UsageEvent, parse_event
from ledger.metrics import LedgerMetrics
from meter.live_state import StateUnavailable
from meter.settings import Settings

log = logging.getLogger("meter.ledger")

BACKOFF_MAX = 5.0


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; True when it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


@dataclass(slots=True)
class Shared:
    """What the shards of one worker share: clients, caches, metrics, the crash hook."""

    settings: Settings
    redis: aioredis.Redis
    metrics: LedgerMetrics
    crash: CrashHook
    clock: Callable[[], float]
    known_accounts: set[str]
    partitions: set[int]


class ShardApplier:
    """Applies one owned shard on the connection that holds its lock (steps 1-4 above)."""

    def __init__(self, shard: int, conn: asyncpg.Connection, shared: Shared) -> None:
        self.shard = shard
        self.conn = conn
        self.shared = shared
        self.offset = StreamId(0, 0)
        self._label = str(shard)

    async def run(self, release: asyncio.Event) -> None:
        """Until ``release`` is set; raises when the Postgres connection is lost."""
        self.offset = await store.load_offset(self.conn, self.shard)
        log.info("shard taken", extra={"shard": self.shard, "offset": str(self.offset)})
        await self._check_stream_ids()
        backoff = 0.05
        while not release.is_set():
            try:
                entries = await self.collect(release)
            except StateUnavailable as exc:
                self.shared.metrics.errors.labels("redis_read").inc()
                log.warning("redis read failed", extra={"shard": self.shard, "error": str(exc)})
                await wait_event(release, backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            backoff = 0.05
            if entries:
                await self.apply(entries)

    async def collect(self, release: asyncio.Event) -> list[streams.Entry]:
        """Read one batch: up to ``ledger_batch`` entries, closed ``ledger_max_wait`` after
        its first one arrived."""
        s, clock = self.shared.settings, self.shared.clock
        entries: list[streams.Entry] = []
        after, opened = self.offset, 0.0
        while True:
            wait = s.ledger_max_wait if not entries else s.ledger_max_wait - (clock() - opened)
            if entries and wait <= 0:
                break
            got = await self._read_unless_released(
                release, after, s.ledger_batch - len(entries), max(1, int(wait * 1000))
            )
            if got:
                if not entries:
                    opened = clock()
                    first = StreamId.parse(got[0][0])
                    self.shared.metrics.lag_seconds.labels(self._label).set(
                        max(0.0, opened - first.ms / 1000)
                    )
                entries += got
                after = StreamId.parse(got[-1][0])
            elif not entries:
                self.shared.metrics.lag_seconds.labels(self._label).set(0)
                return entries
            if (
                batch_closed(len(entries), opened, clock(), s.ledger_batch, s.ledger_max_wait)
                or release.is_set()
            ):
                break
        return entries

    async def _read_unless_released(
        self, release: asyncio.Event, after: StreamId, count: int, block_ms: int
    ) -> list[streams.Entry]:
        """A blocking read that gives up (reading has no side effects) once released."""
        if release.is_set():
            return []
        read = asyncio.ensure_future(
            streams.read(self.shared.redis, self.shard, after, count, block_ms)
        )
        released = asyncio.ensure_future(release.wait())
        try:
            await asyncio.wait((read, released), return_when=asyncio.FIRST_COMPLETED)
        finally:
            released.cancel()
        if not read.done():
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError, StateUnavailable):
                await read
            return []
        return read.result()

    async def apply(self, entries: list[streams.Entry]) -> None:
        shared, metrics = self.shared, self.shared.metrics
        shared.crash("after_read")
        batch = await self.plan(entries)
        days = {e.day for e in batch.events} - shared.partitions
        if days:
            await store.ensure_partitions(self.conn, days)
            shared.partitions.update(days)
        started = time.perf_counter()
        try:
            await store.apply_batch(self.conn, batch, step=shared.crash)
        except (store.OffsetMoved, asyncpg.UniqueViolationError) as exc:
            # Someone else applied this range (we must have lost the lock for a moment):
            # nothing was written; start again from what Postgres says.
            metrics.errors.labels("offset_moved").inc()
            log.error("batch refused", extra={"shard": self.shard, "error": str(exc)})
            self.offset = await store.load_offset(self.conn, self.shard)
            return
        except asyncpg.CheckViolationError as exc:
            # "no partition for the row": another worker's retention dropped a day this
            # worker believed it had; forget what it knows and read the batch again.
            metrics.errors.labels("partition").inc()
            log.warning("partition missing", extra={"shard": self.shard, "error": str(exc)})
            shared.partitions.clear()
            return
        shared.crash("after_commit")
        metrics.batch_seconds.observe(time.perf_counter() - started)
        metrics.batch_events.observe(len(batch.events))
        metrics.events_applied.labels(self._label).inc(len(batch.events))
        metrics.batches.labels(self._label).inc()
        for signal in batch.signals:
            metrics.signals.labels(signal.kind).inc()
        self.offset = batch.last
        try:
            removed = await streams.trim(shared.redis, self.shard, batch.last)
        except StateUnavailable as exc:  # the next trim covers it
            metrics.errors.labels("redis_trim").inc()
            log.warning("trim failed", extra={"shard": self.shard, "error": str(exc)})
        else:
            if removed > 0:
                metrics.trimmed.inc(removed)
        shared.crash("after_trim")

    async def plan(self, entries: list[streams.Entry]) -> Batch:
        events: list[UsageEvent] = []
        for entry_id, fields in entries:
            try:
                events.append(parse_event(entry_id, fields))
            except MalformedEvent as exc:
                self.shared.metrics.malformed_events.inc()
                log.error(
                    "malformed usage event skipped", extra={"shard": self.shard, "error": str(exc)}
                )
        known = self.shared.known_accounts
        unknown = {e.account_id for e in events} - known
        if unknown:
            known.update(await store.known_accounts(self.conn, unknown))
        batch = plan_batch(self.shard, self.offset, StreamId.parse(entries[-1][0]), events, known)
        if batch.orphans:
            orphan_set = set(batch.orphans)
            self.shared.metrics.orphan_events.inc(
                sum(1 for e in events if e.account_id in orphan_set)
            )
            log.error(
                "usage events of unknown accounts",
                extra={"shard": self.shard, "accounts": batch.orphans},
            )
        return batch

    async def _check_stream_ids(self) -> None:
        """Warn when the stream's ids restarted below our offset (Redis lost the stream):
        new events would sort before the offset and never be read until a repair."""
        try:
            last = await streams.last_generated_id(self.shared.redis, self.shard)
        except StateUnavailable:
            return
        if last is not None and last < self.offset:
            self.shared.metrics.errors.labels("stream_behind_offset").inc()
            log.error(
                "usage stream ids are behind the ledger offset; run `meter reconcile --repair`",
                extra={"shard": self.shard, "offset": str(self.offset), "stream_last": str(last)},
            )
