"""Which shards a worker should try to take or give up: pure decisions.

Ownership itself is a Postgres advisory lock per shard (``store.try_lock_shard``);
whoever holds it applies the shard, and Postgres releases it when the holder's
connection dies, so there is no coordinator. Each live worker also holds a
presence lock, so every worker can count the live workers and aim for its fair
share, ceil(shards / workers): a new worker gets shards handed over, and the
shards of a dead worker are taken by the others on their next try.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OwnershipMove:
    release: tuple[int, ...]  # owned shards to hand over (finish the batch, then unlock)
    candidates: tuple[int, ...]  # shards to try, in order ...
    want: int  # ... until this many more are held


def fair_share(shards: int, workers: int) -> int:
    return math.ceil(shards / max(1, workers))


def plan_ownership(
    shards: Sequence[int], owned: frozenset[int], workers: int, start: int
) -> OwnershipMove:
    """What to do now. ``start`` rotates the try order so that workers spread out."""
    share = fair_share(len(shards), workers)
    if len(owned) > share:
        extra = sorted(owned)[share:]
        return OwnershipMove(tuple(extra), (), 0)
    order = [shards[(start + i) % len(shards)] for i in range(len(shards))] if shards else []
    candidates = tuple(s for s in order if s not in owned)
    return OwnershipMove((), candidates, share - len(owned))
