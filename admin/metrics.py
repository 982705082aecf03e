"""Every metric of the admin API, declared once per app in its own registry.

A registry per app (not the process-global default) lets tests build many
apps in one process; ``/metrics`` exposes exactly this registry.
Handlers and middlewares only ``.inc()`` / ``.observe()``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from admin.sync import SyncReport

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class AdminMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "meter_admin_requests",
            "Admin API requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "meter_admin_request_seconds",
            "Admin API request latency by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.live_deferred = Counter(
            "meter_admin_live_writes_deferred",
            "Writes committed to Postgres whose Redis step failed and was left to the sync loop.",
            ["kind"],
            registry=self.registry,
        )
        self.sync_repairs = Counter(
            "meter_admin_sync_repairs",
            "Rows the sync loop re-applied to Redis (left unapplied by a crash or an outage).",
            ["kind"],
            registry=self.registry,
        )
        self.sync_failures = Counter(
            "meter_admin_sync_failures",
            "Sync passes that stopped on an error (Redis or Postgres unreachable).",
            registry=self.registry,
        )

    def record_sync(self, report: SyncReport) -> None:
        for kind, count in report.counts().items():
            if count:
                self.sync_repairs.labels(kind).inc(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
