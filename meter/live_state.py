"""The Redis adapter for an account's live state: it translates, it does not decide.

Every change to an account's money goes through one Lua script (``scripts``);
this module only builds KEYS/ARGV, runs the script and turns the reply into
values. Redis errors are translated here, once, into ``StateUnavailable``.

``admit_many`` runs admit.lua as the gateway's pipelined state
(``hot_path_state.py``) does, one script call per Redis Cluster slot, for the
tools, benchmarks and tests that admit calls without a gateway; the KEYS/ARGV
builders and reply parsers here are shared with it.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from meter import keys
from meter.money import NONE, AccountState, Outcome, Signal
from meter.scripts import (
    ADMIT,
    ADMIT_REPLY_PER_CALL,
    CREDIT,
    RECHARGE_STATE,
    SETTLE,
    SYNC_ACCOUNT,
    VOID,
    LuaScript,
)


class StateUnavailable(Exception):
    """Redis could not be reached or answered with an error; nothing is known to have changed."""


class Call(NamedTuple):
    """One call to admit: who pays, for what, how much (micros). Named tuples, like
    ``KeyRecord``: a gateway builds one per key-cache miss, in 0.3 us where a frozen
    dataclass takes 1.2 us."""

    shard: int
    account_id: str
    project_id: str
    key_id: str
    route: str
    price: int


# Told of an admission whose reply never came: its record's key, its calls, their day.
LostBatch = Callable[[str, list["Call | KeyCall"], int], object]


class KeyRecord(NamedTuple):
    key_id: str
    project_id: str
    account_id: str
    shard: int


class KeyCall(NamedTuple):
    """A call whose API key the gateway has not resolved: admit.lua reads the key's hash
    itself (one step instead of a lookup and then the admission) and answers with the
    key's record. Its keys are not declared, so only a single (non-cluster) Redis runs it."""

    digest: str  # SHA-256 hex of the API key
    route: str
    price: int
    shard: None = None  # batched with every shard's calls


class Admission(NamedTuple):
    """admit.lua's answer for one call (a named tuple: one is built per call, in 0.2 us
    where a frozen dataclass takes 0.9 us)."""

    outcome: Outcome
    balance: int
    available: int
    limit_remaining: int | None
    signals: Signal
    # The usage event's stream id ("" when none was written); for NO_CREDIT, which
    # writes none, the account's auto-recharge state instead (admit.lua's reply).
    event_id: str
    key: KeyRecord | None = None  # a KeyCall's key, as admit.lua read it (None: unknown)
    # The account's price table (a plan's id) and the price it admitted the call at,
    # when the table prices the call's route; None: the call's own price.
    price_table: str | None = None
    price: int | None = None

    @property
    def admitted(self) -> bool:
        return self.outcome is Outcome.ADMITTED


@dataclass(frozen=True, slots=True)
class AccountConfig:
    """The limits and status of an account as written in Postgres, with their version."""

    version: int
    overage_line: int
    daily_hard_limit: int | None
    daily_notify_threshold: int | None
    low_balance_threshold: int | None
    suspended: bool
    # The account must have a payment method and has none on file (Postgres decides).
    payment_method_required: bool = False
    price_table: str | None = None  # its plan's, when the plan has prices of its own

    @property
    def status(self) -> str:
        return keys.account_status(
            suspended=self.suspended,
            payment_method_required=self.payment_method_required,
            price_table=self.price_table,
        )


API_KEY_FIELDS = ("id", "project", "account", "shard")  # of an API key's hash


def key_record(values: Sequence[Any]) -> KeyRecord | None:
    """An API key's record from HMGET of ``API_KEY_FIELDS``; None when the key is unknown."""
    key_id, project, account, shard = values
    if key_id is None or project is None or account is None or shard is None:
        return None
    return KeyRecord(_str(key_id), _str(project), _str(account), int(shard))


def _opt(value: int | None) -> str:
    return str(NONE if value is None else value)


def _from_opt(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    value = int(raw)
    return None if value < 0 else value


def _str(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class LiveState:
    def __init__(self, client: aioredis.Redis, *, clock: Callable[[], float] = time.time) -> None:
        self.redis = client
        self.clock = clock
        self.batch_ids = BatchIds()

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 1.0, **kwargs: Any) -> LiveState:
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            max_connections=kwargs.pop("max_connections", 256),
        )
        return cls(client, **kwargs)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> None:
        await self._translated(self.redis.ping())

    async def _run(self, script: LuaScript, key_names: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._translated(self._evalsha(script, key_names, args))

    async def _evalsha(
        self, script: LuaScript, key_names: Sequence[str], args: Sequence[Any]
    ) -> Any:
        try:
            return await self.redis.evalsha(script.sha, len(key_names), *key_names, *args)
        except redis.exceptions.NoScriptError:
            await self.redis.script_load(script.source)
            return await self.redis.evalsha(script.sha, len(key_names), *key_names, *args)

    @staticmethod
    async def _translated(aw: Awaitable[Any]) -> Any:
        try:
            return await aw
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise StateUnavailable(f"redis unreachable: {exc}") from exc
        except redis.exceptions.RedisError as exc:
            raise StateUnavailable(f"redis error: {exc}") from exc

    # -- the hot path -----------------------------------------------------------------

    # The gateway does not hand this adapter ``KeyCall`` s (it cannot tell a single Redis
    # from a cluster node); it runs them all the same, for tests and tools.
    resolves_keys = False

    async def admit_many(self, calls: Sequence[Call | KeyCall], day: int) -> list[Admission]:
        """Admit each call (atomically each); one script call per shard."""
        by_shard: dict[int | None, list[int]] = {}
        for i, call in enumerate(calls):
            by_shard.setdefault(call.shard, []).append(i)
        results: list[Admission | None] = [None] * len(calls)
        for shard, indexes in by_shard.items():
            group = [calls[i] for i in indexes]
            key_names, args = admit_arguments(
                group, day, shard, self.batch_ids.key(shard), keep_record=False
            )
            reply = await self._run(ADMIT, key_names, args)
            resolved = resolved_flags(group)
            for i, admission in zip(indexes, parse_admit_reply(reply, resolved), strict=True):
                results[i] = admission
        return results  # type: ignore[return-value]

    async def admit(self, call: Call | KeyCall, day: int) -> Admission:
        return (await self.admit_many([call], day))[0]

    async def void(self, batch_key: str, calls: Sequence[Call | KeyCall]) -> list[tuple[Call, str]]:
        """An admission whose reply was lost (void.lua): each call it debited, with the
        debit's event id, or none if it has not run (it then never will)."""
        reply = await self._run(VOID, [batch_key], [keys.BATCH_RECORD_TTL_SECONDS])
        return debited_calls(calls, reply)

    async def settle(self, call: Call, admitted: Admission, refund: int, admitted_day: int) -> int:
        """Refund ``refund`` micros of an admitted call, once. Returns 1, 0 (already) or -1."""
        if refund <= 0:
            return 0
        reply = await self._run(SETTLE, *settle_arguments(call, admitted, refund, admitted_day))
        return int(reply[0])

    # -- admin writes (each idempotent) ------------------------------------------------

    async def credit(
        self, shard: int, account_id: str, credit_id: str, amount: int
    ) -> tuple[int, int]:
        """Apply a credit once. Returns (status, balance): 1 credited, 0 already, -1 no account."""
        reply = await self._run(
            CREDIT,
            [keys.account(shard, account_id), keys.credits_applied(shard, account_id)],
            [credit_id, amount, int(self.clock() * 1000), keys.CREDIT_MEMORY_MS],
        )
        return int(reply[0]), int(reply[1])

    async def sync_account(self, shard: int, account_id: str, config: AccountConfig) -> bool:
        """Apply limits/status at ``config.version`` unless Redis has it already."""
        reply = await self._run(
            SYNC_ACCOUNT,
            [keys.account(shard, account_id)],
            [
                config.version,
                config.overage_line,
                _opt(config.daily_hard_limit),
                _opt(config.daily_notify_threshold),
                _opt(config.low_balance_threshold),
                config.status,
            ],
        )
        return int(reply[0]) == 1

    async def set_recharge_state(self, shard: int, account_id: str, state: str | None) -> None:
        """Record the account's auto-recharge state (``keys.RECHARGE_STATES``; None: none),
        which a no-credit refusal reports; an account Redis does not have is left alone."""
        if state is not None and state not in keys.RECHARGE_STATES:
            raise ValueError(f"unknown auto-recharge state {state!r}")
        await self._run(RECHARGE_STATE, [keys.account(shard, account_id)], [state or ""])

    async def revoke_key(self, shard: int, account_id: str, key_id: str) -> None:
        await self._translated(
            self.redis.hset(keys.account(shard, account_id), keys.revoked_field(key_id), "1")
        )

    async def put_api_key(self, key_hash_hex: str, record: KeyRecord) -> None:
        await self._translated(
            self.redis.hset(
                keys.api_key(key_hash_hex),
                mapping={
                    "id": record.key_id,
                    "project": record.project_id,
                    "account": record.account_id,
                    "shard": record.shard,
                },
            )
        )

    async def put_price_table_on(self, shard: int, table_id: str, spec: PriceSpec) -> None:
        """A plan's prices on one shard (``keys.price_table``), where its accounts live. A
        table never changes once written, so writing it again is harmless."""
        fields = price_table_fields(spec)
        await self._translated(
            self.redis.hset(keys.price_table(shard, table_id), mapping=dict(fields.items()))
        )

    async def get_price_table(self, shard: int, table_id: str) -> PriceSpec | None:
        raw = await self._translated(
            self.redis.hget(keys.price_table(shard, table_id), keys.PRICES_SPEC)
        )
        return None if raw is None else parse_price_spec(raw)

    # -- reads ------------------------------------------------------------------------

    async def get_api_key(self, key_hash_hex: str) -> KeyRecord | None:
        return key_record(
            await self._translated(self.redis.hmget(keys.api_key(key_hash_hex), *API_KEY_FIELDS))
        )

    async def read_account(self, shard: int, account_id: str) -> AccountState | None:
        raw = await self._translated(self.redis.hgetall(keys.account(shard, account_id)))
        if not raw:
            return None
        return account_state_from_hash(raw)


def account_state_from_hash(raw: dict[bytes, bytes]) -> AccountState:
    def num(name: bytes, default: int) -> int:
        value = raw.get(name)
        return default if value is None else int(value)

    return AccountState(
        balance=num(b"bal", 0),
        overage_line=num(b"ovl", 0),
        daily_hard_limit=_from_opt(raw.get(b"lim")),
        daily_notify_threshold=_from_opt(raw.get(b"ntf")),
        low_balance_threshold=_from_opt(raw.get(b"rth")),
        suspended=raw.get(b"st") == b"s",
        payment_method_required=raw.get(b"st") == b"p",
        day=num(b"day", 0),
        spent_today=num(b"spt", 0),
        notify_fired_day=num(b"nfd", NONE),
        limit_fired_day=num(b"lfd", NONE),
        low_fired=raw.get(b"low") == b"1",
    )


# A plan's prices: route -> {"price": n} or {"max_price": n, "units": {kind: n}}
# (gateway.pricing.parse_override reads it against the deployment's table).
PriceSpec = dict[str, dict[str, Any]]


def price_table_fields(spec: PriceSpec) -> dict[str, str]:
    """The hash of a price table: each route's price (a variable-cost route's reserve),
    which admit.lua debits, and the whole spec for the gateway's settlements."""
    fields = {
        route: str(entry["price"] if "price" in entry else entry["max_price"])
        for route, entry in spec.items()
    }
    fields[keys.PRICES_SPEC] = orjson.dumps(spec, option=orjson.OPT_SORT_KEYS).decode()
    return fields


def parse_price_spec(raw: bytes | str) -> PriceSpec:
    spec = orjson.loads(raw)
    if not isinstance(spec, dict):
        raise ValueError(f"a price table's spec is not an object: {raw!r}")
    return spec


def settle_arguments(
    call: Call, admitted: Admission, refund: int, admitted_day: int
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of settle.lua, for every adapter."""
    return (
        [
            keys.account(call.shard, call.account_id),
            keys.usage_stream(call.shard),
            keys.settled(call.shard, admitted.event_id),
        ],
        [
            refund,
            admitted_day,
            keys.SETTLED_TTL_SECONDS,
            call.key_id,
            call.project_id,
            call.account_id,
            call.route,
            admitted.event_id,
        ],
    )


def admit_arguments(
    calls: Sequence[Call | KeyCall],
    day: int,
    shard: int | None,
    batch_key: str,
    *,
    keep_record: bool = True,
    delete: Sequence[str] = (),
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of admit.lua for calls that all live on ``shard`` (one cluster slot).

    ``shard=None``: each call on its own shard, with its shard's stream; the keys
    then span slots, which only a single (non-cluster) Redis accepts. So do
    ``KeyCall`` s, whose account admit.lua finds from the key's hash.
    ``batch_key``: the batch's record (``keys.admit_batch``, on ``shard``), unique
    to this script call (``BatchIds``); kept only with ``keep_record``, by a caller
    that voids the batch if its reply never comes and, once it is in, passes the
    record in ``delete`` of a later batch on the same slot.
    """
    key_names: list[str] = [batch_key, *delete]
    index: dict[str, int] = {}
    ttl = keys.BATCH_RECORD_TTL_SECONDS if keep_record else 0
    args: list[Any] = [day, len(calls), ttl, len(delete)]
    for call in calls:
        if type(call) is KeyCall:
            args += [0, 0, call.price, call.digest, "", "", call.route]
            continue
        assert type(call) is Call
        on = call.shard if shard is None else shard
        skey = keys.usage_stream(on)
        if skey not in index:
            key_names.append(skey)
            index[skey] = len(key_names)
        akey = keys.account(on, call.account_id)
        if akey not in index:
            key_names.append(akey)
            index[akey] = len(key_names)
        args += [
            index[akey],
            index[skey],
            call.price,
            call.key_id,
            call.project_id,
            call.account_id,
            call.route,
        ]
    return key_names, args


class BatchIds:
    """Ids for admit.lua's batch records, unique across processes and restarts: the
    process id and a random part, drawn when the adapter is built (in the worker that
    uses it, never inherited through a fork), then a counter."""

    def __init__(self) -> None:
        self.prefix = f"{os.getpid():x}.{secrets.token_hex(4)}."
        self.count = itertools.count()

    def key(self, shard: int | None) -> str:
        return keys.admit_batch(shard, self.prefix + str(next(self.count)))


class AnsweredRecords:
    """The records of answered admissions (``BatchIds``), by shard, waiting for the next
    admission there to delete them (admit.lua's ``delete``): no command, write or Redis
    wake-up of their own. A record left when its shard's traffic stops expires."""

    def __init__(self) -> None:
        self._by_shard: dict[int | None, list[str]] = {}

    def add(self, shard: int | None, *records: str) -> None:
        waiting = self._by_shard.get(shard)
        if waiting is None:
            self._by_shard[shard] = list(records)
        else:
            waiting.extend(records)

    def take(self, shard: int | None) -> list[str]:
        """The records the next admission on ``shard`` deletes."""
        return self._by_shard.pop(shard, [])


def debited_calls(calls: Sequence[Call | KeyCall], record: bytes | str) -> list[tuple[Call, str]]:
    """void.lua's reply for a batch of ``calls``: each debited call (a ``KeyCall`` as
    the script resolved it) and its debit's event id. (Ids hold neither spaces nor
    slashes: ``admin/ids.py``.)"""
    words = (record.decode() if isinstance(record, bytes) else record).split()
    if not words:
        return []
    if len(words) != len(calls):
        raise ValueError(f"a batch record of {len(words)} words for {len(calls)} calls")
    out = []
    for call, word in zip(calls, words, strict=True):
        event_id, *resolved = word.split("/")
        if event_id == "-":
            continue
        price = call.price
        if "@" in event_id:  # debited at its account's price table's price
            event_id, _, debited = event_id.split("@")
            price = int(debited)
        if type(call) is KeyCall:
            key_id, project_id, account_id, shard = resolved
            call = Call(int(shard), account_id, project_id, key_id, call.route, price)
        elif price != call.price:
            call = call._replace(price=price)
        assert type(call) is Call
        out.append((call, event_id))
    return out


_OUTCOMES = {o.value: o for o in Outcome}
_SIGNALS = {bits: Signal(bits) for bits in range(16)}
PRICED = 16  # admit.lua's reply bit: the account's price table priced the call


def resolved_flags(calls: Sequence[Call | KeyCall]) -> list[bool] | None:
    """Which calls are ``KeyCall`` s, for ``parse_admit_reply`` (None when none is)."""
    flags = [type(call) is KeyCall for call in calls]
    return flags if True in flags else None


def parse_admit_reply(
    reply: Sequence[Any], resolved: Sequence[bool] | None = None
) -> list[Admission]:
    """One Admission per group of admit.lua's reply (hot: table lookups, not enum calls).

    ``resolved[i]``: call i is a ``KeyCall``, whose group carries its key's record.
    """
    if resolved is None:
        if len(reply) % ADMIT_REPLY_PER_CALL:
            raise ValueError(f"admit.lua reply of {len(reply)} items")
        it = iter(reply)
        return [_admission(*group) for group in zip(it, it, it, it, it, it, strict=True)]
    out = []
    at = 0
    for with_key in resolved:
        code, balance, available, left, bits, event_id = reply[at : at + ADMIT_REPLY_PER_CALL]
        at += ADMIT_REPLY_PER_CALL
        key = None
        if with_key:
            key = key_record(reply[at : at + len(API_KEY_FIELDS)])
            at += len(API_KEY_FIELDS)
        out.append(_admission(code, balance, available, left, bits, event_id, key))
    if at != len(reply):
        raise ValueError(f"admit.lua reply of {len(reply)} items for {len(resolved)} calls")
    return out


def _admission(
    code: Any,
    balance: Any,
    available: Any,
    left: Any,
    bits: Any,
    event_id: Any,
    key: KeyRecord | None = None,
) -> Admission:
    outcome = _OUTCOMES.get(int(code))
    if outcome is None:
        raise ValueError(f"unknown admission outcome {code!r}")
    signals = _SIGNALS.get(int(bits))
    left = int(left)
    limit = None if left < 0 else left
    if signals is None:  # priced by the account's price table (PRICED), or new bits
        return _unusual(
            outcome, int(balance), int(available), limit, int(bits), _str(event_id), key
        )
    return Admission(outcome, int(balance), int(available), limit, signals, _str(event_id), key)


def _unusual(
    outcome: Outcome,
    balance: int,
    available: int,
    limit: int | None,
    bits: int,
    slot: str,
    key: Any,
) -> Admission:
    """An admission whose signal bits are not the common ones: ``PRICED`` says the
    account's price table priced it, and its slot ends in ``@<table>@<price>``."""
    table = price = None
    if bits & PRICED:
        slot, table, debited = slot.split("@")
        price = int(debited)
    signals = Signal(bits & ~PRICED)
    return Admission(outcome, balance, available, limit, signals, slot, key, table, price)
