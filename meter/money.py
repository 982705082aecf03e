"""The money and limit math, as pure functions.

Money is an ``int`` number of micros (1 USD = 1,000,000) everywhere. Time is
passed in: ``day`` is the UTC day number (days since 1970-01-01). The Lua
admission script (``lua/admit.lua``) is the same decision, run atomically
inside Redis; ``tests/test_lua_scripts.py`` checks the two agree.

The admission order, which both follow:

1. suspended account        -> SUSPENDED (403)
2. payment method required  -> PAYMENT_METHOD_REQUIRED (402): the account must add one
3. revoked key              -> KEY_REVOKED (403)
4. roll the day: a new UTC day starts ``spent_today`` at 0
5. daily hard limit         -> DAILY_LIMIT (429) if price > what is left of the limit
6. balance + overage line   -> NO_CREDIT (402) if price > max(0, balance + overage_line)
7. debit; report the signals crossed by this debit

A free call (price 0) always fits. The limit is checked before the money
because it is the refusal with a known end (00:00 UTC); a customer over both
learns the limit first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum, IntFlag

MICROS_PER_USD = 1_000_000
MICROS_PER_CENT = 10_000  # what a card is charged in
SECONDS_PER_DAY = 86_400
NONE = -1  # "no limit" / "no threshold", as stored in Redis


class Outcome(IntEnum):
    ADMITTED = 0
    NO_CREDIT = 1
    DAILY_LIMIT = 2
    SUSPENDED = 3
    KEY_REVOKED = 4
    UNKNOWN_ACCOUNT = 5
    UNKNOWN_KEY = 6  # a call admitted by its key's hash, and no key has that hash
    PAYMENT_METHOD_REQUIRED = 7  # the account must have a payment method and has none


class Signal(IntFlag):
    """Thresholds a debit crossed; the ledger turns them into notifications."""

    NONE = 0
    NOTIFY_THRESHOLD = 1  # spent today passed the daily notify threshold (once per day)
    HARD_LIMIT = 2  # the daily hard limit was reached or first refused (once per day)
    BALANCE_LOW = 4  # balance fell below the low-balance threshold (re-armed by credits)
    OVERAGE_STARTED = 8  # balance went below zero


@dataclass(frozen=True, slots=True)
class AccountState:
    balance: int = 0
    overage_line: int = 0
    daily_hard_limit: int | None = None
    daily_notify_threshold: int | None = None
    low_balance_threshold: int | None = None
    suspended: bool = False
    payment_method_required: bool = False  # required and none on file (Postgres decides)
    day: int = 0
    spent_today: int = 0
    notify_fired_day: int = NONE
    limit_fired_day: int = NONE
    low_fired: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    state: AccountState
    signals: Signal

    @property
    def admitted(self) -> bool:
        return self.outcome is Outcome.ADMITTED


def usd(dollars: int | float | str) -> int:
    """Micros for a dollar amount written by a person (tests, defaults, docs)."""
    from decimal import Decimal

    micros = Decimal(str(dollars)) * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ValueError(f"{dollars} USD is not a whole number of micros")
    return int(micros)


def money(micros: int, signed: bool = False, places: int = 2) -> str:
    """``1234560000`` -> ``$1,234.56``; ``-5_000_000`` -> ``-$5.00``. ``signed`` also
    marks credits: ``+$5.00``. ``places`` (up to 6) shows sub-cent unit prices. An
    amount that rounds to zero has no sign."""
    if type(micros) is not int:  # bool and float are not money
        raise TypeError(f"money is int micros, not {type(micros).__name__}: {micros!r}")
    if not 0 <= places <= 6:
        raise ValueError(f"places must be 0 to 6, not {places}")
    step = MICROS_PER_USD // 10**places
    units, remainder = divmod(abs(micros), step)
    if remainder * 2 >= step:
        units += 1
    dollars, fraction = divmod(units, 10**places)
    text = f"${dollars:,}" + (f".{fraction:0{places}d}" if places else "")
    if units == 0:
        return text
    if micros < 0:
        return "-" + text
    return "+" + text if signed else text


def utc_day(now: float) -> int:
    return int(now // SECONDS_PER_DAY)


def seconds_until_next_day(now: float) -> int:
    """Whole seconds until 00:00 UTC (at least 1): the Retry-After of a 429."""
    return max(1, math.ceil((utc_day(now) + 1) * SECONDS_PER_DAY - now))


def rolled(state: AccountState, day: int) -> AccountState:
    """The state as seen on ``day``: a later day starts with nothing spent.

    A day earlier than the stored one (a replica with a slow clock) counts as
    the stored day; the counter never goes back.
    """
    if day > state.day:
        return replace(state, day=day, spent_today=0)
    return state


def limit_remaining(state: AccountState) -> int | None:
    if state.daily_hard_limit is None:
        return None
    return max(0, state.daily_hard_limit - state.spent_today)


def available(state: AccountState) -> int:
    """What the account may still spend now: balance + overage, capped by today's limit."""
    money = max(0, state.balance + state.overage_line)
    left = limit_remaining(state)
    return money if left is None else min(money, left)


def admit(state: AccountState, price: int, day: int, *, key_revoked: bool = False) -> Decision:
    if price < 0:
        raise ValueError("price must not be negative")
    if state.suspended:
        return Decision(Outcome.SUSPENDED, state, Signal.NONE)
    if state.payment_method_required:
        return Decision(Outcome.PAYMENT_METHOD_REQUIRED, state, Signal.NONE)
    if key_revoked:
        return Decision(Outcome.KEY_REVOKED, state, Signal.NONE)
    state = rolled(state, day)
    limit = state.daily_hard_limit
    left = limit_remaining(state)
    if left is not None and price > left:
        if state.limit_fired_day != state.day:
            return Decision(
                Outcome.DAILY_LIMIT, replace(state, limit_fired_day=state.day), Signal.HARD_LIMIT
            )
        return Decision(Outcome.DAILY_LIMIT, state, Signal.NONE)
    if price > max(0, state.balance + state.overage_line):
        return Decision(Outcome.NO_CREDIT, state, Signal.NONE)

    before_balance, before_spent = state.balance, state.spent_today
    state = replace(state, balance=before_balance - price, spent_today=before_spent + price)
    signals = Signal.NONE
    notify = state.daily_notify_threshold
    if (
        notify is not None
        and before_spent < notify <= state.spent_today
        and state.notify_fired_day != state.day
    ):
        signals |= Signal.NOTIFY_THRESHOLD
        state = replace(state, notify_fired_day=state.day)
    if limit is not None and state.spent_today >= limit and state.limit_fired_day != state.day:
        signals |= Signal.HARD_LIMIT
        state = replace(state, limit_fired_day=state.day)
    low = state.low_balance_threshold
    if low is not None and state.balance < low and not state.low_fired:
        signals |= Signal.BALANCE_LOW
        state = replace(state, low_fired=True)
    if before_balance >= 0 > state.balance:
        signals |= Signal.OVERAGE_STARTED
    return Decision(Outcome.ADMITTED, state, signals)


def credit(state: AccountState, amount: int) -> AccountState:
    """Money in (top-up, grant, recharge): re-arms the low-balance signal."""
    state = replace(state, balance=state.balance + amount)
    return _rearm_low(state)


def refund(state: AccountState, amount: int, admitted_day: int) -> AccountState:
    """Give back part or all of an admitted price (settlement, failed upstream).

    The refund also comes off ``spent_today`` when the call was admitted on the
    day being counted; a refund that lands after midnight leaves the new day alone.
    """
    if amount < 0:
        raise ValueError("refund must not be negative")
    spent = state.spent_today
    if admitted_day == state.day:
        spent = max(0, spent - amount)
    state = replace(state, balance=state.balance + amount, spent_today=spent)
    return _rearm_low(state)


def _rearm_low(state: AccountState) -> AccountState:
    low = state.low_balance_threshold
    if state.low_fired and (low is None or state.balance >= low):
        return replace(state, low_fired=False)
    return state
