"""A plan's own prices: fitted to the deployment's table (pure), admitted at them by
admit.lua in the same atomic step (a status naming the table), voided at them, carried
to Redis by the account's live config and by the repair, and charged through the real
gateway, where a change of plan changes the price of the next call at once."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import redis as redis_sync
from ledger_fixtures import running_worker
from payments_support import ACTOR, USD, Paying
from test_admission_batcher import DAY, config, pipe
from test_payments_faults import upstream_url

from admin import models
from admin.errors import InvalidInput
from billing.subscriptions import NewPlan, SubscriptionChange
from gateway.pricing import BadPrices, load_prices, override_spec, parse_override
from gateway.testing import running_gateway
from ledger import reconcile
from meter import keys
from meter.live_state import Call, KeyCall, KeyRecord, LiveState, admit_arguments
from meter.money import Outcome
from meter.redis_pipe import RedisPipe
from meter.scripts import ADMIT

FIXTURES = (upstream_url, pipe)
TABLE = load_prices(None)  # the built-in table: embeddings $0.0002, chat 10 a unit
CHEAP = {"embeddings": {"price": 50}, "chat": {"units": {"units": 4}, "max_price": 40_000}}

# -- fitted to the deployment's table -------------------------------------------------------


def test_a_plans_prices_change_only_prices() -> None:
    routes = parse_override(TABLE, CHEAP)
    embeddings, chat = routes["embeddings"], routes["chat"]
    base = {r.name: r for r in TABLE.routes}
    assert embeddings.price == 50 and embeddings.pattern == base["embeddings"].pattern
    assert (chat.price, [u.price for u in chat.units]) == (40_000, [4])
    assert [(u.kind, u.source, u.name) for u in chat.units] == [
        (u.kind, u.source, u.name) for u in base["chat"].units
    ]
    assert chat.segments == base["chat"].segments and chat.method == base["chat"].method
    # Stored as fitted: every field, a variable route's reserve included.
    assert override_spec(parse_override(TABLE, {"chat": {"units": {"units": 4}}})) == {
        "chat": {"max_price": base["chat"].price, "units": {"units": 4}}
    }
    assert override_spec(routes) == {"embeddings": {"price": 50}, **{"chat": CHEAP["chat"]}}
    assert parse_override(TABLE, {"default": {"price": 7}})["default"].price == 7


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({}, "at least one route"),
        ({"nope": {"price": 1}}, "no route 'nope'"),
        ({"embeddings": {"max_price": 1}}, "unknown field"),
        ({"embeddings": {}}, "price is missing"),
        ({"chat": {"price": 1}}, "unknown field"),
        ({"chat": {"units": {"tokens": 1}}}, "no kind 'tokens'"),
        ({"chat": {"units": {"units": 0}}}, "above 0"),
        ({"chat": {"max_price": 0}}, "above 0"),
        ({"embeddings": {"price": -1}}, "whole number of micros"),
        ({"embeddings": {"price": True}}, "whole number of micros"),
    ],
)
def test_prices_that_do_not_fit_the_table_are_refused(spec: dict[str, Any], says: str) -> None:
    with pytest.raises(BadPrices, match=says):
        parse_override(TABLE, spec)


# -- admit.lua ------------------------------------------------------------------------------


async def priced_account(state: LiveState, shard: int, account: str, balance: int) -> None:
    await state.put_price_table_on(shard, "plan_cheap", override_spec(parse_override(TABLE, CHEAP)))
    assert await state.sync_account(shard, account, config(price_table="plan_cheap"))
    assert (await state.credit(shard, account, f"seed-{account}", balance))[0] == 1


async def test_the_admission_debits_the_accounts_table_price_in_the_same_step(
    live_state: LiveState,
) -> None:
    await priced_account(live_state, 2, "acct_pt", 100_000)
    assert await live_state.redis.hget(keys.account(2, "acct_pt"), "st") == b"plan_cheap"
    calls: list[Call | KeyCall] = [
        Call(2, "acct_pt", "proj_1", "key_1", "embeddings", 200),  # the table: 50
        Call(2, "acct_pt", "proj_1", "key_1", "models", 0),  # not in the table: as sent
        Call(2, "acct_pt", "proj_1", "key_1", "chat", 100_000),  # the table's reserve
    ]
    admitted = await live_state.admit_many(calls, DAY)
    assert [(a.outcome, a.price_table, a.price) for a in admitted] == [
        (Outcome.ADMITTED, "plan_cheap", 50),
        (Outcome.ADMITTED, None, None),
        (Outcome.ADMITTED, "plan_cheap", 40_000),
    ]
    assert [a.balance for a in admitted] == [99_950, 99_950, 59_950]
    assert all("@" not in a.event_id and a.event_id for a in admitted)
    events = await live_state.redis.xrange(keys.usage_stream(2))
    assert [e[1][b"m"] for e in events] == [b"50", b"0", b"40000"]  # what the ledger books
    # Refused: told the table's price (no credit for a second reserve of $0.04).
    [again] = await live_state.admit_many([calls[2]], DAY)
    assert (again.outcome, again.balance) == (Outcome.ADMITTED, 19_950)
    [refused] = await live_state.admit_many([calls[2]], DAY)
    assert (refused.outcome, refused.price) == (Outcome.NO_CREDIT, 40_000)


async def test_an_account_without_a_table_or_a_table_gone_pays_the_calls_own_price(
    live_state: LiveState,
) -> None:
    assert await live_state.sync_account(3, "acct_plain", config())
    await live_state.credit(3, "acct_plain", "seed", 1_000)
    assert await live_state.sync_account(3, "acct_gone", config(price_table="plan_gone"))
    await live_state.credit(3, "acct_gone", "seed", 1_000)
    calls: list[Call | KeyCall] = [
        Call(3, "acct_plain", "proj_1", "key_1", "embeddings", 200),
        Call(3, "acct_gone", "proj_1", "key_1", "embeddings", 200),
    ]
    admitted = await live_state.admit_many(calls, DAY)
    assert [(a.balance, a.price_table, a.price) for a in admitted] == [
        (800, None, None),
        (800, None, None),
    ]


async def test_a_lost_batch_is_voided_at_the_price_it_debited(
    live_state: LiveState, pipe: RedisPipe
) -> None:
    await priced_account(live_state, 4, "acct_lost", 1_000)
    await live_state.put_api_key("ab" * 32, KeyRecord("key_9", "proj_9", "acct_lost", 4))
    calls: list[Call | KeyCall] = [
        Call(4, "acct_lost", "proj_1", "key_1", "embeddings", 200),
        KeyCall("ab" * 32, "embeddings", 200),  # resolved by its key's hash
        Call(4, "acct_lost", "proj_1", "key_1", "models", 0),
    ]
    record = keys.admit_batch(None, "lost")
    names, args = admit_arguments(calls, DAY, None, record)
    await pipe.evalsha(ADMIT, names, args)  # its reply lost, say
    debited = await live_state.void(record, calls)
    assert [(c.route, c.price, c.key_id) for c, _ in debited] == [
        ("embeddings", 50, "key_1"),
        ("embeddings", 50, "key_9"),
        ("models", 0, "key_1"),
    ]
    assert all("@" not in event_id for _, event_id in debited)


# -- carried by the account's live config, and by the repair ------------------------------


def plan(name: str, prices: dict[str, Any] | None) -> NewPlan:
    return NewPlan(name, "", 0, 0, None, None, prices)


async def test_a_plan_with_prices_is_fitted_stored_and_refused_when_it_does_not_fit(
    paying: Paying,
) -> None:
    subs = paying.services.subscriptions
    made = await subs.create_plan(
        ACTOR, plan("Cheap", {"chat": {"units": {"units": 4}}, "embeddings": {"price": 50}})
    )
    assert made.prices == {
        "chat": {"max_price": 100_000, "units": {"units": 4}},
        "embeddings": {"price": 50},
    }
    assert (await subs.plan(made.id)).prices == made.prices
    with pytest.raises(InvalidInput) as refused:
        await subs.create_plan(ACTOR, plan("Bad", {"chat": {"price": 1}}))
    assert [field for field, _ in refused.value.errors] == ["prices"]
    assert await paying.pool.fetchval("select count(*) from plans where name = 'Bad'") == 0


async def subscribed(paying: Paying, prices: dict[str, Any] | None, name: str) -> str:
    made = await paying.services.subscriptions.create_plan(ACTOR, plan(name, prices))
    return made.id


async def test_the_status_names_the_table_once_subscribed_and_the_repair_restores_both(
    paying: Paying, redis_url: str
) -> None:
    account = await paying.account("Priced", credit=10 * USD)
    cheap = await subscribed(paying, CHEAP, "Cheap")
    await paying.services.subscriptions.put(ACTOR, account, SubscriptionChange(cheap))
    shard = (await paying.services.provisioning.account(account)).shard
    hash_key, table_key = keys.account(shard, account), keys.price_table(shard, cheap)
    assert await paying.live.redis.hget(hash_key, "st") == cheap.encode()
    assert await paying.live.redis.hget(table_key, "embeddings") == b"50"
    with redis_sync.Redis.from_url(redis_url) as client:
        client.flushall()  # Redis lost everything
    report = await reconcile.repair(paying.pool, paying.live.redis)
    assert report.created >= 1
    assert await paying.live.redis.hget(hash_key, "st") == cheap.encode()
    assert await paying.live.redis.hget(table_key, "chat") == b"40000"


# -- through the gateway ----------------------------------------------------------------------


async def test_the_gateway_charges_the_plans_prices_and_a_change_at_once_the_next_call(
    paying: Paying, upstream_url: str
) -> None:
    account = await paying.account("Gateway", credit=10 * USD)
    project = await paying.services.provisioning.create_project(
        ACTOR, account, models.NewProject(name="web")
    )
    key = (await paying.services.provisioning.create_api_key(ACTOR, project.id)).value.secret
    cheap = await subscribed(paying, CHEAP, "Cheap")
    plain = await subscribed(paying, None, "Plain")
    subs = paying.services.subscriptions
    await subs.put(ACTOR, account, SubscriptionChange(cheap))
    settings = paying.settings.replace(upstream_url=upstream_url)
    charged: list[tuple[str, int]] = []

    async def calls(http: aiohttp.ClientSession, base: str) -> None:
        for path, units in (("/v1/embeddings", None), ("/v1/chat/completions", 120)):
            query = "" if units is None else f"?units={units}"
            async with http.post(
                base + path + query, data=b"{}", headers={"Authorization": f"Bearer {key}"}
            ) as r:
                assert r.status == 200
                charged.append((path, int(r.headers["X-Meter-Charged"])))

    async with (
        running_worker(settings),
        running_gateway(settings) as (base, _),
        aiohttp.ClientSession() as http,
    ):
        await calls(http, base)  # the Cheap plan: $0.00005, and 120 units at 4
        await subs.put(ACTOR, account, SubscriptionChange(plain, effective="now"))
        await calls(http, base)  # the deployment's: $0.0002, and 120 units at 10
    assert charged == [
        ("/v1/embeddings", 50),
        ("/v1/chat/completions", 480),
        ("/v1/embeddings", 200),
        ("/v1/chat/completions", 1_200),
    ]
    shard = (await paying.services.provisioning.account(account)).shard
    live = await paying.live.read_account(shard, account)
    assert live is not None and live.balance == 10 * USD - sum(c for _, c in charged)
