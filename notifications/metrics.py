"""The metrics of telling people, in the ledger worker's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SEND_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)


class NotificationMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "meter_notification_events_dispatched",
            "Outbox events fanned out into deliveries",
            registry=r,
        )
        self.attempts = Counter(
            "meter_notification_attempts",
            "Delivery attempts, by channel (webhook, email) and outcome (succeeded, retry,"
            " failed, canceled)",
            ["channel", "outcome"],
            registry=r,
        )
        self.send_seconds = Histogram(
            "meter_notification_send_seconds",
            "Time of one send (a webhook POST or an SMTP transaction), by channel",
            ["channel"],
            buckets=SEND_SECONDS,
            registry=r,
        )
        self.pending = Gauge(
            "meter_notification_deliveries_pending",
            "Deliveries waiting to be sent or retried",
            registry=r,
        )
        self.endpoints_disabled = Counter(
            "meter_webhook_endpoints_disabled",
            "Webhook endpoints disabled by their failures (410, or 5 days failing)",
            registry=r,
        )
