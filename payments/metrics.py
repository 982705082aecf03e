"""The metrics of paying, in the registry of the process that pays (ledger worker, admin)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CROSSING_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class PaymentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.payments = Counter(
            "meter_payments",
            "Payments settled, by purpose (purchase, recharge) and outcome",
            ["purpose", "outcome"],
            registry=r,
        )
        self.crossing_to_credit = Histogram(
            "meter_recharge_crossing_to_credit_seconds",
            "From the call that took the balance below the threshold to the recharge's credit",
            buckets=CROSSING_SECONDS,
            registry=r,
        )
        self.recharges_paused = Gauge(
            "meter_recharges_paused", "Accounts whose auto-recharge is paused", registry=r
        )
        self.sweeps = Counter(
            "meter_payments_swept",
            "Unsettled payments the sweep looked at, by what it did",
            ["action"],
            registry=r,
        )
        self.webhooks = Counter(
            "meter_stripe_webhooks",
            "Stripe webhook deliveries, by result (applied, duplicate, ignored, bad_signature)",
            ["result"],
            registry=r,
        )
