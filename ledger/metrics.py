"""Every metric of the ledger worker, in one registry per worker (no globals).

Handlers and loops only ``.inc()``, ``.set()`` and ``.observe()``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_SECONDS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_EVENTS = (1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000)


class LedgerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_applied = Counter(
            "meter_ledger_events_applied",
            "Usage events committed to Postgres",
            ["shard"],
            registry=r,
        )
        self.batches = Counter("meter_ledger_batches", "Batches committed", ["shard"], registry=r)
        self.batch_seconds = Histogram(
            "meter_ledger_batch_seconds",
            "Time to write and commit one batch",
            buckets=BATCH_SECONDS,
            registry=r,
        )
        self.batch_events = Histogram(
            "meter_ledger_batch_events",
            "Events per committed batch",
            buckets=BATCH_EVENTS,
            registry=r,
        )
        self.lag_seconds = Gauge(
            "meter_ledger_lag_seconds",
            "Age of the oldest usage event not yet committed (0 when caught up)",
            ["shard"],
            registry=r,
        )
        self.owned_shards = Gauge(
            "meter_ledger_owned_shards", "Shards this worker applies", registry=r
        )
        self.live_workers = Gauge(
            "meter_ledger_live_workers", "Ledger workers holding a presence lock", registry=r
        )
        self.signals = Counter(
            "meter_ledger_signals", "Pending signal rows recorded", ["kind"], registry=r
        )
        self.orphan_events = Counter(
            "meter_ledger_orphan_events",
            "Events of accounts Postgres does not know (kept raw only)",
            registry=r,
        )
        self.malformed_events = Counter(
            "meter_ledger_malformed_events",
            "Stream entries that are not usage events (skipped)",
            registry=r,
        )
        self.trimmed = Counter(
            "meter_ledger_trimmed_entries", "Stream entries trimmed after commit", registry=r
        )
        self.errors = Counter("meter_ledger_errors", "Errors by stage", ["stage"], registry=r)
        self.drift_micros = Gauge(
            "meter_reconcile_drift_micros",
            "Sum of Redis balance minus (Postgres balance - unapplied events), per shard",
            ["shard"],
            registry=r,
        )
        self.drift_accounts = Gauge(
            "meter_reconcile_drift_accounts",
            "Accounts whose Redis balance drifted, per shard",
            ["shard"],
            registry=r,
        )
        self.reconcile_runs = Counter(
            "meter_reconcile_runs", "Reconcile passes by result", ["result"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
