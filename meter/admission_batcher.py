"""Admissions made during one event-loop pass go to Redis together: one admit.lua call per shard.

How this works
--------------
``admit(call, day)`` only queues the call and returns a future. The first call
of a pass schedules ``_flush`` with ``loop.call_soon``, so it runs once every
handler that is ready in this pass has queued its call. ``_flush`` groups the
queue by (shard, day) -- one shard is one Redis Cluster slot and admit.lua
takes one day -- splits groups larger than ``max_batch``, and sends one EVALSHA
per group through the pipe, all written with one socket write.

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
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence

from meter.live_state import (
    Admission,
    Call,
    KeyCall,
    StateUnavailable,
    admit_arguments,
    parse_admit_reply,
    resolved_flags,
)
from meter.redis_pipe import RedisPipe, RedisReplyError, Reply
from meter.scripts import ADMIT

_Queued = tuple[Call | KeyCall, int, "asyncio.Future[Admission]"]


class AdmissionBatcher:
    def __init__(self, pipe: RedisPipe, *, max_batch: int = 256, cross_shard: bool = False) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.pipe = pipe
        self.max_batch = max_batch
        self.cross_shard = cross_shard
        self._queue: list[_Queued] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def admit(self, call: Call | KeyCall, day: int) -> asyncio.Future[Admission]:
        """Queue ``call``; the future resolves with its own admission, decided atomically.

        A ``KeyCall`` is grouped with every shard (its shard is not known yet): it needs
        ``cross_shard``, or its batch fails on a cluster like any cross-slot batch."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Admission] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((call, day, fut))
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
                futures = [fut for _, _, fut in chunk]
                try:
                    calls = [call for call, _, _ in chunk]
                    key_names, args = admit_arguments(calls, day, shard)
                    resolved = resolved_flags(calls)
                    reply = self.pipe.evalsha(ADMIT, key_names, args)
                except Exception as exc:  # a bug must not leave callers waiting forever
                    _fail(futures, StateUnavailable(f"admission batch not sent: {exc!r}"))
                    continue
                reply.add_done_callback(functools.partial(_deliver, futures, resolved))
        self.pipe.flush()


def _deliver(
    futures: list[asyncio.Future[Admission]],
    resolved: list[bool] | None,
    reply: asyncio.Future[Reply],
) -> None:
    if reply.cancelled():
        _fail(futures, StateUnavailable("admission batch cancelled"))
        return
    error = reply.exception()
    if error is None:
        try:
            admissions = parse_admit_reply(reply.result(), resolved)
            if len(admissions) != len(futures):
                raise ValueError(f"{len(admissions)} admissions for {len(futures)} calls")
        except (ValueError, TypeError, IndexError) as exc:
            error = RedisReplyError(f"unexpected admit.lua reply: {exc}")
        else:
            for fut, admission in zip(futures, admissions, strict=True):
                if not fut.done():
                    fut.set_result(admission)
            return
    if not isinstance(error, StateUnavailable):
        error = StateUnavailable(f"redis error: {error!r}")
    _fail(futures, error)


def _fail(futures: list[asyncio.Future[Admission]], error: StateUnavailable) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_exception(type(error)(*error.args))
