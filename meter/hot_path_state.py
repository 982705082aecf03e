"""What the gateway needs of an account's live state, and its fast implementation.

``HotPathState`` is the seam the gateway is written against; the gateway is
handed ``PipelinedState`` (this module: admissions batched per loop pass by
``AdmissionBatcher``, every command through one ``RedisPipe``). ``LiveState``
(redis.asyncio, one script call per ``admit_many``) fits the same seam for
tools and tests. Both run the same Lua scripts with the same KEYS and ARGV, so
they agree on every outcome; both raise ``StateUnavailable`` (503) when Redis
cannot answer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from meter import keys
from meter.admission_batcher import AdmissionBatcher, Listener
from meter.live_state import (
    API_KEY_FIELDS,
    Admission,
    Call,
    KeyCall,
    KeyRecord,
    PriceSpec,
    StateUnavailable,
    debited_calls,
    key_record,
    parse_price_spec,
    settle_arguments,
)
from meter.redis_pipe import RedisPipe, RedisReplyError, Reply
from meter.scripts import SETTLE, VOID


def _to_key_record(record: asyncio.Future[KeyRecord | None], reply: asyncio.Future[Reply]) -> None:
    if record.done():
        return
    if reply.cancelled():
        record.set_exception(StateUnavailable("key lookup cancelled"))
        return
    error = reply.exception()
    if error is None:
        try:
            record.set_result(key_record(cast(list[Any], reply.result())))
        except (ValueError, TypeError) as exc:
            record.set_exception(RedisReplyError(f"unexpected HMGET reply: {exc}"))
    else:
        record.set_exception(error)


if TYPE_CHECKING:
    from meter.live_state import LiveState
    from meter.settings import Settings


class HotPathState(Protocol):
    @property
    def resolves_keys(self) -> bool:
        """Whether the gateway may hand ``admit`` a ``KeyCall`` (a single Redis only)."""
        ...

    def admit(self, call: Call | KeyCall, day: int) -> Awaitable[Admission]: ...

    def admit_many(
        self, calls: Sequence[Call | KeyCall], day: int
    ) -> Awaitable[list[Admission]]: ...

    def settle(
        self, call: Call, admitted: Admission, refund: int, admitted_day: int
    ) -> Awaitable[int]: ...

    def void(
        self, batch_key: str, calls: Sequence[Call | KeyCall]
    ) -> Awaitable[list[tuple[Call, str]]]: ...

    def get_api_key(self, key_hash_hex: str) -> Awaitable[KeyRecord | None]: ...

    def get_price_table(self, shard: int, table_id: str) -> Awaitable[PriceSpec | None]: ...

    def ping(self) -> Awaitable[None]: ...

    def close(self) -> Awaitable[None]: ...


class PipelinedState:
    """``HotPathState`` over one ``RedisPipe``: batched admissions, pipelined everything."""

    def __init__(self, pipe: RedisPipe, *, max_batch: int = 256, cross_shard: bool = False) -> None:
        self.pipe = pipe
        self.batcher = AdmissionBatcher(pipe, max_batch=max_batch, cross_shard=cross_shard)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 1.0,
        connections: int = 1,
        max_batch: int = 256,
        cross_shard: bool = False,
    ) -> PipelinedState:
        """See ``RedisPipe`` and ``AdmissionBatcher`` (``cross_shard``: a single Redis only)."""
        pipe = RedisPipe(url, timeout=timeout, connections=connections)
        return cls(pipe, max_batch=max_batch, cross_shard=cross_shard)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        connections: int = 1,
        max_batch: int = 256,
        cross_shard: bool = False,
    ) -> PipelinedState:
        """``METER_REDIS_URL`` and ``METER_REDIS_TIMEOUT``; the rest are not settings yet."""
        return cls.from_url(
            settings.redis_url,
            timeout=settings.redis_timeout,
            connections=connections,
            max_batch=max_batch,
            cross_shard=cross_shard,
        )

    async def choose_batching(self) -> bool:
        """Batch the admissions of every shard into one script call unless Redis is a
        cluster node (which refuses keys of several slots in one call); the choice."""
        info = await self.pipe.submit("INFO", "cluster")
        text = info.decode() if isinstance(info, bytes) else str(info)
        self.batcher.cross_shard = "cluster_enabled:1" not in text
        return self.batcher.cross_shard

    @property
    def resolves_keys(self) -> bool:
        """As ``cross_shard`` (``choose_batching``): a ``KeyCall`` is a cross-slot call."""
        return self.batcher.cross_shard

    def admit(
        self, call: Call | KeyCall, day: int, listener: Listener | None = None
    ) -> asyncio.Future[Admission]:
        return self.batcher.admit(call, day, listener)

    async def admit_many(self, calls: Sequence[Call | KeyCall], day: int) -> list[Admission]:
        return await self.batcher.admit_many(calls, day)

    async def settle(self, call: Call, admitted: Admission, refund: int, admitted_day: int) -> int:
        """Refund ``refund`` micros of an admitted call, once. Returns 1, 0 (already) or -1."""
        if refund <= 0:
            return 0
        key_names, args = settle_arguments(call, admitted, refund, admitted_day)
        reply = await self.pipe.evalsha(SETTLE, key_names, args)
        return int(reply[0])

    async def void(self, batch_key: str, calls: Sequence[Call | KeyCall]) -> list[tuple[Call, str]]:
        """An admission batch whose reply was lost (void.lua): each call it debited, with
        the debit's event id, or none if it has not run (it then never will)."""
        reply = await self.pipe.evalsha(VOID, [batch_key], [keys.BATCH_RECORD_TTL_SECONDS])
        return debited_calls(calls, reply)

    def get_api_key(self, key_hash_hex: str) -> asyncio.Future[KeyRecord | None]:
        """A future, not a coroutine: a key-cache miss costs no task (see ``identity.py``)."""
        reply = self.pipe.submit("HMGET", keys.api_key(key_hash_hex), *API_KEY_FIELDS)
        record: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        reply.add_done_callback(functools.partial(_to_key_record, record))
        return record

    async def get_price_table(self, shard: int, table_id: str) -> PriceSpec | None:
        raw = await self.pipe.submit("HGET", keys.price_table(shard, table_id), keys.PRICES_SPEC)
        return None if raw is None else parse_price_spec(cast(bytes, raw))

    async def ping(self) -> None:
        reply = await self.pipe.submit("PING")
        if reply != b"PONG":
            raise StateUnavailable(f"redis answered PING with {reply!r}")

    async def close(self) -> None:
        await self.pipe.close()


if TYPE_CHECKING:

    def _both_fit(a: LiveState, b: PipelinedState) -> tuple[HotPathState, HotPathState]:
        return a, b
