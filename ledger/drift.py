"""Does Redis agree with the book? Pure arithmetic over snapshots, no I/O.

For every account, at one instant:

    Redis balance == Postgres balance
                     - (debits - refunds still in the stream, after the shard's offset)
                     - (credits in Postgres that Redis has not applied yet)

``drift`` is the left side minus the right side: positive when Redis holds more
money than the book says it should.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ledger.events import DEBIT, REFUND, UsageEvent


@dataclass(frozen=True, slots=True)
class BookAccount:
    """An account as Postgres has it."""

    account_id: str
    balance: int
    pending_credits: tuple[tuple[str, int], ...] = ()  # (credit id, amount) not marked applied


@dataclass(frozen=True, slots=True)
class AccountDrift:
    account_id: str
    shard: int
    postgres_balance: int
    unapplied: int  # net debits still in the stream
    pending_credits: int  # credits Postgres has and Redis has not applied
    redis_balance: int | None  # None: the account is missing from Redis

    @property
    def expected(self) -> int:
        return self.postgres_balance - self.unapplied - self.pending_credits

    @property
    def drift(self) -> int:
        return (self.redis_balance or 0) - self.expected

    @property
    def missing(self) -> bool:
        return self.redis_balance is None

    @property
    def agrees(self) -> bool:
        return not self.missing and self.drift == 0


def net_debits_by_account(events: Iterable[UsageEvent]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in events:
        if e.kind == DEBIT or e.kind == REFUND:
            out[e.account_id] = out.get(e.account_id, 0) + e.net_debit
    return out


def spent_by_account(events: Iterable[UsageEvent], day: int) -> dict[str, int]:
    """Net spend of calls admitted on ``day`` (what the account hash's ``spt`` counts)."""
    out: dict[str, int] = {}
    for e in events:
        if e.call_day == day and (e.kind == DEBIT or e.kind == REFUND):
            out[e.account_id] = out.get(e.account_id, 0) + e.net_debit
    return out


def account_drift(
    shard: int,
    account: BookAccount,
    unapplied: int,
    redis_balance: int | None,
    applied_in_redis: frozenset[str],
) -> AccountDrift:
    pending = sum(amount for cid, amount in account.pending_credits if cid not in applied_in_redis)
    return AccountDrift(
        account.account_id, shard, account.balance, unapplied, pending, redis_balance
    )


@dataclass(frozen=True, slots=True)
class Report:
    shards: tuple[int, ...]
    checked: int  # accounts compared
    drifts: tuple[AccountDrift, ...]  # only the accounts that do not agree

    @property
    def ok(self) -> bool:
        return not self.drifts

    @property
    def total_drift(self) -> int:
        return sum(d.drift for d in self.drifts)

    @property
    def missing(self) -> int:
        return sum(1 for d in self.drifts if d.missing)

    def by_shard(self) -> dict[int, tuple[int, int]]:
        """shard -> (summed drift, accounts drifting), every checked shard included."""
        out = {s: (0, 0) for s in self.shards}
        for d in self.drifts:
            total, count = out.get(d.shard, (0, 0))
            out[d.shard] = (total + d.drift, count + 1)
        return out

    def render(self) -> str:
        lines = []
        if self.drifts:
            lines.append(
                f"{'shard':>5}  {'account':<24} {'postgres':>15} {'unapplied':>13} "
                f"{'pending':>13} {'expected':>15} {'redis':>15} {'drift':>13}"
            )
            for d in self.drifts:
                redis = "missing" if d.redis_balance is None else f"{d.redis_balance:,}"
                lines.append(
                    f"{d.shard:>5}  {d.account_id:<24} {d.postgres_balance:>15,} "
                    f"{d.unapplied:>13,} {d.pending_credits:>13,} {d.expected:>15,} "
                    f"{redis:>15} {d.drift:>+13,}"
                )
        lines.append(
            f"checked {self.checked:,} accounts on {len(self.shards)} shards: "
            f"{len(self.drifts):,} drifting ({self.missing:,} missing in Redis), "
            f"total drift {self.total_drift:+,} micros"
        )
        return "\n".join(lines)


def merge(reports: Sequence[Report]) -> Report:
    return Report(
        tuple(s for r in reports for s in r.shards),
        sum(r.checked for r in reports),
        tuple(d for r in reports for d in r.drifts),
    )
