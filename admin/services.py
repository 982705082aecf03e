"""The one service layer: what the admin API and the portal both call.

The HTTP layers only translate (requests to models, records to models); every
operation and its audit entry lives behind these objects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from admin import audit
from admin.audit import Actor, AuditEntry
from admin.email_signin import EmailSignin
from admin.people import People
from admin.portal_links import LinkRules, PortalLinks
from admin.portal_sessions import PortalSessions
from admin.profiles import Profiles
from admin.provisioning import Provisioning
from billing.service import Invoices
from billing.subscriptions import Subscriptions
from gateway.pricing import load_prices
from meter.live_state import LiveState
from meter.settings import Settings
from notifications.endpoints import WebhookEndpoints
from notifications.preferences import Preferences
from notifications.spend import SpendManagement
from payments.metrics import PaymentMetrics
from payments.recharges import Recharges
from payments.service import Context, Payments, open_context

__all__ = ["Actor", "Services", "open_services"]


@dataclass(frozen=True, slots=True)
class Services:
    pool: asyncpg.Pool
    provisioning: Provisioning
    people: People
    profiles: Profiles
    portal_links: PortalLinks
    portal_sessions: PortalSessions
    email_signin: EmailSignin
    payments: Payments
    recharges: Recharges
    webhooks: WebhookEndpoints
    spend: SpendManagement
    invoices: Invoices
    subscriptions: Subscriptions
    notifications: Preferences
    clock: Callable[[], float]

    @classmethod
    def open(
        cls,
        pool: asyncpg.Pool,
        live: LiveState,
        *,
        shards: int,
        clock: Callable[[], float] = time.time,
        portal: LinkRules | None = None,
        session_idle: float = 3600.0,
        payments: Context | None = None,
    ) -> Services:
        ctx = payments or open_context(pool, live, Settings.from_env({}), clock=clock)
        paying = Payments(ctx)
        links = PortalLinks(pool, portal or LinkRules())
        return cls(
            pool=pool,
            provisioning=Provisioning(pool, live, shards=shards, clock=clock),
            people=People(pool),
            profiles=Profiles(pool, on_change=paying.push_profile),
            portal_links=links,
            portal_sessions=PortalSessions(pool, idle=session_idle),
            email_signin=EmailSignin(pool, links),
            payments=paying,
            recharges=Recharges(ctx, paying),
            webhooks=WebhookEndpoints(pool, ctx.settings, clock),
            spend=SpendManagement(pool, live, clock),
            invoices=Invoices(
                pool, clock, ctx.settings.billing_anchor_day, ctx.settings.invoice_overdue
            ),
            subscriptions=Subscriptions(
                pool,
                live,
                clock,
                ctx.settings.billing_anchor_day,
                load_prices(ctx.settings.prices_path),
            ),
            notifications=Preferences(pool),
            clock=clock,
        )

    async def audit_log(
        self, account_id: str | None, *, limit: int, before: int
    ) -> tuple[list[AuditEntry], str | None]:
        if account_id is not None:
            await self.provisioning.account(account_id)
        return await audit.entries(self.pool, account_id, limit, before)


def open_services(
    pool: asyncpg.Pool,
    live: LiveState,
    settings: Settings,
    clock: Callable[[], float],
    *,
    payment_metrics: PaymentMetrics | None = None,
) -> Services:
    """The services as a service's settings configure them (admin API and portal alike)."""
    return Services.open(
        pool,
        live,
        shards=settings.shards,
        clock=clock,
        portal=LinkRules(
            public_url=settings.portal_public_url,
            return_urls=settings.portal_return_urls,
            ttl=settings.portal_link_ttl,
            session_max=settings.portal_session_max,
        ),
        session_idle=settings.portal_session_idle,
        payments=open_context(pool, live, settings, metrics=payment_metrics, clock=clock),
    )
