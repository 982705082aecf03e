"""What one batch of usage events writes to the book: pure decisions, no I/O.

``plan_batch`` turns the events read from one shard's stream into everything the
batch's single Postgres transaction writes: the raw events, one ledger line per
account (debits minus refunds, so the balance history stays readable), usage
rollups per account, day and route, and the pending signal work. Events of an
account Postgres does not know are kept raw only (``orphans``); they cannot be
charged to anyone.

``batch_closed`` is the size-or-time rule that ends a batch.
"""

from __future__ import annotations

import functools
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ledger.events import DEBIT, REFUND, StreamId, UsageEvent
from meter.money import Signal

# Ledger entry kind of a batch's net usage (negative; positive when refunds of earlier
# calls outweigh the batch's debits). Every other kind is a credit that went through
# credit.lua, which is how reconcile tells them apart.
USAGE = "usage"

SIGNAL_KINDS = (
    (Signal.NOTIFY_THRESHOLD, "notify_threshold"),
    (Signal.HARD_LIMIT, "hard_limit"),
    (Signal.BALANCE_LOW, "balance_low"),
    (Signal.OVERAGE_STARTED, "overage_started"),
)


@dataclass(frozen=True, slots=True)
class LedgerLine:
    account_id: str
    amount: int  # signed micros: negative = the account was charged
    kind: str
    description: str
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class Rollup:
    account_id: str
    day: int  # UTC day the calls were admitted
    route: str
    calls: int
    amount: int  # net charged: debits minus refunds


@dataclass(frozen=True, slots=True)
class PendingSignal:
    account_id: str
    kind: str
    day: int
    stream_id: str


@dataclass(frozen=True, slots=True)
class Batch:
    shard: int
    after: StreamId  # the offset the batch starts after: it applies only if Postgres still has it
    last: StreamId  # the new offset
    events: tuple[UsageEvent, ...]
    lines: tuple[LedgerLine, ...]
    rollups: tuple[Rollup, ...]
    signals: tuple[PendingSignal, ...]
    orphans: tuple[str, ...]  # accounts Postgres does not know

    @property
    def net_debit(self) -> int:
        return -sum(line.amount for line in self.lines)


@dataclass(slots=True)
class _AccountTally:
    first_ms: int
    last_ms: int
    first_id: str
    calls: int = 0
    refunds: int = 0
    net: int = 0


def plan_batch(
    shard: int,
    after: StreamId,
    last: StreamId,
    events: Sequence[UsageEvent],
    known_accounts: Container[str],
) -> Batch:
    tallies: dict[str, _AccountTally] = {}
    rollups: dict[tuple[str, int, str], list[int]] = {}
    signals: list[PendingSignal] = []
    orphans: set[str] = set()
    for e in events:
        if e.account_id not in known_accounts:
            orphans.add(e.account_id)
            continue
        if e.signals:
            signals += [
                PendingSignal(e.account_id, name, e.call_day, e.id)
                for bit, name in SIGNAL_KINDS
                if e.signals & bit
            ]
        if e.kind != DEBIT and e.kind != REFUND:
            continue
        tally = tallies.get(e.account_id)
        if tally is None:
            tally = tallies[e.account_id] = _AccountTally(e.ms, e.ms, e.id)
        tally.last_ms = e.ms
        roll = rollups.get((e.account_id, e.call_day, e.route))
        if roll is None:
            roll = rollups[(e.account_id, e.call_day, e.route)] = [0, 0]
        if e.kind == DEBIT:
            tally.calls += 1
            tally.net += e.amount
            roll[0] += 1
            roll[1] += e.amount
        else:
            tally.refunds += 1
            tally.net -= e.amount
            roll[1] -= e.amount
    lines = tuple(
        LedgerLine(
            account_id=account,
            amount=-t.net,
            kind=USAGE,
            description=describe(t.first_ms, t.last_ms, t.calls, t.refunds),
            idempotency_key=f"usage:{shard}:{t.first_id}",
        )
        for account, t in sorted(tallies.items())
        if t.net != 0
    )
    return Batch(
        shard=shard,
        after=after,
        last=last,
        events=tuple(events),
        lines=lines,
        rollups=tuple(
            Rollup(account, day, route, calls, amount)
            for (account, day, route), (calls, amount) in sorted(rollups.items())
            if calls or amount
        ),
        signals=tuple(signals),
        orphans=tuple(sorted(orphans)),
    )


@functools.lru_cache(maxsize=4096)
def _utc(second: int) -> tuple[str, str]:
    """(date, time of day) of a Unix second; a batch's lines share a few seconds."""
    at = datetime.fromtimestamp(second, UTC)
    return f"{at:%Y-%m-%d}", f"{at:%H:%M:%S}"


def describe(first_ms: int, last_ms: int, calls: int, refunds: int) -> str:
    """'Usage 10:00:00-10:00:01, 1,234 calls' (UTC; dates shown when the span crosses a day)."""
    first, last = _utc(first_ms // 1000), _utc(last_ms // 1000)
    if first[0] != last[0]:
        span = f"{first[0]} {first[1]}-{last[0]} {last[1]}"
    elif first == last:
        span = first[1]
    else:
        span = f"{first[1]}-{last[1]}"
    parts = []
    if calls:
        parts.append(f"{calls:,} call" + ("" if calls == 1 else "s"))
    if refunds:
        parts.append(f"{refunds:,} refund" + ("" if refunds == 1 else "s"))
    head = "Usage" if calls else "Refunds"
    return f"{head} {span}, " + ", ".join(parts)


def batch_closed(count: int, opened_at: float, now: float, size: int, max_wait: float) -> bool:
    """A batch closes when full, or ``max_wait`` seconds after its first event arrived."""
    return count >= size or (count > 0 and now - opened_at >= max_wait)
