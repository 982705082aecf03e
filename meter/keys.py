"""Every Redis key shape, in one place.

All keys of one account and its shard's usage stream share the hash tag
``{sN}``, so each Lua script touches one Redis Cluster slot and the same code
runs on a single Redis and on a cluster. Shard = crc32(account id) mod the
deployment's shard count, computed once when the account is created and
stored with it in Postgres.

Key                                 Type    Lifetime
meter:acct:{sN}:<account>           hash    while the account exists; see ACCOUNT_FIELDS
meter:credits:{sN}:<account>        zset    credit ids applied (score: ms); trimmed after 30 days
meter:usage:{sN}                    stream  usage events; trimmed only up to what the ledger
                                            committed
meter:settled:{sN}:<request>        string  marks a settled/refunded call; expires after 1 day
meter:apikey:<sha256 hex>           hash    API key -> key id, project, account, shard; no TTL
                                            (admit.lua reads it for a KeyCall, and then
                                            builds the account and stream key names itself)
meter:ledger:{sN}:trimmed           string  last stream id the ledger trimmed through; no TTL
meter:ledger:{sN}:holds             zset    reconcile passes that pause trimming (score: expiry ms)
"""

from __future__ import annotations

import zlib

from meter import entry_kinds

PREFIX = "meter"

# Fields of the account hash. Short names: they are read on every call.
ACCOUNT_FIELDS = {
    "bal": "balance, micros (may be negative down to -ovl)",
    "ovl": "overage line, micros (credit allowed below zero)",
    "lim": "daily hard limit, micros; -1 = none",
    "ntf": "daily notify threshold, micros; -1 = none",
    "rth": "low-balance (auto-recharge) threshold, micros; -1 = none",
    "st": "status: a = active, s = suspended, p = payment method required; else active"
    " and priced by that price table (a plan's id, keys.price_table) (account_status)",
    "day": "UTC day number (days since 1970-01-01) that spt counts",
    "spt": "spent during day, micros",
    "nfd": "day the notify-threshold signal last fired",
    "lfd": "day the hard-limit signal last fired",
    "low": "1 while the low-balance signal has fired and not re-armed",
    "ver": "config version last applied from Postgres",
    "rk:<key id>": "1 when that API key is revoked",
    "rch": "auto-recharge, advisory (payments): i = in flight, d = declined or needs"
    " authentication, p = paused; absent = none. Read only to explain a no-credit refusal",
}

# Values of "st". Suspended wins over payment method required: a suspended account learns
# nothing it could fix by adding a card.
STATUS_ACTIVE, STATUS_SUSPENDED, STATUS_PAYMENT_METHOD_REQUIRED = "a", "s", "p"
# Values of "rch".
RECHARGE_IN_FLIGHT, RECHARGE_DECLINED, RECHARGE_PAUSED = "i", "d", "p"
RECHARGE_STATES = (RECHARGE_IN_FLIGHT, RECHARGE_DECLINED, RECHARGE_PAUSED)


def account_status(
    *, suspended: bool, payment_method_required: bool, price_table: str | None = None
) -> str:
    """The "st" field for an account's status as Postgres decides it: an active account
    with a price table is admitted at its prices, so the table's id stands for active
    (no field more for the admission to read)."""
    if suspended:
        return STATUS_SUSPENDED
    if payment_method_required:
        return STATUS_PAYMENT_METHOD_REQUIRED
    return price_table or STATUS_ACTIVE


SETTLED_TTL_SECONDS = 86_400
# An admission batch's record (admit.lua, void.lua): deleted as soon as its reply is
# in, so only batches whose reply was lost keep theirs, this long at most.
BATCH_RECORD_TTL_SECONDS = SETTLED_TTL_SECONDS // 2
CREDIT_MEMORY_MS = 30 * 86_400 * 1000


def shard_of(account_id: str, shards: int) -> int:
    return zlib.crc32(account_id.encode()) % shards


def tag(shard: int) -> str:
    return f"{{s{shard}}}"


def account(shard: int, account_id: str) -> str:
    return f"{PREFIX}:acct:{tag(shard)}:{account_id}"


def credits_applied(shard: int, account_id: str) -> str:
    return f"{PREFIX}:credits:{tag(shard)}:{account_id}"


def credit_id(ledger_entry_id: int) -> str:
    """The member of ``credits_applied`` for a credit: ``le_<ledger entry id>``.

    Every writer of credits (admin API, sync, recharges, reconcile) must use this,
    or one credit applied under two ids would be credited twice. It is the entry's
    public id (``entry_kinds.entry_id``).
    """
    return entry_kinds.entry_id(ledger_entry_id)


def usage_stream(shard: int) -> str:
    return f"{PREFIX}:usage:{tag(shard)}"


def admit_batch(shard: int | None, batch_id: str) -> str:
    """The record of one admit.lua call; ``shard=None`` for a batch across shards (a
    single Redis only, like the batch itself)."""
    if shard is None:
        return f"{PREFIX}:batch:{batch_id}"
    return f"{PREFIX}:batch:{tag(shard)}:{batch_id}"


def settled(shard: int, request_id: str) -> str:
    return f"{PREFIX}:settled:{tag(shard)}:{request_id}"


def price_table(shard: int, table_id: str) -> str:
    """A plan's prices, one copy per shard (the admission reads it in its account's slot):
    a field per route, its price (a variable-cost route's reserve), and ``PRICES_SPEC``."""
    return f"{PREFIX}:pt:{tag(shard)}:{table_id}"


# The field of a price table holding all its prices as JSON (no route is named so).
PRICES_SPEC = "*spec"


def api_key(key_hash_hex: str) -> str:
    return f"{PREFIX}:apikey:{key_hash_hex}"


def revoked_field(key_id: str) -> str:
    return f"rk:{key_id}"


def ledger_trimmed(shard: int) -> str:
    """The usage stream was trimmed through this id (only after the ledger committed it)."""
    return f"{PREFIX}:ledger:{tag(shard)}:trimmed"


def ledger_holds(shard: int) -> str:
    """While a member's score (expiry, ms) is in the future, the ledger does not trim."""
    return f"{PREFIX}:ledger:{tag(shard)}:holds"
