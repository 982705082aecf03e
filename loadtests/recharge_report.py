"""`recharge_bench`'s figures from its raw measurements, and its Markdown table (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from . import stats

COMMAND = "make recharge-bench  # .venv/bin/python -m loadtests.recharge_bench"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def histogram_bound(buckets: dict[str, float], q: float) -> float | None:
    """The upper bound of the first cumulative bucket holding ``q`` of the observations
    (what a Prometheus histogram can say of a quantile: at most this)."""
    bounds = sorted((float(le), n) for le, n in buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    for le, n in bounds:
        if n >= q * bounds[-1][1]:
            return le
    return None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def cpu_pairs(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Gateway CPU per admitted call, on and off, pair by pair and overall."""
    by_pair: dict[int, dict[bool, float]] = {}
    for p in phases:
        if p.get("kept", True):
            us = p["cpu_us_per_call"]["gateway"]
            by_pair.setdefault(p["pair"], {})[p["auto_recharge"]] = us
    pairs = [
        {
            "pair": n + 1,  # the run's number: a pair run again (noisy) leaves a gap
            "on_us": v[True],
            "off_us": v[False],
            "ratio": stats.ratio(v[True], v[False]),
        }
        for n, v in sorted(by_pair.items())
        if True in v and False in v
    ]
    on = stats.median(p["on_us"] for p in pairs)
    off = stats.median(p["off_us"] for p in pairs)
    return {
        "pairs": pairs,
        "on_median_us": on,
        "off_median_us": off,
        "ratio_of_medians": stats.ratio(on, off),
        "median_of_pair_ratios": stats.median(p["ratio"] for p in pairs),
    }


def problems(
    phases: list[dict[str, Any]],
    latencies: list[float],
    hist: dict[str, Any],
    checks: dict[str, Any],
) -> list[str]:
    out = []
    if not checks["ok"]:
        out.append(f"sanity checks failed: {checks}")
    if hist["count"] != checks["recharge_statuses"].get("succeeded", 0):
        out.append(f"histogram counted {hist['count']} credits, Postgres {checks}")
    if not latencies:
        out.append("no recharge of a crossing succeeded")
    for p in phases:
        name = f"pair {p['pair'] + 1} {'on' if p['auto_recharge'] else 'off'}"
        if p["non_2xx"] or p["socket_errors"]:
            out.append(f"{name}: {p['non_2xx']} refused calls, {p['socket_errors']} socket errors")
        # Off, a fall below the (kept) threshold is still told (balance.low) but must
        # never charge.
        if not p["auto_recharge"] and p["recharges"]:
            out.append(f"{name}: {p['crossings']} crossings, {p['recharges']} recharges")
        if p["auto_recharge"] and not p["succeeded"]:
            out.append(f"{name}: no recharge")
    return out


def result(
    *,
    args: dict[str, Any],
    setup: dict[str, Any],
    phases: list[dict[str, Any]],
    latencies: list[float],
    hist: dict[str, Any],
    checks: dict[str, Any],
    where: dict[str, Any],
) -> dict[str, Any]:
    count = hist["count"]
    return {
        "crossing_to_credit": {
            "source": "Postgres: payments.settled_at - payments.crossed_at, every succeeded"
            " recharge of a crossing (reason 'crossing') of the pairs kept",
            "count": len(latencies),
            "p50_s": _round(percentile(latencies, 0.50)),
            "p99_s": _round(percentile(latencies, 0.99)),
            "max_s": _round(max(latencies, default=None)),
            "min_s": _round(min(latencies, default=None)),
        },
        "histogram": {
            "source": "ledger worker /metrics: meter_recharge_crossing_to_credit_seconds",
            "count": count,
            "mean_s": _round(hist["sum"] / count) if count else None,
            "p50_at_most_s": histogram_bound(hist["buckets"], 0.50),
            "p99_at_most_s": histogram_bound(hist["buckets"], 0.99),
            "buckets": hist["buckets"],
        },
        "gateway_cpu": cpu_pairs(phases),
        "checks": checks,
        "noise": {
            "threshold_cores": args["noise_threshold"],
            "max_foreign_cores": max((p["foreign_cores"] for p in phases), default=None),
            "noisy_phases": sum(p["foreign_cores"] > args["noise_threshold"] for p in phases),
            "pairs_run_again": sum(not p["kept"] for p in phases) // 2,
        },
        "problems": problems(phases, latencies, hist, checks),
        "setup": setup,
        "args": args,
        "phases": phases,
        "latencies_s": [round(v, 4) for v in latencies],
        **where,
    }


def _ms(seconds: float | None) -> str:
    return stats.shown(None if seconds is None else seconds * 1000, 0)


def markdown(r: dict[str, Any]) -> str:
    c, h, cpu, s, a = (
        r["crossing_to_credit"],
        r["histogram"],
        r["gateway_cpu"],
        r["setup"],
        r["args"],
    )
    m, checks, noise = r["machine"], r["checks"], r["noise"]
    busy = noise["max_foreign_cores"]
    lines = [
        f"# Auto-recharge under gateway traffic ({r['date']}, {r['git']['commit'][:7]}"
        f"{', dirty' if r['git']['dirty'] else ''})",
        "",
        f"`{COMMAND}`",
        "",
        f"{m['cores']} cores ({m['cpu']}); one gateway worker, one ledger worker, Redis,"
        " Postgres, the admin API, the Stripe test double, the echo upstream and wrk share"
        f" them. Other programs' CPU during a phase: at most {stats.shown(busy, 2)} cores"
        f" ({noise['noisy_phases']} phases above {noise['threshold_cores']}; a pair with"
        f" one is run again, {noise['pairs_run_again']} were, and left out of the figures)."
        f" {s['accounts']} accounts, wrk -c{a['connections']} `GET /v1/bench`"
        f" ({s['price_micros']} micros a call), keys uniform; {a['pairs']} pairs of"
        f" {a['seconds']:g} s phases, on then off. On: the threshold {s['threshold_lead_micros']}"
        f" micros below each balance, recharges of {s['recharge_amount_micros']} micros"
        f" (METER_CREDIT_PURCHASE_MIN lowered to {s['credit_purchase_min_micros']}), about"
        f" one crossing per account every {a['period']:g} s; off: auto-recharge disabled and a"
        " grant that covers the phase. METER_LEDGER_MAX_WAIT"
        f" {s['ledger_max_wait_s']:g} s, sweep every {s['payments_sweep_interval_s']:g} s"
        " (defaults).",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| crossing to credit, p50 (Postgres rows) | {_ms(c['p50_s'])} ms |",
        f"| crossing to credit, p99 | {_ms(c['p99_s'])} ms |",
        f"| crossing to credit, max | {_ms(c['max_s'])} ms |",
        f"| recharges measured | {c['count']} |",
        f"| histogram (the whole run): count, mean | {h['count']}, {_ms(h['mean_s'])} ms |",
        f"| histogram (the whole run): p50, p99 at most | {_ms(h['p50_at_most_s'])} ms,"
        f" {_ms(h['p99_at_most_s'])} ms |",
        f"| gateway CPU per admitted call, on (median) | {stats.shown(cpu['on_median_us'], 1)}"
        " us |",
        f"| gateway CPU per admitted call, off (median) | {stats.shown(cpu['off_median_us'], 1)}"
        " us |",
        f"| on / off, ratio of medians | {stats.shown(cpu['ratio_of_medians'], 3)} |",
        f"| on / off, median of the pairs' ratios | {stats.shown(cpu['median_of_pair_ratios'], 3)}"
        " |",
        "",
        "| pair | on us/call | off us/call | on / off |",
        "|---:|---:|---:|---:|",
        *(
            f"| {p['pair']} | {stats.shown(p['on_us'], 1)} | {stats.shown(p['off_us'], 1)}"
            f" | {stats.shown(p['ratio'], 3)} |"
            for p in cpu["pairs"]
        ),
        "",
        "| phase | calls/s | refused | crossings | s between an account's | recharges"
        " | gateway us/call | ledger us/call | double us/call | cores elsewhere |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {p['pair'] + 1} {'on' if p['auto_recharge'] else 'off'}"
            f"{'' if p['kept'] else ' (run again)'}"
            f" | {stats.shown(p['ok_rps'])} | {p['non_2xx']} | {p['crossings']}"
            f" | {stats.shown(p['period_s'], 1)} | {p['succeeded']}"
            f" | {stats.shown(p['cpu_us_per_call']['gateway'], 1)}"
            f" | {stats.shown(p['cpu_us_per_call']['ledger'], 1)}"
            f" | {stats.shown(p['cpu_us_per_call']['stripe_double'], 1)}"
            f" | {stats.shown(p['foreign_cores'], 2)} |"
            for p in r["phases"]
        ),
        "",
        "Crossing to credit: from the admission of the call that took the balance below"
        " the threshold (`payments.crossed_at`, the milliseconds of its usage stream id) to"
        " the recharge's settlement (`payments.settled_at`, Postgres `now()` of the"
        " transaction that writes the credit; the credit goes into Redis right after its"
        " commit), one value per recharge, exact. The histogram ends after the credit"
        " reached Redis, and its quantiles are only bucket bounds. Gateway CPU: user +"
        " system time of the gateway's process tree (`/proc`) over the phase, divided by the"
        " calls wrk saw admitted.",
        "",
        f"Checks: recharges by status {checks['recharge_statuses']};"
        f" {checks['recharge_ledger_entries']} ledger entries of kind recharge,"
        f" {checks['succeeded_without_exactly_one_entry']} succeeded recharges without exactly"
        f" one; the double made {checks['double_charges']} charges."
        + (" All hold." if checks["ok"] else " FAILED."),
    ]
    if r["problems"]:
        lines += ["", "Problems:", *(f"- {p}" for p in r["problems"])]
    return "\n".join(lines) + "\n"
