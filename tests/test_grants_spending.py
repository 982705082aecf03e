"""The spending order of grants, against a plain model that moves one micro at a time.

The model knows nothing of ``grants.spending``: each micro of usage is taken from the
first live grant in spending order that still holds one; each micro given back above
zero goes to the grant drawn on last that its draw took from, else to the one drawn
last with room (else to no one: a new ``refund`` grant); a new grant's micros first
fill the overage. After every step the remaining of each grant must be the model's,
and the sum of the live grants' remaining must be ``max(0, balance)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grants import spending
from grants.spending import Grant

T0 = datetime(2027, 1, 1, tzinfo=UTC)


def at(hour: int) -> datetime:
    return T0 + timedelta(hours=hour)


# -- the model --------------------------------------------------------------------------


@dataclass
class ModelGrant:
    id: int
    amount: int
    remaining: int
    expires: int | None  # hour
    created: int  # hour
    drawn: int = 0
    taken: int = 0
    live: bool = True

    def key(self) -> tuple[bool, int, int, int]:
        return (self.expires is None, self.expires or 0, self.created, self.id)


@dataclass
class Model:
    grants: list[ModelGrant]
    balance: int = 0
    hour: int = 0

    def live(self) -> list[ModelGrant]:
        return [g for g in self.grants if g.live]

    def stamp(self) -> int:
        return max((g.drawn for g in self.live()), default=0) + 1

    def new_id(self) -> int:
        return len(self.grants) + 1

    def use(self, micros: int, first: int | None = None) -> None:
        stamp, last = self.stamp(), None
        for _ in range(micros):
            self.balance -= 1
            holding = [g for g in self.live() if g.remaining > 0]
            if not holding:
                continue
            g = min(holding, key=lambda g: (g.id != first, g.key()))
            if g is not last:
                g.drawn, g.taken, stamp, last = stamp, 0, stamp + 1, g
            g.remaining -= 1
            g.taken += 1

    def give_back(self, micros: int) -> None:
        residual = None
        for _ in range(micros):
            self.balance += 1
            if self.balance <= 0:
                continue  # pays back overage
            undo = [g for g in self.live() if g.taken > 0]
            if undo:
                g = max(undo, key=lambda g: g.drawn)
                g.remaining += 1
                g.taken -= 1
                continue
            room = [g for g in self.live() if g.drawn and g.remaining < g.amount]
            if room:
                max(room, key=lambda g: g.drawn).remaining += 1
                continue
            if residual is None:
                residual = ModelGrant(self.new_id(), 0, 0, None, self.hour)
                self.grants.append(residual)
            residual.amount += 1
            residual.remaining += 1

    def credit(self, micros: int, expires: int | None) -> None:
        g = ModelGrant(self.new_id(), micros, 0, expires, self.hour)
        stamp = self.stamp()
        self.grants.append(g)
        for _ in range(micros):
            self.balance += 1
            if self.balance > 0:
                g.remaining += 1
            else:
                g.drawn = stamp  # it covered overage
                g.taken += 1
        if g.drawn and g.remaining == g.amount:  # pragma: no cover - the model's own check
            raise AssertionError("stamped without covering")

    def expire(self) -> int:
        removed = 0
        for g in self.live():
            if g.expires is not None and g.expires <= self.hour:
                self.balance -= g.remaining
                removed += g.remaining
                g.remaining, g.live = 0, False
        return removed


# -- the rule under test, driven the way grants/store.py drives it ------------------------


@dataclass
class Book:
    grants: dict[int, Grant]
    ended: set[int]
    balance: int = 0
    hour: int = 0
    next_id: int = 1

    def live(self) -> list[Grant]:
        return [g for i, g in self.grants.items() if i not in self.ended]

    def take(self, moved: spending.Moved) -> None:
        for g in moved.changed:
            self.grants[g.id] = g
        if moved.residual:
            self.add(Grant(self.next_id, moved.residual, moved.residual, None, at(self.hour)))

    def add(self, g: Grant) -> None:
        assert g.id == self.next_id
        self.grants[g.id] = g
        self.next_id += 1

    def usage_line(self, amount: int) -> None:
        self.take(spending.line(self.live(), self.balance, amount))
        self.balance += amount

    def debit(self, micros: int, first: int | None) -> None:
        self.take(spending.debit(self.live(), micros, first=first))
        self.balance -= micros

    def credit(self, micros: int, expires: int | None) -> None:
        remaining, drawn, taken = spending.opening(self.live(), self.balance, micros)
        exp = None if expires is None else at(expires)
        self.add(Grant(self.next_id, micros, remaining, exp, at(self.hour), drawn, taken))
        self.balance += micros

    def expire(self) -> int:
        removed = 0
        for g in spending.spending_order(self.live()):
            if g.expires_at is not None and g.expires_at <= at(self.hour):
                removed += g.remaining
                self.balance -= g.remaining
                self.grants[g.id] = replace(g, remaining=0)
                self.ended.add(g.id)
        return removed


amounts = st.integers(1, 40)
expiry = st.none() | st.integers(0, 12)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("usage"), amounts),
        st.tuples(st.just("refund"), amounts),
        st.tuples(st.just("credit"), amounts, expiry),
        st.tuples(st.just("payment_refund"), amounts, st.integers(1, 12)),
        st.tuples(st.just("tick"), st.integers(1, 4)),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(opening=st.lists(st.tuples(amounts, expiry), max_size=5), steps=steps)
def test_the_rule_agrees_with_a_micro_by_micro_model(
    opening: list[tuple[int, int | None]], steps: list[tuple[object, ...]]
) -> None:
    model, book = Model([]), Book({}, set())
    for micros, expires in opening:
        model.credit(micros, expires)
        book.credit(micros, expires)
    for step in steps:
        match step:
            case ("usage", int(n)):
                model.use(n)
                book.usage_line(-n)
            case ("refund", int(n)):
                model.give_back(n)
                book.usage_line(n)
            case ("credit", int(n), expires):
                model.credit(n, expires)  # type: ignore[arg-type]
                book.credit(n, expires)  # type: ignore[arg-type]
            case ("payment_refund", int(n), int(grant)):
                first = grant if grant in book.grants and grant not in book.ended else None
                model.use(n, first)
                book.debit(n, first)
            case ("tick", int(hours)):
                model.hour += hours
                book.hour += hours
                assert book.expire() == model.expire()
        assert book.balance == model.balance
        assert {g.id: g.remaining for g in book.grants.values()} == {
            g.id: g.remaining for g in model.grants
        }
        assert {g.id: g.amount for g in book.grants.values()} == {
            g.id: g.amount for g in model.grants
        }
        assert sum(g.remaining for g in book.live()) == max(0, book.balance)
        assert all(0 <= g.remaining <= g.amount for g in book.grants.values())


# -- the rule's cases, by hand ------------------------------------------------------------


def g(id: int, remaining: int, expires: int | None, *, amount: int = 100, drawn: int = 0) -> Grant:
    exp = None if expires is None else at(expires)
    return Grant(id, amount, remaining, exp, at(0), drawn, amount - remaining if drawn else 0)


def remaining(moved: spending.Moved) -> dict[int, int]:
    return {x.id: x.remaining for x in moved.changed}


@pytest.mark.parametrize(
    ("grants", "amount", "first", "want"),
    [
        # the one that expires first, then the next; no expiry last
        ([g(1, 100, None), g(2, 100, 5), g(3, 100, 2)], 150, None, {3: 0, 2: 50}),
        # a tie on expiry: the one created first (then the lower id)
        ([g(2, 100, 5), g(1, 100, 5)], 30, None, {1: 70}),
        # beyond every grant: what they hold, the rest is overage
        ([g(1, 20, None)], 50, None, {1: 0}),
        # a payment refund takes its purchase's grant first
        ([g(1, 100, None), g(2, 100, 1)], 120, 1, {1: 0, 2: 80}),
    ],
)
def test_a_debit_draws_in_spending_order(
    grants: list[Grant], amount: int, first: int | None, want: dict[int, int]
) -> None:
    assert remaining(spending.debit(grants, amount, first=first)) == want


@settings(max_examples=200, deadline=None)
@given(
    grants=st.lists(st.tuples(amounts, expiry, st.integers(0, 5)), min_size=1, max_size=8),
    amount=st.integers(1, 200),
)
def test_a_debit_on_the_grants_it_needs_is_a_debit_on_all(
    grants: list[tuple[int, int | None, int]], amount: int
) -> None:
    """What grants/store.py's query keeps: in spending order, the grants with something
    left whose predecessors hold less than the debit, and the highest draw number."""
    every = [g(i + 1, r, e, amount=r + 3, drawn=d) for i, (r, e, d) in enumerate(grants)]
    needed, before = [], 0
    for x in spending.spending_order(every):
        if x.remaining > 0 and before < amount:
            needed.append(x)
        before += x.remaining
    top = max(x.drawn for x in every)
    assert spending.debit(needed, amount, top=top) == spending.debit(every, amount)


def test_a_refund_goes_back_to_the_grant_drawn_last_and_a_debit_then_refund_is_undone() -> None:
    before = [g(1, 50, None, drawn=1), g(2, 10, 3)]  # 1 drawn earlier; 2 new, expiring
    moved = spending.debit(before, 15)
    assert remaining(moved) == {2: 0, 1: 45}
    after = {x.id: x for x in [*before, *moved.changed]}
    back = spending.credit_back(list(after.values()), 15)
    assert remaining(back) == {1: 50, 2: 10}
    assert back.residual == 0
    # Beyond what the last draws took: the grant drawn last, up to what it was granted.
    assert remaining(spending.credit_back(list(after.values()), 25)) == {1: 60, 2: 10}


def test_a_credit_back_with_no_drawn_grant_left_is_a_new_grant() -> None:
    assert spending.credit_back([g(1, 100, None)], 30) == spending.Moved((), 30)
    assert spending.line([], -10, 25) == spending.Moved((), 15)  # 10 repays the overage


def test_a_new_grant_first_covers_the_overage() -> None:
    assert spending.opening([g(1, 0, None, drawn=4)], -30, 100) == (70, 5, 30)
    assert spending.opening([], -300, 100) == (0, 1, 100)
    assert spending.opening([g(1, 5, None, drawn=4)], 5, 100) == (100, 0, 0)
