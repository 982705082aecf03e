"""The metrics of the grant expiry sweep, in the ledger worker's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class GrantMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.expired = Counter(
            "meter_grants_expired", "Grants the sweep ended at their expiry", registry=r
        )
        self.expired_micros = Counter(
            "meter_grants_expired_micros",
            "Micros the sweep removed: what was left of the grants it ended",
            registry=r,
        )
        self.deferred = Counter(
            "meter_grants_expiry_redis_deferred",
            "Expiry entries whose Redis step failed (applied again by a later pass)",
            registry=r,
        )
