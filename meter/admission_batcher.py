"""Admissions made during one event-loop pass go to Redis together: one admit.lua call per shard.

How this works
--------------
``admit(call, day)`` only queues the call and returns a future. The first call
of a pass schedules ``_flush`` with ``loop.call_soon``, so it runs once every
handler that is ready in this pass has queued its call. ``_flush`` groups the
queue by (shard, day) -- one shard is one Redis Cluster slot and admit.lua
takes one day -- splits groups larger than ``max_batch``, and sends one EVALSHA
per group through the pipe, all written with one socket write. The pipe hands
each reply to its batch inside ``data_received``, which resolves the callers'
futures there: a future with a done callback would cost one more event-loop pass
before the callers wake (at one connection, one pass per call).

``cross_shard=True`` groups by day only: one script call per pass whatever the
shards (each call still uses its own shard's keys and stream). The keys then
span cluster slots, which a single Redis accepts and Redis Cluster refuses
(CROSSSLOT: every call of the batch fails closed, 503). With the default 16
shards and 64 calls per pass it is the difference between ~0.25 and ~0.02
script calls per admission.

A ``KeyCall`` (a call whose API key the gateway has not cached) carries only
the key's digest: admit.lua reads the key's hash and admits on the account it
names, in the same step, and its reply group carries the key's record. Its
shard is not known in advance, so it always goes out in a cross-slot script
call (with every shard's calls under ``cross_shard``, else in a group of its
own), which only a single Redis accepts: on a cluster the gateway looks keys
up first (``PipelinedState.resolves_keys``).

admit.lua decides the calls of a batch one after the other, each exactly as a
single call would be decided (the whole script is atomic), so batching changes
how many round trips there are, never an outcome: reply group i is call i's
admission and goes to call i's future. When the script call fails, every call
of that batch fails with a ``StateUnavailable`` (503); none is guessed.

A call answered 503 is not charged, even when the batch ran and only its reply
was lost (a timeout, a connection gone after the write). Each batch has a record
key (``BatchIds``, ``keys.admit_batch``) under which admit.lua keeps the event
ids of its debits; the next batch on the same slot deletes it once the reply is
in. A batch written whose reply never came goes to ``lost`` (the gateway's
``RefundRetry``), which runs void.lua on it once Redis answers: the debits it
names are refunded, and a batch that had not run never will. A batch that was
never written (``RedisNotSent``) needs none of that. Measured cost (callgrind,
redis-server 7.0): 95,392 against 93,091 instructions per admission in batches
of 22, 163,030 against 132,072 for a batch of one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from meter.live_state import (
    Admission,
    AnsweredRecords,
    BatchIds,
    Call,
    KeyCall,
    LostBatch,
    StateUnavailable,
    admit_arguments,
    parse_admit_reply,
    resolved_flags,
)
from meter.redis_pipe import RedisNotSent, RedisPipe, RedisReplyError, Reply
from meter.scripts import ADMIT

log = logging.getLogger("meter.admission")

Listener = Callable[[], object]
_Queued = tuple[Call | KeyCall, int, "asyncio.Future[Admission]", Listener | None]


class AdmissionBatcher:
    def __init__(self, pipe: RedisPipe, *, max_batch: int = 256, cross_shard: bool = False) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.pipe = pipe
        self.max_batch = max_batch
        self.cross_shard = cross_shard
        self._queue: list[_Queued] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batch_ids = BatchIds()
        self.lost: LostBatch | None = None  # set by the wiring: voids lost batches
        self._answered = AnsweredRecords()  # the next batch on their shard deletes them

    def admit(
        self, call: Call | KeyCall, day: int, listener: Listener | None = None
    ) -> asyncio.Future[Admission]:
        """Queue ``call``; the future resolves with its own admission, decided atomically.
        ``listener`` is called as soon as the future is done (with a result or not), in
        the pipe's ``data_received``: a done callback would run a loop pass later.

        A ``KeyCall`` is grouped with every shard (its shard is not known yet): it needs
        ``cross_shard``, or its batch fails on a cluster like any cross-slot batch."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Admission] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((call, day, fut, listener))
        return fut

    async def admit_many(self, calls: Sequence[Call | KeyCall], day: int) -> list[Admission]:
        return list(await asyncio.gather(*[self.admit(call, day) for call in calls]))

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        groups: dict[tuple[int | None, int], list[_Queued]] = {}
        cross_shard = self.cross_shard
        for item in queue:
            group_key = (None if cross_shard else item[0].shard, item[1])
            group = groups.get(group_key)
            if group is None:
                groups[group_key] = [item]
            else:
                group.append(item)
        size = self.max_batch
        for (shard, day), items in groups.items():
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                batch = _Batch(chunk, self)
                try:
                    calls = [item[0] for item in chunk]
                    key = self.batch_ids.key(shard)
                    done = self._answered.take(shard)
                    key_names, args = admit_arguments(calls, day, shard, key, delete=done)
                    batch.resolved = resolved_flags(calls)
                except Exception as exc:  # a bug must not leave callers waiting forever
                    batch.set_exception(StateUnavailable(f"admission batch not sent: {exc!r}"))
                    continue
                batch.key, batch.shard, batch.day = key, shard, day
                self.pipe.evalsha_to(batch, ADMIT, key_names, args)
        self.pipe.flush()

    def answered(self, batch: _Batch) -> None:
        """The batch's reply is in: its record is not needed. The next batch on its slot
        deletes it (no command, write or Redis wake-up of its own); a record left when
        that slot's traffic stops expires."""
        if batch.key is not None:
            self._answered.add(batch.shard, batch.key)

    def reply_lost(self, batch: _Batch) -> None:
        """The batch was sent and no reply came: its calls are answered 503, and what it
        may have debited is voided (``lost``)."""
        if batch.key is not None and self.lost is not None:
            try:
                self.lost(batch.key, [item[0] for item in batch.items], batch.day)
            except Exception:  # raised here, it would break the pipe's failure path
                log.exception("lost admission batch not voided", extra={"batch": batch.key})


class _Batch:
    """One admit.lua call's callers; the pipe hands it the reply inside ``data_received``,
    and each caller's future gets its own admission there (no loop pass in between)."""

    __slots__ = ("batcher", "day", "delivered", "items", "key", "resolved", "shard")

    def __init__(self, items: list[_Queued], batcher: AdmissionBatcher) -> None:
        self.items = items
        self.batcher = batcher
        self.resolved: list[bool] | None = None
        self.delivered = False
        self.key: str | None = None  # the batch's record, once it is sent
        self.shard: int | None = None
        self.day = 0

    def done(self) -> bool:
        return self.delivered

    def set_result(self, reply: Reply) -> None:
        items = self.items
        try:
            admissions = parse_admit_reply(reply, self.resolved)
            if len(admissions) != len(items):
                raise ValueError(f"{len(admissions)} admissions for {len(items)} calls")
        except Exception as exc:  # raised here, it would break the pipe's reply loop
            self.set_exception(RedisReplyError(f"unexpected admit.lua reply: {exc!r}"))
            return
        self.delivered = True
        self.batcher.answered(self)
        for (_, _, fut, listener), admission in zip(items, admissions, strict=True):
            if not fut.done():
                fut.set_result(admission)
                if listener is not None:
                    _tell(listener)

    def set_exception(self, error: BaseException) -> None:
        self.delivered = True
        if not isinstance(error, StateUnavailable):
            error = StateUnavailable(f"redis error: {error!r}")
        _fail(self.items, error)
        if not isinstance(error, RedisNotSent):  # it may have run: its callers got 503
            self.batcher.reply_lost(self)


def _fail(items: list[_Queued], error: StateUnavailable) -> None:
    for _, _, fut, listener in items:
        if not fut.done():
            fut.set_exception(type(error)(*error.args))
            if listener is not None:
                _tell(listener)


def _tell(listener: Listener) -> None:
    try:
        listener()
    except Exception:  # one caller's bug must not keep the batch's others waiting
        log.exception("admission listener failed")
