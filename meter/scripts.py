"""The Lua scripts, loaded once as package data.

Each script is one atomic step (see the comment at the top of each file for
its KEYS, ARGV and reply). ``SCRIPTS[name]`` is the source and its SHA1, so an
adapter can EVALSHA it and reload it after a ``NOSCRIPT`` (Redis restarted or
flushed its script cache).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str


def _load(name: str) -> LuaScript:
    source = resources.files("meter").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return LuaScript(name, source, hashlib.sha1(source.encode()).hexdigest())


ADMIT = _load("admit")
SETTLE = _load("settle")
VOID = _load("void")
CREDIT = _load("credit")
SYNC_ACCOUNT = _load("sync_account")
RECHARGE_STATE = _load("recharge_state")
# The ledger's: trim after commit, pause trimming, reconcile's read, repair.
LEDGER_TRIM = _load("ledger_trim")
LEDGER_HOLD = _load("ledger_hold")
LEDGER_BALANCES = _load("ledger_balances")
LEDGER_REPAIR = _load("ledger_repair")

SCRIPTS = {
    s.name: s
    for s in (
        ADMIT,
        SETTLE,
        VOID,
        CREDIT,
        SYNC_ACCOUNT,
        RECHARGE_STATE,
        LEDGER_TRIM,
        LEDGER_HOLD,
        LEDGER_BALANCES,
        LEDGER_REPAIR,
    )
}

# Width of one call's group in admit.lua's ARGV and reply.
ADMIT_ARGS_PER_CALL = 7
ADMIT_REPLY_PER_CALL = 6
