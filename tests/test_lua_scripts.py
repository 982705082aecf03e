"""The Lua scripts against a real Redis: every path, agreement with the pure model, races."""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import replace

import pytest

from meter import keys, money
from meter.live_state import AccountConfig, Call, KeyCall, KeyRecord, LiveState
from meter.money import AccountState, Outcome, Signal, usd
from meter.scripts import SCRIPTS

DAY = 20_400
SHARD = 3
ACCOUNT = "acct_lua"


def config(version: int = 1, **kw: object) -> AccountConfig:
    values: dict[str, object] = dict(
        version=version,
        overage_line=0,
        daily_hard_limit=None,
        daily_notify_threshold=None,
        low_balance_threshold=None,
        suspended=False,
    )
    values.update(kw)
    return AccountConfig(**values)  # type: ignore[arg-type]


def call(price: int, key_id: str = "key_1", account: str = ACCOUNT, shard: int = SHARD) -> Call:
    return Call(shard, account, "proj_1", key_id, "chat", price)


async def provision(state: LiveState, balance: int, account: str = ACCOUNT, **kw: object) -> None:
    assert await state.sync_account(SHARD, account, config(**kw))
    if balance:
        status, _ = await state.credit(SHARD, account, f"seed-{account}", balance)
        assert status == 1


async def stream_events(state: LiveState, shard: int = SHARD) -> list[dict[str, str]]:
    entries = await state.redis.xrange(keys.usage_stream(shard))
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


async def test_admit_debits_and_appends_one_event(live_state: LiveState) -> None:
    await provision(live_state, usd(1))
    result = await live_state.admit(call(300_000), DAY)
    assert result.outcome is Outcome.ADMITTED
    assert (result.balance, result.available, result.limit_remaining) == (700_000, 700_000, None)
    events = await stream_events(live_state)
    assert events == [
        {
            "t": "d",
            "a": ACCOUNT,
            "p": "proj_1",
            "k": "key_1",
            "r": "chat",
            "m": "300000",
            "d": str(DAY),
            "g": "0",
        }
    ]
    assert (
        result.event_id == (await live_state.redis.xrange(keys.usage_stream(SHARD)))[0][0].decode()
    )


@pytest.mark.parametrize(
    ("setup", "price", "outcome"),
    [
        (dict(suspended=True), 1, Outcome.SUSPENDED),
        (dict(payment_method_required=True), 1, Outcome.PAYMENT_METHOD_REQUIRED),
        (dict(payment_method_required=True), 0, Outcome.PAYMENT_METHOD_REQUIRED),
        (dict(suspended=True, payment_method_required=True), 1, Outcome.SUSPENDED),
        (dict(daily_hard_limit=10), 11, Outcome.DAILY_LIMIT),
        (dict(), usd(1) + 1, Outcome.NO_CREDIT),
        (dict(overage_line=5), usd(1) + 6, Outcome.NO_CREDIT),
    ],
)
async def test_refusals_change_nothing(
    live_state: LiveState, setup: dict[str, object], price: int, outcome: Outcome
) -> None:
    await provision(live_state, usd(1), **setup)
    before = await live_state.read_account(SHARD, ACCOUNT)
    result = await live_state.admit(call(price), DAY)
    assert result.outcome is outcome
    after = await live_state.read_account(SHARD, ACCOUNT)
    assert after is not None and before is not None
    assert (after.balance, after.spent_today) == (before.balance, before.spent_today)
    # Only the first daily-limit refusal writes an (empty, signal-only) event.
    events = await stream_events(live_state)
    if outcome is Outcome.DAILY_LIMIT:
        assert [(e["t"], e["m"], e["g"]) for e in events] == [
            ("x", "0", str(int(Signal.HARD_LIMIT)))
        ]
    else:
        assert events == []


async def test_revoked_key(live_state: LiveState) -> None:
    await provision(live_state, usd(1))
    await live_state.revoke_key(SHARD, ACCOUNT, "key_bad")
    assert (await live_state.admit(call(1, key_id="key_bad"), DAY)).outcome is Outcome.KEY_REVOKED
    assert (await live_state.admit(call(1, key_id="key_good"), DAY)).outcome is Outcome.ADMITTED


async def test_payment_method_required_is_checked_after_suspended_and_before_the_key(
    live_state: LiveState,
) -> None:
    await provision(live_state, usd(1), payment_method_required=True)
    await live_state.revoke_key(SHARD, ACCOUNT, "key_bad")
    refused = await live_state.admit(call(1, key_id="key_bad"), DAY)
    assert refused.outcome is Outcome.PAYMENT_METHOD_REQUIRED
    assert (refused.balance, refused.available, refused.event_id) == (usd(1), usd(1), "")
    assert await live_state.sync_account(SHARD, ACCOUNT, config(2, payment_method_required=False))
    assert (await live_state.admit(call(1), DAY)).admitted
    assert (await live_state.admit(call(1, key_id="key_bad"), DAY)).outcome is Outcome.KEY_REVOKED
    assert await live_state.sync_account(
        SHARD, ACCOUNT, config(3, suspended=True, payment_method_required=True)
    )
    assert (await live_state.admit(call(1), DAY)).outcome is Outcome.SUSPENDED
    state = await live_state.read_account(SHARD, ACCOUNT)
    assert state is not None and state.suspended and not state.payment_method_required


@pytest.mark.parametrize(
    "rch", [keys.RECHARGE_IN_FLIGHT, keys.RECHARGE_DECLINED, keys.RECHARGE_PAUSED]
)
async def test_a_no_credit_refusal_carries_the_auto_recharge_state(
    live_state: LiveState, rch: str
) -> None:
    await provision(live_state, 10)
    assert (await live_state.admit(call(11), DAY)).event_id == ""
    await live_state.set_recharge_state(SHARD, ACCOUNT, rch)
    refused, admitted, again = await live_state.admit_many([call(11), call(10), call(1)], DAY)
    assert (refused.outcome, refused.event_id) == (Outcome.NO_CREDIT, rch)
    # Every other reply keeps its usage event id (or none) in that slot.
    [event] = await live_state.redis.xrange(keys.usage_stream(SHARD))
    assert (admitted.outcome, admitted.event_id) == (Outcome.ADMITTED, event[0].decode())
    assert (again.outcome, again.event_id) == (Outcome.NO_CREDIT, rch)
    await live_state.set_recharge_state(SHARD, ACCOUNT, None)
    assert (await live_state.admit(call(1), DAY)).event_id == ""
    assert await live_state.redis.hget(keys.account(SHARD, ACCOUNT), "rch") is None


async def test_the_auto_recharge_state_is_not_read_for_other_refusals(
    live_state: LiveState,
) -> None:
    await provision(live_state, 10, daily_hard_limit=5)
    await live_state.set_recharge_state(SHARD, ACCOUNT, keys.RECHARGE_IN_FLIGHT)
    first, second = await live_state.admit_many([call(6), call(6)], DAY)
    [signal] = await live_state.redis.xrange(keys.usage_stream(SHARD))  # the first's signal
    assert (first.outcome, first.event_id) == (Outcome.DAILY_LIMIT, signal[0].decode())
    assert (second.outcome, second.event_id) == (Outcome.DAILY_LIMIT, "")
    assert await live_state.sync_account(SHARD, ACCOUNT, config(2, payment_method_required=True))
    refused = await live_state.admit(call(1), DAY)
    assert (refused.outcome, refused.event_id) == (Outcome.PAYMENT_METHOD_REQUIRED, "")


async def test_set_recharge_state_creates_no_account(live_state: LiveState) -> None:
    await live_state.set_recharge_state(SHARD, "acct_missing", keys.RECHARGE_DECLINED)
    await live_state.set_recharge_state(SHARD, "acct_missing", None)
    assert await live_state.redis.exists(keys.account(SHARD, "acct_missing")) == 0
    assert (await live_state.admit(call(1, account="acct_missing"), DAY)).outcome is (
        Outcome.UNKNOWN_ACCOUNT
    )
    with pytest.raises(ValueError):
        await live_state.set_recharge_state(SHARD, ACCOUNT, "x")


async def test_unknown_account(live_state: LiveState) -> None:
    result = await live_state.admit(call(1, account="acct_missing"), DAY)
    assert result.outcome is Outcome.UNKNOWN_ACCOUNT
    assert await stream_events(live_state) == []


async def test_day_rolls_over(live_state: LiveState) -> None:
    await provision(live_state, usd(10), daily_hard_limit=usd(1))
    assert (await live_state.admit(call(usd(1)), DAY)).admitted
    assert (await live_state.admit(call(1), DAY)).outcome is Outcome.DAILY_LIMIT
    # A replica whose clock is behind does not roll the counter back.
    assert (await live_state.admit(call(1), DAY - 1)).outcome is Outcome.DAILY_LIMIT
    nxt = await live_state.admit(call(usd(1)), DAY + 1)
    assert nxt.admitted and nxt.limit_remaining == 0
    state = await live_state.read_account(SHARD, ACCOUNT)
    assert state is not None and (state.day, state.spent_today) == (DAY + 1, usd(1))


async def test_credit_is_idempotent(live_state: LiveState) -> None:
    await provision(live_state, 0)
    assert await live_state.credit(SHARD, ACCOUNT, "le_1", 500) == (1, 500)
    assert await live_state.credit(SHARD, ACCOUNT, "le_1", 500) == (0, 500)
    assert await live_state.credit(SHARD, ACCOUNT, "le_2", 500) == (1, 1000)
    assert await live_state.credit(SHARD, "acct_missing", "le_3", 500) == (-1, 0)


async def test_sync_applies_versions_in_order(live_state: LiveState) -> None:
    assert await live_state.sync_account(SHARD, ACCOUNT, config(2, overage_line=20))
    assert not await live_state.sync_account(SHARD, ACCOUNT, config(1, overage_line=10))
    assert not await live_state.sync_account(SHARD, ACCOUNT, config(2, overage_line=30))
    state = await live_state.read_account(SHARD, ACCOUNT)
    assert state is not None and state.overage_line == 20 and state.balance == 0
    assert await live_state.sync_account(
        SHARD, ACCOUNT, config(3, suspended=True, daily_hard_limit=5)
    )
    state = await live_state.read_account(SHARD, ACCOUNT)
    assert state is not None and state.suspended and state.daily_hard_limit == 5


async def test_settle_refunds_once(live_state: LiveState) -> None:
    await provision(live_state, usd(1), daily_hard_limit=usd(1))
    c = call(600_000)
    admitted = await live_state.admit(c, DAY)
    assert await live_state.settle(c, admitted, 400_000, DAY) == 1
    assert await live_state.settle(c, admitted, 400_000, DAY) == 0
    state = await live_state.read_account(SHARD, ACCOUNT)
    assert state is not None and (state.balance, state.spent_today) == (800_000, 200_000)
    events = await stream_events(live_state)
    assert [(e["t"], e["m"]) for e in events] == [("d", "600000"), ("r", "400000")]
    assert events[1]["o"] == admitted.event_id


async def test_settle_after_midnight_leaves_new_day_alone(live_state: LiveState) -> None:
    await provision(live_state, usd(1))
    c = call(600_000)
    admitted = await live_state.admit(c, DAY)
    assert (await live_state.admit(call(100_000), DAY + 1)).admitted
    assert await live_state.settle(c, admitted, 600_000, DAY) == 1
    state = await live_state.read_account(SHARD, ACCOUNT)
    assert state is not None and (state.balance, state.spent_today) == (900_000, 100_000)


async def test_batch_with_many_accounts_and_shards(live_state: LiveState) -> None:
    for shard, account in [(1, "acct_a"), (2, "acct_b")]:
        assert await live_state.sync_account(shard, account, config())
        await live_state.credit(shard, account, "seed", 10)
    calls = [call(4, account="acct_a", shard=1), call(4, account="acct_b", shard=2)] * 3
    results = await live_state.admit_many(calls, DAY)
    assert [r.outcome for r in results] == [Outcome.ADMITTED] * 4 + [Outcome.NO_CREDIT] * 2
    assert [r.balance for r in results] == [6, 6, 2, 2, 2, 2]


# -- calls whose key the script resolves (KeyCall: a single Redis) -----------------------


async def key_of(state: LiveState, account: str, key_id: str, shard: int = SHARD) -> KeyCall:
    """Store an API key for ``account``; a KeyCall of price 5 on route chat for it."""
    digest = hashlib.sha256(f"{account}/{key_id}".encode()).hexdigest()
    await state.put_api_key(digest, KeyRecord(key_id, "proj_k", account, shard))
    return KeyCall(digest, "chat", 5)


async def test_a_key_call_admits_on_the_account_its_key_names(live_state: LiveState) -> None:
    await provision(live_state, 12)
    by_key = await key_of(live_state, ACCOUNT, "key_k")

    first = await live_state.admit(by_key, DAY)

    assert first.outcome is Outcome.ADMITTED and first.balance == 7 and first.available == 7
    assert first.key == KeyRecord("key_k", "proj_k", ACCOUNT, SHARD)
    state = await live_state.read_account(SHARD, ACCOUNT)
    assert state is not None and (state.balance, state.spent_today) == (7, 5)
    [event] = await stream_events(live_state)
    assert {k: event[k] for k in "tapkrmd"} == {
        "t": "d", "a": ACCOUNT, "p": "proj_k", "k": "key_k", "r": "chat", "m": "5", "d": str(DAY),
    }  # fmt: skip
    # decided exactly as the same call with its key known
    second = await live_state.admit(Call(SHARD, ACCOUNT, "proj_k", "key_k", "chat", 5), DAY)
    third = await live_state.admit(by_key, DAY)
    assert (second.outcome, second.balance) == (Outcome.ADMITTED, 2)
    assert (third.outcome, third.balance, third.key) == (Outcome.NO_CREDIT, 2, first.key)


async def test_a_key_call_for_an_unknown_key_changes_nothing(live_state: LiveState) -> None:
    await provision(live_state, 12)
    before = await live_state.read_account(SHARD, ACCOUNT)

    result = await live_state.admit(KeyCall("ab" * 32, "chat", 5), DAY)

    assert result.outcome is Outcome.UNKNOWN_KEY and result.key is None
    assert (result.balance, result.available, result.limit_remaining) == (0, 0, None)
    assert await live_state.read_account(SHARD, ACCOUNT) == before
    assert await stream_events(live_state) == []


async def test_a_key_call_is_refused_for_a_revoked_key_or_a_suspended_account(
    live_state: LiveState,
) -> None:
    await provision(live_state, 100)
    revoked = await key_of(live_state, ACCOUNT, "key_gone")
    await live_state.revoke_key(SHARD, ACCOUNT, "key_gone")
    other = await key_of(live_state, "acct_off", "key_off")
    assert await live_state.sync_account(SHARD, "acct_off", config(suspended=True))
    orphan = await key_of(live_state, "acct_never_made", "key_orphan")
    no_card = await key_of(live_state, "acct_no_card", "key_no_card")
    assert await live_state.sync_account(
        SHARD, "acct_no_card", config(payment_method_required=True)
    )

    results = await live_state.admit_many([revoked, other, orphan, no_card], DAY)

    assert [r.outcome for r in results] == [
        Outcome.KEY_REVOKED,
        Outcome.SUSPENDED,
        Outcome.UNKNOWN_ACCOUNT,
        Outcome.PAYMENT_METHOD_REQUIRED,
    ]
    assert [r.key.key_id if r.key else None for r in results] == [
        "key_gone",
        "key_off",
        "key_orphan",
        "key_no_card",
    ]
    assert await stream_events(live_state) == []


async def test_key_calls_and_known_calls_share_a_batch_across_shards(live_state: LiveState) -> None:
    for shard, account in [(1, "acct_a"), (2, "acct_b")]:
        assert await live_state.sync_account(shard, account, config())
        await live_state.credit(shard, account, "seed", 10)
    a_by_key = await key_of(live_state, "acct_a", "key_a", shard=1)
    unknown = KeyCall("cd" * 32, "chat", 5)
    b_known = call(4, account="acct_b", shard=2)

    results = await live_state.admit_many([a_by_key, b_known, unknown, a_by_key, b_known], DAY)

    assert [r.outcome for r in results] == [Outcome.ADMITTED] * 2 + [Outcome.UNKNOWN_KEY] + [
        Outcome.ADMITTED
    ] * 2
    assert [r.balance for r in results] == [5, 6, 0, 0, 2]
    assert [r.key.account_id if r.key else None for r in results] == [
        "acct_a",
        None,
        None,
        "acct_a",
        None,
    ]
    assert len(await stream_events(live_state, 1)) == 2
    assert len(await stream_events(live_state, 2)) == 2


def _to_config(state: AccountState, version: int) -> AccountConfig:
    return AccountConfig(
        version=version,
        overage_line=state.overage_line,
        daily_hard_limit=state.daily_hard_limit,
        daily_notify_threshold=state.daily_notify_threshold,
        low_balance_threshold=state.low_balance_threshold,
        suspended=state.suspended,
        payment_method_required=state.payment_method_required,
    )


@pytest.mark.parametrize("batch", [1, 7], ids=["one_call_a_run", "batches"])
@pytest.mark.parametrize("seed", range(6))
async def test_lua_agrees_with_the_pure_model(live_state: LiveState, seed: int, batch: int) -> None:
    """Random accounts and call sequences: every reply, event and final state equal the model's.

    ``batches``: up to 7 calls a script run, as the gateway sends them, so that a call
    reads what the calls before it in the same run wrote (the day rolled over, a
    signal's day); some runs come from a replica whose clock is a day behind. The
    status (suspended, payment method required) and the auto-recharge state change now
    and then: a no-credit reply carries the state, every other reply its event id."""
    rng = random.Random(seed)
    model = AccountState(
        balance=rng.randint(0, 1000),
        overage_line=rng.choice([0, 0, 50, 300]),
        daily_hard_limit=rng.choice([None, 200, 700]),
        daily_notify_threshold=rng.choice([None, 100, 400]),
        low_balance_threshold=rng.choice([None, 100, 500]),
        day=0,  # what sync_account stores for a new account
    )
    await live_state.sync_account(SHARD, ACCOUNT, _to_config(model, 1))
    if model.balance:
        await live_state.credit(SHARD, ACCOUNT, "seed", model.balance)
    day = DAY
    version = 1
    rch = ""
    expected_events: list[tuple[str, str, str, str]] = []
    for step in range(120):
        roll = rng.random()
        if roll < 0.05:
            day += 1
        elif roll < 0.08:
            version += 1
            model = replace(
                model,
                suspended=rng.random() < 0.2,
                payment_method_required=rng.random() < 0.4,
            )
            assert await live_state.sync_account(SHARD, ACCOUNT, _to_config(model, version))
            continue
        elif roll < 0.10:
            rch = rng.choice(["", *keys.RECHARGE_STATES])
            await live_state.set_recharge_state(SHARD, ACCOUNT, rch or None)
            continue
        elif roll < 0.14:
            amount = rng.randint(1, 400)
            model = money.credit(model, amount)
            await live_state.credit(SHARD, ACCOUNT, f"c{step}", amount)
            continue
        run_day = day - 1 if batch > 1 and roll > 0.93 else day
        prices = [rng.choice([0, 1, 10, 50, 120, 300]) for _ in range(rng.randint(1, batch))]
        replies = await live_state.admit_many([call(price) for price in prices], run_day)
        for price, reply in zip(prices, replies, strict=True):
            decision = money.admit(model, price, run_day)
            assert reply.outcome is decision.outcome, step
            assert reply.signals == decision.signals, step
            model = decision.state
            assert reply.balance == model.balance
            assert reply.available == money.available(model)
            assert reply.limit_remaining == money.limit_remaining(model)
            if decision.outcome is Outcome.NO_CREDIT:
                assert reply.event_id == rch, step
            elif not (decision.admitted or decision.signals):
                assert reply.event_id == "", step
            if decision.admitted or decision.signals:
                charged = price if decision.admitted else 0
                kind = "d" if decision.admitted else "x"
                expected_events.append(
                    (kind, str(charged), str(model.day), str(int(decision.signals)))
                )
        reply, price = replies[-1], prices[-1]
        if reply.admitted and price and rng.random() < 0.3:
            refund = rng.randint(0, price)
            if refund:
                model = money.refund(model, refund, run_day)
                assert await live_state.settle(call(price), reply, refund, run_day) == 1
    stored = await live_state.read_account(SHARD, ACCOUNT)
    assert stored is not None
    assert stored.balance == model.balance
    assert stored.spent_today == model.spent_today
    assert (stored.day, stored.notify_fired_day, stored.limit_fired_day) == (
        model.day,
        model.notify_fired_day,
        model.limit_fired_day,
    )
    assert stored.low_fired == model.low_fired
    assert (stored.suspended, stored.payment_method_required) == (
        model.suspended,
        not model.suspended and model.payment_method_required,
    )
    events = await stream_events(live_state)
    debits = [(e["t"], e["m"], e["d"], e["g"]) for e in events if e["t"] in ("d", "x")]
    assert debits == expected_events


@pytest.mark.parametrize("by_key", [False, True], ids=["known", "resolved_by_script"])
async def test_concurrent_admissions_never_overspend(
    live_state: LiveState, redis_url: str, by_key: bool
) -> None:
    """Many clients on separate connections race one balance worth exactly 100 calls;
    ``by_key``: every caller's key resolved by the script (a cold key cache)."""
    await provision(live_state, 100 * 5)
    one = await key_of(live_state, ACCOUNT, "key_race") if by_key else call(5)
    clients = [LiveState.from_url(redis_url) for _ in range(20)]
    try:

        async def hammer(state: LiveState) -> list[Outcome]:
            return [(await state.admit(one, DAY)).outcome for _ in range(25)]

        outcomes = [o for batch in await asyncio.gather(*map(hammer, clients)) for o in batch]
    finally:
        for c in clients:
            await c.close()
    assert outcomes.count(Outcome.ADMITTED) == 100
    assert outcomes.count(Outcome.NO_CREDIT) == 400
    state = await live_state.read_account(SHARD, ACCOUNT)
    assert state is not None and state.balance == 0
    assert await live_state.redis.xlen(keys.usage_stream(SHARD)) == 100


async def test_script_reloads_after_script_flush(live_state: LiveState) -> None:
    await provision(live_state, usd(1))
    await live_state.redis.script_flush()
    assert (await live_state.admit(call(1), DAY)).admitted


@pytest.mark.parametrize(
    "script", ["admit", "settle", "void", "credit", "sync_account", "recharge_state"]
)
def test_each_script_documents_keys_argv_and_reply(script: str) -> None:
    head = SCRIPTS[script].source.split("\n\n")[0]
    assert "KEYS" in head and "ARGV" in head and "Reply" in head


def test_model_helpers_are_consistent() -> None:
    state = replace(AccountState(balance=5), daily_hard_limit=3)
    assert money.available(state) == 3
