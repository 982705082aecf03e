"""One measured wrk run, and the exactness check of a gateway's lifetime.

A run samples, before and after wrk: CPU time of every process under test
(its whole process tree), Redis's command counters, and the gateway's RSS.
Costs are divided by the calls wrk completed (for the gateway: the admitted
ones, i.e. the 2xx).

Exactness (``Ledger``): from a gateway's start to its stop, the money that left
the accounts must equal the usage events written times the route's price, and
those events must match what wrk saw admitted (wrk does not count calls still
in flight when it stops, at most one per connection, so the match is a
bracket). Then a probe sends exactly K calls one after another and checks that
exactly K events and K x price were added, to the micro.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis as redis_sync

from . import procstat, redis_side, stats, wrk
from .keyspace import BenchAccount


@dataclass
class Probe:
    """Processes whose CPU is attributed per call, by role (proxy, upstream, redis)."""

    roles: Mapping[str, int]
    rss_root: int | None = None  # the process tree whose RSS is tracked (the proxy)


@contextlib.contextmanager
def pinned(probe: Probe, cpu: int | None) -> Iterator[None]:
    """Every process of the probe on ``cpu`` alone for the block, then back on all CPUs.

    For the latency one hop adds at one connection: on a VM, a wake-up across
    cores costs tens of microseconds with a tail of milliseconds (measured: the
    echo upstream alone, p99 0.5-1.7 ms across cores, 0.08 ms on one), which
    would swamp the hop's own work. With one request in flight nothing runs in
    parallel, so one core loses nothing but that noise.
    """
    if cpu is None:
        yield
        return
    everywhere = os.sched_getaffinity(0)
    for pid in probe.roles.values():
        procstat.pin(pid, {cpu})
    try:
        yield
    finally:
        for pid in probe.roles.values():
            procstat.pin(pid, everywhere)


def run_once(
    url: str,
    connections: int,
    duration_s: float,
    load: wrk.Load,
    probe: Probe,
    redis_client: redis_sync.Redis | None,
    one_core: int | None = None,
) -> dict[str, Any]:
    """With ``one_core``, wrk and every process of the probe run on that CPU alone (see
    ``pinned``)."""
    cpu_before = {role: procstat.cpu_seconds(pid) for role, pid in probe.roles.items()}
    counts_before = redis_side.command_counts(redis_client) if redis_client else None
    busy_before, clock_before = procstat.system_busy_seconds(), time.monotonic()
    with pinned(probe, one_core):
        result = wrk.run(url, connections, duration_s, load, cpu=one_core)
    busy_after, clock_after = procstat.system_busy_seconds(), time.monotonic()
    cpu_after = {role: procstat.cpu_seconds(pid) for role, pid in probe.roles.items()}
    counts = (
        redis_side.counts_delta(counts_before, redis_side.command_counts(redis_client))
        if redis_client and counts_before
        else None
    )
    cpu = {role: cpu_after[role] - cpu_before[role] for role in probe.roles}
    # CPU the machine spent on anything but wrk and the processes under test: other
    # programs (a test suite, a build) or kernel work not charged to a process.
    foreign = (busy_after - busy_before) - sum(cpu.values()) - result.cpu_s
    calls = result.ok
    sample: dict[str, Any] = {
        "connections": connections,
        "rps": result.rps,
        "ok_rps": calls / result.duration_s if result.duration_s else None,
        "requests": result.requests,
        "ok": calls,
        "non_2xx": result.non_2xx,
        "socket_errors": result.errors,
        "p50_ms": result.p50_ms,
        "p75_ms": result.percentiles_ms.get(75.0),
        "p90_ms": result.percentiles_ms.get(90.0),
        "p99_ms": result.p99_ms,
        "max_ms": result.latency_max_ms,
        "cpu_us_per_call": {
            **{role: stats.per_call_us(s, calls) for role, s in cpu.items()},
            "wrk": stats.per_call_us(result.cpu_s, result.requests),
        },
        "cpu_busy": {role: s / result.duration_s for role, s in cpu.items()}
        if result.duration_s
        else {},
        "foreign_cores": max(0.0, foreign / (clock_after - clock_before)),
    }
    if counts is not None:
        sample["redis"] = {
            "scripts_per_admission": stats.per_call(counts.scripts, calls),
            "calls_per_admission": stats.per_call(counts.external, calls),
            "round_trips_per_admission": stats.per_call(counts.reads, calls),
            "executed_per_admission": stats.per_call(counts.executed, calls),
        }
    if probe.rss_root is not None:
        sample["rss_kb"] = procstat.rss_kb(probe.rss_root)
    return sample


SCALARS = (
    "rps",
    "ok_rps",
    "p50_ms",
    "p75_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "socket_errors",
    "non_2xx",
    "foreign_cores",
)


def summary(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over repeated runs of one configuration and concurrency."""
    out: dict[str, Any] = stats.summarize(samples, SCALARS)
    out["runs"] = len(samples)
    out["cpu_us_per_call"] = stats.summarize_nested(samples, "cpu_us_per_call")
    if any("redis" in s for s in samples):
        out["redis"] = stats.summarize_nested(samples, "redis")
    return out


def error_totals(samples: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Responses and failures summed over runs: a proxy answering errors is not measured."""
    return {
        "requests": sum(int(s["requests"]) for s in samples),
        "non_2xx": sum(int(s["non_2xx"]) for s in samples),
        "socket": sum(int(s["socket_errors"]) for s in samples),
    }


# -- exactness -----------------------------------------------------------------------


def send_sequential(url: str, path: str, key: str, count: int) -> tuple[int, str]:
    """``count`` calls one after another on one keep-alive connection.

    Returns the number of 2xx answers and the first other answer (status and body).
    """
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    ok, first_failure = 0, ""
    try:
        for _ in range(count):
            conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
            resp = conn.getresponse()
            body = resp.read()
            if 200 <= resp.status < 300:
                ok += 1
            elif not first_failure:
                first_failure = f"{resp.status} {body[:300].decode(errors='replace')}"
    finally:
        conn.close()
    return ok, first_failure


@dataclass
class Ledger:
    """Money and usage events over one gateway process's life (see the module docstring)."""

    redis_url: str
    shards: int
    accounts: Sequence[BenchAccount]
    balance_at_start: int = 0
    events_at_start: int = 0
    wrk_ok: int = 0
    in_flight_bound: int = 0  # sum of connections over wrk runs
    notes: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.balance_at_start = redis_side.total_balance(self.redis_url, self.accounts)
        self.events_at_start = redis_side.stream_length(self.redis_url, self.shards)

    def saw(self, result_ok: int, connections: int, socket_errors: int = 0) -> None:
        self.wrk_ok += result_ok
        # each connection may leave one call in flight when wrk stops, and one more each
        # time wrk gave up on a connection (read error, timeout) and opened another
        self.in_flight_bound += connections + socket_errors

    def settle(self, quiet_for: float = 1.0, timeout: float = 60.0) -> int:
        """Wait until no usage event has been written for ``quiet_for`` seconds.

        Calls still queued in the proxy when wrk stopped (at 1,024 connections, a
        slow proxy has seconds of them) are admitted after it; the probe must not
        see them.
        """
        deadline = time.monotonic() + timeout
        last = redis_side.stream_length(self.redis_url, self.shards)
        still_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = redis_side.stream_length(self.redis_url, self.shards)
            if now != last:
                last, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= quiet_for:
                break
        return last

    def verify(self, url: str, path: str, probe_calls: int = 200) -> dict[str, Any]:
        first = self.accounts[0]
        events_before_probe = self.settle()
        one_before = redis_side.total_balance(self.redis_url, [first])
        probe_ok, probe_failure = send_sequential(url, path, first.key, probe_calls)
        one_after = redis_side.total_balance(self.redis_url, [first])
        events_end = redis_side.stream_length(self.redis_url, self.shards)
        balance_end = redis_side.total_balance(self.redis_url, self.accounts)
        price = redis_side.last_event_price(self.redis_url, first.shard)

        debited = self.balance_at_start - balance_end
        events = events_end - self.events_at_start
        load_events = events_before_probe - self.events_at_start
        checks = {
            "debited_equals_events_x_price": price is not None and debited == events * price,
            "probe_all_admitted": probe_ok == probe_calls,
            "probe_events_exact": events_end - events_before_probe == probe_ok,
            "probe_debit_exact": price is not None and one_before - one_after == probe_ok * price,
            "wrk_admitted_within_events": self.wrk_ok
            <= load_events
            <= self.wrk_ok + self.in_flight_bound,
        }
        return {
            "exact": all(checks.values()),
            "checks": checks,
            "price_micros": price,
            "debited_micros": debited,
            "usage_events": events,
            "events_during_load": load_events,
            "wrk_admitted": self.wrk_ok,
            "in_flight_bound": self.in_flight_bound,
            "probe_calls": probe_calls,
            "probe_admitted": probe_ok,
            "probe_first_refusal": probe_failure,
            "accounts": len(self.accounts),
            "note": "no ledger worker runs in the benchmark: the usage streams are never trimmed",
        }
