"""The ledger worker: takes shards, applies each one exactly once, hands them over.

How this works
--------------
A shard is applied by whoever holds its Postgres advisory lock. Each owned shard
has a connection of its own that holds the lock and runs the shard's batches
(``applier.ShardApplier``: the exactly-once loop); if that connection dies,
Postgres drops the lock and another worker takes the shard on its next try
(every ``ledger_lock_retry`` seconds). Workers count each other through presence
locks and aim for a fair share (``ownership``), so a new worker is handed shards
and a dead one's are taken over, with no coordinator. The control connection
also runs the maintenance (day partitions, retention) and the periodic reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from ledger import store, streams
from ledger.applier import BACKOFF_MAX, ShardApplier, Shared, wait_event
from ledger.crash import CrashHook
from ledger.events import MS_PER_DAY
from ledger.metrics import LedgerMetrics
from ledger.ownership import plan_ownership
from ledger.reconcile import reconcile_and_export
from meter import postgres_errors
from meter.settings import Settings

log = logging.getLogger("meter.ledger")

Connect = Callable[[str], Awaitable[asyncpg.Connection]]

# What a lost or broken connection raises (asyncpg's InternalClientError shows up when a
# connection died in the middle of an operation).
PG_ERRORS = postgres_errors.UNAVAILABLE
MAINTENANCE_SECONDS = 600.0


@dataclass(slots=True)
class _Owned:
    conn: asyncpg.Connection
    release: asyncio.Event
    task: asyncio.Task[None]


class LedgerWorker:
    """Takes shards, runs a ``ShardApplier`` for each, hands shards over, reconciles."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        *,
        metrics: LedgerMetrics | None = None,
        crash: CrashHook | None = None,
        connect: Connect | None = None,
        clock: Callable[[], float] = time.time,
        reconcile: Callable[[asyncpg.Connection, frozenset[int]], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or LedgerMetrics()
        self.shared = Shared(
            settings,
            redis,
            self.metrics,
            crash or CrashHook.from_settings(settings),
            clock,
            set(),
            set(),
        )
        self._connect: Connect = connect or self._named_connect
        self._clock = clock
        self._reconcile = reconcile
        self._owned: dict[int, _Owned] = {}
        self._spare: asyncpg.Connection | None = None
        self._token = random.randrange(1, 2**31)
        self._start = random.randrange(settings.shards)
        self._last_control_ok = 0.0
        self.name = f"ledger-{uuid.uuid4().hex[:8]}"

    async def _named_connect(self, dsn: str) -> asyncpg.Connection:
        return await store.connect(dsn, name=self.name)

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(s for s, o in self._owned.items() if not o.task.done())

    @property
    def ready(self) -> bool:
        """The control connection answered within the last few lock tries."""
        return self._clock() - self._last_control_ok < max(3 * self.settings.ledger_lock_retry, 5.0)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        try:
            while not stop.is_set():
                try:
                    await self._control(stop)
                    backoff = 0.1
                except PG_ERRORS as exc:
                    # The shards' own connections fail (and are reaped) by themselves
                    # if Postgres is gone; a lost control connection alone costs nothing.
                    self.metrics.errors.labels("postgres").inc()
                    log.warning("postgres unavailable", extra={"error": repr(exc)})
                    await self._reap()
                    await wait_event(stop, backoff)
                    backoff = min(BACKOFF_MAX, backoff * 2)
        finally:
            await self._release_all()

    async def _control(self, stop: asyncio.Event) -> None:
        control = await self._connect(self.settings.database_url)
        try:
            await store.register_worker(control, self._token)
            next_maintenance = next_reconcile = self._clock()
            next_reconcile += self.settings.reconcile_interval
            while not stop.is_set():
                await self._rebalance(control)
                self._last_control_ok = self._clock()
                now = self._clock()
                if now >= next_maintenance:
                    await self._maintain(control)
                    next_maintenance = now + MAINTENANCE_SECONDS
                if self._reconcile and self.settings.reconcile_interval and now >= next_reconcile:
                    await self._reconcile_owned(control)
                    next_reconcile = self._clock() + self.settings.reconcile_interval
                await wait_event(stop, self.settings.ledger_lock_retry)
        finally:
            await self._close(control)

    async def _rebalance(self, control: asyncpg.Connection) -> None:
        await self._reap()
        workers = await store.count_workers(control)
        self.metrics.live_workers.set(workers)
        shards = range(self.settings.shards)
        move = plan_ownership(shards, self.owned, workers, self._start)
        for shard in move.release:
            log.info("handing shard over", extra={"shard": shard, "workers": workers})
            self._owned[shard].release.set()
        want = move.want
        for shard in move.candidates:
            if want <= 0:
                break
            if self._spare is None:
                self._spare = await self._connect(self.settings.database_url)
            try:
                taken = await store.try_lock_shard(self._spare, shard)
            except BaseException:
                spare, self._spare = self._spare, None
                await self._close(spare)
                raise
            if taken:
                self._take(shard, self._spare)
                self._spare = None
                want -= 1
        self.metrics.owned_shards.set(len(self.owned))

    def _take(self, shard: int, conn: asyncpg.Connection) -> None:
        release = asyncio.Event()
        applier = ShardApplier(shard, conn, self.shared)
        task = asyncio.create_task(applier.run(release), name=f"ledger-shard-{shard}")
        self._owned[shard] = _Owned(conn, release, task)

    async def _reap(self, *, force: bool = False) -> None:
        """Close the connections of shards whose applier ended (released or failed)."""
        for shard, owned in list(self._owned.items()):
            if force:
                owned.release.set()
            if not owned.task.done() and not force:
                continue
            try:
                await asyncio.wait_for(owned.task, self.settings.shutdown_grace)
            except PG_ERRORS as exc:
                self.metrics.errors.labels("shard_connection").inc()
                log.warning("shard connection lost", extra={"shard": shard, "error": repr(exc)})
            except Exception:
                self.metrics.errors.labels("shard").inc()
                log.exception("shard applier failed", extra={"shard": shard})
            del self._owned[shard]
            with contextlib.suppress(KeyError):
                self.metrics.lag_seconds.remove(str(shard))
            await self._close(owned.conn)

    async def _release_all(self) -> None:
        for owned in self._owned.values():
            owned.release.set()
        await self._reap(force=True)
        if self._spare is not None:
            await self._close(self._spare)
            self._spare = None
        self.metrics.owned_shards.set(0)

    async def _maintain(self, control: asyncpg.Connection) -> None:
        """Day partitions ahead of time; drop those past retention."""
        today = int(self._clock() * 1000) // MS_PER_DAY
        await store.ensure_partitions(control, range(today - 1, today + 3))
        self.shared.partitions.update(range(today - 1, today + 3))
        cutoff = today - self.settings.usage_retention_days + 1
        dropped = await store.drop_partitions_before(control, cutoff)
        self.shared.partitions.difference_update([d for d in self.shared.partitions if d < cutoff])
        if dropped:
            log.info("usage partitions dropped", extra={"partitions": dropped})

    async def _reconcile_owned(self, control: asyncpg.Connection) -> None:
        assert self._reconcile is not None
        try:
            await self._reconcile(control, self.owned)
        except PG_ERRORS:
            raise
        except Exception:  # a failed check must never stop the applying
            self.metrics.reconcile_runs.labels("error").inc()
            log.exception("reconcile failed")

    @staticmethod
    async def _close(conn: asyncpg.Connection) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 2)
        if not conn.is_closed():
            conn.terminate()


def redis_client(settings: Settings) -> aioredis.Redis:
    """The worker's Redis client: its socket timeout outlasts a blocking XREAD."""
    return streams.raw_xread(
        aioredis.Redis.from_url(
            settings.redis_url,
            socket_timeout=max(settings.redis_timeout, settings.ledger_max_wait + 5),
            socket_connect_timeout=settings.redis_timeout,
            health_check_interval=30,
        )
    )


def create_worker(
    settings: Settings, client: aioredis.Redis, metrics: LedgerMetrics | None = None
) -> LedgerWorker:
    """A worker that also reconciles its shards every ``reconcile_interval`` seconds."""
    metrics = metrics or LedgerMetrics()

    async def reconcile(conn: asyncpg.Connection, shards: frozenset[int]) -> None:
        await reconcile_and_export(conn, client, sorted(shards), metrics)

    return LedgerWorker(settings, client, metrics=metrics, reconcile=reconcile)


async def run(
    settings: Settings, *, stop: asyncio.Event | None = None, metrics: LedgerMetrics | None = None
) -> None:
    """Run a worker until ``stop`` is set (forever when None), without the HTTP server."""
    client = redis_client(settings)
    try:
        await create_worker(settings, client, metrics).run(stop or asyncio.Event())
    finally:
        await client.aclose()
