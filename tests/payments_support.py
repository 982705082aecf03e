"""Shared helpers of the payments tests: a paying service against the Stripe double.

``paying`` wires the real service layer (``admin.services``) to the test's Postgres
and Redis and to the Stripe double (tests/stripe_fixtures.py), with the webhook
secret the tests sign with. Cards are made at the double with the real ``stripe``
library, as Stripe.js would, then attached to the account's customer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
import stripe

from admin import models
from admin.access import SYSTEM
from admin.audit import Actor
from admin.services import Services, open_services
from meter.live_state import LiveState
from meter.money import usd
from meter.settings import Secret, Settings
from payments.recharges import Recharges
from payments.service import Context, Payments

WEBHOOK_SECRET = "whsec_test_payments_0123456789"
ACTOR = Actor(SYSTEM, "test-request")
VISA = "4242424242424242"
DECLINED_WHEN_CHARGED = "4000000000000341"
THREE_D_SECURE = "4000002500003155"


def pay_settings(redis_url: str, database_url: str, double: Any, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "database_url": database_url,
        "shards": 4,
        "stripe_secret_key": Secret(double.secret_key),
        "stripe_publishable_key": double.publishable_key,
        "stripe_webhook_secret": Secret(WEBHOOK_SECRET),
        "stripe_api_base": double.api_base,
        "stripe_js_url": double.url + "/js.stripe.com/v3/",
        "stripe_timeout": 10.0,
        "payment_lease": 30.0,
        "ledger_batch": 200,
        "ledger_max_wait": 0.02,
        "ledger_lock_retry": 0.1,
        "reconcile_interval": 0.0,
        "sync_interval": 0.2,
        "payments_sweep_interval": 0.2,
        # The notifications tests' receivers are on loopback.
        "webhook_allow_private": True,
    }
    values.update(overrides)
    return Settings.from_env({}, **values)


async def authenticate(
    double: Any, intent_id: str, client_secret: str, success: bool = True
) -> None:
    """What the buyer's click in the double's 3-D Secure dialog does."""
    async with aiohttp.ClientSession() as http:
        r = await http.post(
            f"{double.api_base}/v1/payment_intents/{intent_id}/_authenticate",
            data={
                "client_secret": client_secret,
                "success": "true" if success else "false",
                "key": double.publishable_key,
            },
        )
        assert r.status == 200, await r.text()


class Clock:
    """Real time plus an offset a test moves forward (leases, back-off)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Paying:
    settings: Settings
    pool: asyncpg.Pool
    live: LiveState
    services: Services
    clock: Clock
    double: Any

    @property
    def ctx(self) -> Context:
        return self.services.payments.ctx

    @property
    def payments(self) -> Payments:
        return self.services.payments

    @property
    def recharges(self) -> Recharges:
        return self.services.recharges

    def stripe_client(self) -> stripe.StripeClient:
        return stripe.StripeClient(
            self.double.secret_key, base_addresses={"api": self.double.api_base}
        )

    async def account(self, name: str = "Acme", credit: int = 0) -> str:
        written = await self.services.provisioning.create_account(
            ACTOR, models.NewAccount(name=name, billing_email="billing@acme.test")
        )
        account_id = written.value.id
        if credit:
            await self.services.provisioning.add_credit(
                ACTOR,
                account_id,
                models.NewCredit(
                    amount=credit,
                    description="Opening credit",
                    idempotency_key="open",
                    kind="grant",
                ),
            )
        return account_id

    async def card(self, account_id: str, number: str = VISA) -> str:
        pm = self.double.attach_card(await self.payments.customer(account_id), number)
        await self.payments.refresh_methods(account_id)
        return pm

    async def authenticate(self, intent_id: str, client_secret: str, success: bool = True) -> None:
        await authenticate(self.double, intent_id, client_secret, success)

    async def live_balance(self, account_id: str) -> int:
        account = await self.services.provisioning.account(account_id)
        state = await self.live.read_account(account.shard, account.id)
        assert state is not None
        return state.balance

    async def book_balance(self, account_id: str) -> int:
        return int(
            await self.pool.fetchval("select balance from accounts where id = $1", account_id)
        )

    async def credits(self, account_id: str, kind: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "select * from ledger_entries where account_id = $1 and kind = $2 order by id",
            account_id,
            kind,
        )

    async def events(self, account_id: str, type_: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "select * from outbox_events where account_id = $1 and type = $2", account_id, type_
        )


@pytest.fixture
async def paying(redis_url: str, database_url: str, stripe: Any) -> AsyncIterator[Paying]:
    clock = Clock()
    settings = pay_settings(redis_url, database_url, stripe)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
    live = LiveState.from_url(redis_url, timeout=2.0)
    services = open_services(pool, live, settings, clock)
    try:
        yield Paying(settings, pool, live, services, clock, stripe)
    finally:
        await services.payments.close()
        await live.close()
        await pool.close()


USD = usd(1)
