"""The ledger's Redis adapter: read and trim the usage streams, and the atomic reads
and writes of reconcile and repair. It translates; Lua does what must be atomic.

Redis errors leave this module as ``meter.live_state.StateUnavailable``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from ledger.events import StreamId
from meter import keys
from meter.live_state import StateUnavailable
from meter.scripts import LEDGER_BALANCES, LEDGER_HOLD, LEDGER_REPAIR, LEDGER_TRIM, LuaScript

T = TypeVar("T")
# A stream entry: its id and its fields, as a dict (redis-py's reply callback) or as the
# flat list of the raw reply (see ``raw_xread``); ``events.parse_event`` takes either.
Entry = tuple[bytes, Any]

RANGE_CHUNK = 10_000


async def _translated(aw: Awaitable[T]) -> T:
    try:
        return await aw
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise StateUnavailable(f"redis unreachable: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise StateUnavailable(f"redis error: {exc}") from exc


async def _evalsha(
    client: aioredis.Redis, script: LuaScript, key_names: Sequence[str], args: Sequence[Any]
) -> Any:
    async def call() -> Any:
        try:
            return await client.evalsha(script.sha, len(key_names), *key_names, *args)
        except redis.exceptions.NoScriptError:
            await client.script_load(script.source)
            return await client.evalsha(script.sha, len(key_names), *key_names, *args)

    return await _translated(call())


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


# -- the worker ----------------------------------------------------------------------


def raw_xread(client: aioredis.Redis) -> aioredis.Redis:
    """Skip redis-py's XREAD reply callback on this client (it builds a dict per entry,
    half the cost of reading a batch); ``read`` understands both shapes."""
    client.set_response_callback("XREAD", lambda response, **_: response)
    return client


def _xread_entries(reply: Any) -> list[Entry]:
    if not reply:
        return []
    if isinstance(reply, dict):  # {stream: entries}
        (entries,) = reply.values()
    else:  # [[stream, entries]]
        entries = reply[0][1]
    return entries  # type: ignore[no-any-return]


async def read(
    client: aioredis.Redis, shard: int, after: StreamId, count: int, block_ms: int | None
) -> list[Entry]:
    """Entries after ``after`` (at most ``count``); waits up to ``block_ms`` when there are none."""
    reply: Any = await _translated(
        client.xread({keys.usage_stream(shard): str(after)}, count=count, block=block_ms)
    )
    return _xread_entries(reply)


async def read_range(
    client: aioredis.Redis, shard: int, after: StreamId, through: StreamId
) -> list[Entry]:
    """Every entry in (after, through], in chunks."""
    out: list[Entry] = []
    start = after
    while start < through:
        chunk: Any = await _translated(
            client.xrange(keys.usage_stream(shard), f"({start}", str(through), count=RANGE_CHUNK)
        )
        if not chunk:
            break
        out += chunk
        start = StreamId.parse(chunk[-1][0])
        if len(chunk) < RANGE_CHUNK:
            break
    return out


async def trim(client: aioredis.Redis, shard: int, through: StreamId) -> int:
    """Trim through ``through`` (committed). Returns entries removed, -1 when held."""
    reply = await _evalsha(
        client,
        LEDGER_TRIM,
        [keys.usage_stream(shard), keys.ledger_trimmed(shard), keys.ledger_holds(shard)],
        [str(through)],
    )
    return int(reply[0])


async def newest_id(client: aioredis.Redis, shard: int) -> StreamId | None:
    """The newest entry's id; None when the stream is empty."""
    last: Any = await _translated(client.xrevrange(keys.usage_stream(shard), "+", "-", count=1))
    return StreamId.parse(last[0][0]) if last else None


async def last_generated_id(client: aioredis.Redis, shard: int) -> StreamId | None:
    """The stream's last id ever generated; None when the stream does not exist."""
    try:
        info = await _translated(client.xinfo_stream(keys.usage_stream(shard)))
    except StateUnavailable as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    return StreamId.parse(info["last-generated-id"])


# -- reconcile and repair ------------------------------------------------------------


async def hold(client: aioredis.Redis, shard: int, token: str, ttl_ms: int) -> None:
    """Pause trimming of the shard's stream for up to ``ttl_ms`` (0 releases)."""
    await _evalsha(client, LEDGER_HOLD, [keys.ledger_holds(shard)], [token, ttl_ms])


async def trimmed_through(client: aioredis.Redis, shard: int) -> StreamId:
    raw = await _translated(client.get(keys.ledger_trimmed(shard)))
    return StreamId(0, 0) if raw is None else StreamId.parse(raw)


@dataclass(frozen=True, slots=True)
class RedisBalances:
    newest: StreamId  # the newest stream entry when the balances were read
    balances: dict[str, int | None]  # None: the account hash is missing
    applied_credits: dict[str, frozenset[str]]  # of the credits asked about, those Redis applied


async def read_balances(
    client: aioredis.Redis,
    shard: int,
    offset: StreamId,
    accounts: Sequence[tuple[str, Sequence[str]]],
) -> RedisBalances | None:
    """Balances of ``accounts`` (id, pending credit ids) at one instant; None when stale
    (the stream was trimmed past ``offset``: read Postgres again)."""
    key_names = [keys.usage_stream(shard), keys.ledger_trimmed(shard)]
    args: list[Any] = [str(offset), len(accounts)]
    for account_id, credit_ids in accounts:
        key_names += [keys.account(shard, account_id), keys.credits_applied(shard, account_id)]
        args += [len(credit_ids), *credit_ids]
    reply = await _evalsha(client, LEDGER_BALANCES, key_names, args)
    if int(reply[0]) == 0:
        return None
    balances: dict[str, int | None] = {}
    applied: dict[str, frozenset[str]] = {}
    j = 2
    for account_id, credit_ids in accounts:
        exists, bal = int(reply[j]), int(reply[j + 1])
        balances[account_id] = bal if exists else None
        flags = reply[j + 2 : j + 2 + len(credit_ids)]
        applied[account_id] = frozenset(c for c, f in zip(credit_ids, flags, strict=True) if int(f))
        j += 2 + len(credit_ids)
    return RedisBalances(StreamId.parse(_text(reply[1])), balances, applied)


@dataclass(frozen=True, slots=True)
class RepairAccount:
    """What the repair script writes for one account (see ledger_repair.lua's ARGV)."""

    account_id: str
    balance: int  # Postgres balance minus the unapplied events up to the read-through id
    spent_today: int
    version: int
    overage_line: int
    daily_hard_limit: int  # -1 none
    daily_notify_threshold: int
    low_balance_threshold: int
    status: str  # a | s | p (keys.account_status)
    notify_fired_day: int  # -1 none
    limit_fired_day: int
    credits: tuple[tuple[str, int], ...]  # (credit id, applied at ms)
    revoked_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RepairResult:
    created: int
    rebuilt: int


async def repair_accounts(
    client: aioredis.Redis,
    shard: int,
    offset: StreamId,
    through: StreamId,
    today: int,
    accounts: Sequence[RepairAccount],
) -> RepairResult | None:
    """Run ledger_repair.lua; None when stale (re-read Postgres)."""
    key_names = [keys.usage_stream(shard), keys.ledger_trimmed(shard)]
    args: list[Any] = [str(offset), str(through), today, len(accounts)]
    for a in accounts:
        key_names += [keys.account(shard, a.account_id), keys.credits_applied(shard, a.account_id)]
        args += [
            a.account_id,
            a.balance,
            a.spent_today,
            a.version,
            a.overage_line,
            a.daily_hard_limit,
            a.daily_notify_threshold,
            a.low_balance_threshold,
            a.status,
            a.notify_fired_day,
            a.limit_fired_day,
            len(a.credits),
            len(a.revoked_keys),
        ]
        for credit_id, at_ms in a.credits:
            args += [credit_id, at_ms]
        args += list(a.revoked_keys)
    reply = await _evalsha(client, LEDGER_REPAIR, key_names, args)
    if int(reply[0]) == 0:
        return None
    return RepairResult(int(reply[1]), int(reply[2]))
