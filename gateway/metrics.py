"""Every metric the gateway exports, declared once; handlers only inc() and observe().

One ``CollectorRegistry`` per app (no module-level globals), served at
``/_meter/metrics``. With several worker processes each worker exports its own
counters; ``/_meter/healthz`` names the worker's pid.

Metric                                        Labels            Meaning
meter_gateway_calls_total                     route, outcome    calls handled; outcome: forwarded,
                                                                upstream_failed, refused
meter_gateway_refusals_total                  reason            refusals by problem slug
meter_gateway_overhead_seconds                                  time the gateway adds before the
                                                                client gets the response head
                                                                (total minus the upstream's wait)
meter_gateway_upstream_seconds                                  upstream time to response head
meter_gateway_redis_seconds                   op                Redis latency: admit, settle, key
meter_gateway_key_cache_total                 result            hit, miss, negative_hit
meter_gateway_refunds_total                   reason            settlements that gave money back:
                                                                variable_cost, upstream_5xx,
                                                                upstream_failure, body_too_large,
                                                                incomplete_body, internal
meter_gateway_refunded_micros_total                             micros given back
meter_gateway_refund_errors_total                               refunds that could not be applied
meter_gateway_charged_micros_total            route             micros charged (after settlement)
meter_gateway_units_header_invalid_total      route             variable-cost answers without a
                                                                valid units header (charged max)
meter_gateway_upstream_aborted_total                            response bodies that broke off
meter_gateway_in_flight                                         calls being handled
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Sub-millisecond resolution where the gateway's own cost lives.
FAST_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
UPSTREAM_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "meter_gateway_calls", "Calls handled", ["route", "outcome"], registry=r
        )
        self.refusals = Counter(
            "meter_gateway_refusals", "Calls refused, by reason", ["reason"], registry=r
        )
        self.overhead = Histogram(
            "meter_gateway_overhead_seconds",
            "Time the gateway adds before the response head (upstream wait excluded)",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "meter_gateway_upstream_seconds",
            "Upstream time to response head",
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        redis = Histogram(
            "meter_gateway_redis_seconds",
            "Redis round trip, by operation",
            ["op"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.redis_admit = redis.labels("admit")
        self.redis_settle = redis.labels("settle")
        self.redis_key = redis.labels("key")
        cache = Counter("meter_gateway_key_cache", "API key cache lookups", ["result"], registry=r)
        self.key_hit = cache.labels("hit")
        self.key_miss = cache.labels("miss")
        self.key_negative_hit = cache.labels("negative_hit")
        self.refunds = Counter(
            "meter_gateway_refunds", "Settlements that gave money back", ["reason"], registry=r
        )
        self.refunded_micros = Counter(
            "meter_gateway_refunded_micros", "Micros given back", registry=r
        )
        self.refund_errors = Counter(
            "meter_gateway_refund_errors", "Refunds that could not be applied", registry=r
        )
        self.charged_micros = Counter(
            "meter_gateway_charged_micros", "Micros charged", ["route"], registry=r
        )
        self.units_invalid = Counter(
            "meter_gateway_units_header_invalid",
            "Variable-cost answers without a valid units header (charged the maximum)",
            ["route"],
            registry=r,
        )
        self.upstream_aborted = Counter(
            "meter_gateway_upstream_aborted", "Response bodies that broke off", registry=r
        )
        self.in_flight = Gauge("meter_gateway_in_flight", "Calls being handled", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
